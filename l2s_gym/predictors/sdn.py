"""A multi-exit CNN (Shallow-Deep Network style): an internal classifier after every block."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2s_gym.config import positive
from l2s_gym.predictor import LayeredPredictor, State
from l2s_gym.registry import register_predictor
from l2s_gym.tasks.recognition import RecognitionTask


@dataclass
class SDNConfig:
    """Multi-exit CNN: ``num_layers`` conv blocks, each with its own internal classifier."""

    num_layers: int = 8
    """Blocks (= exits). The issue asks for at least 6."""
    channels: int = 32
    pool_size: int = 2
    """Internal classifiers average-pool the block's features to this side."""

    def validate(self, path: str) -> None:
        positive(self, path, "num_layers", "channels", "pool_size")


@register_predictor("sdn", SDNConfig, task="recognition")
class SDN(LayeredPredictor):
    """A CNN of 3x3 conv-BN-ReLU blocks with an internal classifier after each.

    The feature map is halved (max-pooling) after the blocks at one and two thirds of
    the depth while it is at least 4 pixels wide. The state keeps one shape at every
    layer, ``(B, channels, S, S)``: the input and the pooled maps are stored zero-padded
    (top-left corner), so that instances at different exits share a batch
    (``forward_step``). Internal classifier ``t``: average-pool
    to ``pool_size`` square, flatten, one linear layer to the class logits (SDN's
    internal classifiers also reduce to a fixed size before one linear layer).

    Policy features (no labels): the exit's softmax probabilities sorted in decreasing
    order, their entropy and the max probability, a flat ``num_classes + 2`` vector.
    Extras: ``"confidence"``, the max softmax probability (the SDN threshold rule).
    """

    display_name = "SDN"

    def __init__(self, cfg: SDNConfig, task: RecognitionTask) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        c, k, side = cfg.channels, task.num_classes, task.image_size
        pool_after = {max(cfg.num_layers // 3, 1) - 1, max(2 * cfg.num_layers // 3, 1) - 1}
        blocks = []
        in_ch = 1
        self.channels, self.image_size = c, side
        self.sides: list[int] = []
        """Side of the feature map after each block."""
        for t in range(cfg.num_layers):
            layers: list[nn.Module] = [
                nn.Conv2d(in_ch, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
            ]
            if t in pool_after and side >= 4:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            self.sides.append(side)
            blocks.append(nn.Sequential(*layers))
            in_ch = c
        self.blocks = nn.ModuleList(blocks)
        p = min(cfg.pool_size, side)
        self.exits = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(p), nn.Flatten(start_dim=1), nn.Linear(c * p * p, k))
            for _ in range(cfg.num_layers)
        )
        self.feature_shape = (k + 2,)

    def _features(self, t: int, state: Tensor) -> Tensor:
        """The feature map after block ``t`` (``t = -1``: the input), unpadded."""
        if t < 0:
            return state[:, :1]
        side = self.sides[t]
        return state[:, :, :side, :side]

    def initial_state(self, inputs: dict[str, Tensor]) -> State:
        image = inputs["image"]
        return F.pad(image, (0, 0, 0, 0, 0, self.channels - image.shape[1]))

    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        out = self.blocks[t](self._features(t - 1, state))  # type: ignore[arg-type]
        pad = self.image_size - out.shape[-1]
        return F.pad(out, (0, pad, 0, pad)) if pad else out

    def readout(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        pool, flatten, linear = self.exits[t]
        features = self._features(t, state)  # type: ignore[arg-type]
        side, p = features.shape[-1], pool.output_size
        # The same numbers as ``pool`` (the tests check it bit for bit), without its cost:
        # CPU adaptive pooling walks the B x C planes one by one, which made an exit cost
        # a third of a late block at batch 1024; an even split is a plain average pool,
        # and pooling to the map's own side is the identity.
        if side == p:
            pooled = features
        elif side % p == 0:
            pooled = F.avg_pool2d(features, side // p)
        else:
            pooled = pool(features)
        return linear(flatten(pooled))

    def policy_features(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> Tensor:
        log_p = torch.log_softmax(prediction, dim=1)
        p = log_p.exp()
        sorted_p = p.sort(dim=1, descending=True).values
        entropy = -(p * log_p).sum(dim=1, keepdim=True)
        return torch.cat([sorted_p, entropy, sorted_p[:, :1]], dim=1)

    def extras(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> dict[str, Tensor]:
        return {"confidence": torch.softmax(prediction, dim=1).max(dim=1).values}

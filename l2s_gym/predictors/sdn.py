"""A multi-exit CNN (Shallow-Deep Network style): an internal classifier after every block."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2s_gym.config import ConfigError, feature_groups, positive
from l2s_gym.predictor import LayeredPredictor, State
from l2s_gym.registry import register_predictor
from l2s_gym.tasks.recognition import RecognitionTask

FEATURE_SETS = ("exit", "trajectory", "input")
"""The policy feature groups ``SDNConfig.features`` may list (see ``SDN``)."""

TRAJECTORY_FEATURES = 6
INPUT_FEATURES = 3


@dataclass
class SDNConfig:
    """Multi-exit CNN: ``num_layers`` conv blocks, each with its own internal classifier."""

    num_layers: int = 8
    """Blocks (= exits). The issue asks for at least 6."""
    channels: int = 32
    """Channels of the first blocks (after each pooling twice as many with ``widen``)."""
    widen: bool = False
    """Double the channels after each pooling (VGG/ResNet style), so that every block
    costs about the same (a layer count is then a compute count)."""
    pool_size: int = 2
    """Internal classifiers average-pool the block's features to this side."""
    pool_after: list[int] = field(default_factory=list)
    """1-based blocks after which the feature map is halved (max-pooling, while it is at
    least 4 pixels wide). Empty: after the blocks at one and two thirds of the depth."""
    features: list[str] = field(default_factory=lambda: ["exit", "trajectory", "input"])
    """What the stop policy sees (no labels), any of ``exit`` (this exit's sorted softmax,
    entropy, max probability), ``trajectory`` (agreement with the earlier exits and the
    change of confidence since the last one) and ``input`` (three statistics of the
    input image); see ``SDN``."""

    def validate(self, path: str) -> None:
        positive(self, path, "num_layers", "channels", "pool_size")
        if any(not 1 <= b <= self.num_layers for b in self.pool_after):
            raise ConfigError(
                f"{path}.pool_after: blocks must be in 1..num_layers ({self.num_layers}), "
                f"got {self.pool_after}"
            )
        feature_groups(self, path, FEATURE_SETS)


@register_predictor("sdn", SDNConfig, task="recognition")
class SDN(LayeredPredictor):
    """A CNN of 3x3 conv-BN-ReLU blocks with an internal classifier after each.

    The feature map is halved (max-pooling) after the blocks at one and two thirds of
    the depth (or after the blocks listed in ``pool_after``) while it is at least 4 pixels
    wide; with ``widen`` the blocks after a
    pooling have twice the channels. Internal classifier ``t``: average-pool
    to ``pool_size`` square, flatten, one linear layer to the class logits (SDN's
    internal classifiers also reduce to a fixed size before one linear layer).

    The state is a dict of tensors with one shape at every layer, so that instances at
    different exits share a batch (``forward_step``): ``"map"`` ``(B, C, S, S)``, the
    block's feature map (``C`` the widest block's channels; the input, the narrower and
    the pooled maps zero-padded, first channels, top-left corner); ``"logits"`` ``(B, K)``, the exit's class logits, computed with the block
    (``readout`` only reads them); ``"prev"`` ``(B, K)``, the previous exit's logits;
    ``"run"`` ``(B,)``, how many consecutive earlier exits predicted the same class as
    this one (PABEE's patience counter); ``"peak"`` ``(B,)``, the highest max-probability
    of any exit so far.

    Policy features (no labels), a flat vector of the groups in ``features``, in this
    order:

    - ``exit`` (``K + 2``): the exit's softmax probabilities sorted in decreasing order,
      their entropy and the max probability;
    - ``trajectory`` (6): agreement of this exit's class with the previous exit's (0/1;
      0 at the first exit), the patience counter ``run / T``, the change of the max
      probability since the previous exit, the probability this exit gives the previous
      exit's class, the total-variation distance between the two exits' softmax, and the
      peak max-probability so far (the previous exit is the uniform distribution at the
      first exit);
    - ``input`` (3): the input image's mean, its standard deviation and its mean absolute
      Laplacian (a noise / high-frequency level): cheap, label-free signs of how
      corrupted the image is (the paper's ``pi(x, x_t)`` sees the input too).

    Extras: ``"confidence"``, the max softmax probability (the SDN threshold rule).
    """

    display_name = "SDN"

    def __init__(self, cfg: SDNConfig, task: RecognitionTask) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        self.feature_groups = list(cfg.features)
        c, k, side = cfg.channels, task.num_classes, task.image_size
        self.num_classes = k
        if cfg.pool_after:
            pool_after = {b - 1 for b in cfg.pool_after}
        else:
            pool_after = {max(cfg.num_layers // 3, 1) - 1, max(2 * cfg.num_layers // 3, 1) - 1}
        blocks = []
        in_ch, out_ch = 1, c
        self.image_size = side
        self.sides: list[int] = []
        """Side of the feature map after each block."""
        self.widths: list[int] = []
        """Channels of the feature map after each block."""
        for t in range(cfg.num_layers):
            layers: list[nn.Module] = [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(),
            ]
            in_ch = out_ch
            if t in pool_after and side >= 4:
                layers.append(nn.MaxPool2d(2))
                side //= 2
                if cfg.widen:
                    out_ch *= 2
            self.sides.append(side)
            self.widths.append(in_ch)
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.channels = max(self.widths)
        p = min(cfg.pool_size, side)
        self.exits = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(p),
                nn.Flatten(start_dim=1),
                nn.Linear(self.widths[t] * p * p, k),
            )
            for t in range(cfg.num_layers)
        )
        size = {"exit": k + 2, "trajectory": TRAJECTORY_FEATURES, "input": INPUT_FEATURES}
        self.feature_shape = (sum(size[g] for g in self.feature_groups),)
        laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("laplacian", laplacian.view(1, 1, 3, 3), persistent=False)

    def _features(self, t: int, fmap: Tensor) -> Tensor:
        """The feature map after block ``t`` (``t = -1``: the input), unpadded."""
        if t < 0:
            return fmap[:, :1]
        side = self.sides[t]
        return fmap[:, : self.widths[t], :side, :side]

    def _exit(self, t: int, features: Tensor) -> Tensor:
        pool, flatten, linear = self.exits[t]
        side, p = features.shape[-1], pool.output_size
        # The same numbers as ``pool`` without its cost: CPU adaptive pooling walks the
        # B x C planes one by one; an even split is a plain average pool, and pooling to
        # the map's own side is the identity.
        if side == p:
            pooled = features
        elif side % p == 0:
            pooled = F.avg_pool2d(features, side // p)
        else:
            pooled = pool(features)
        return linear(flatten(pooled))

    def initial_state(self, inputs: dict[str, Tensor]) -> State:
        image = inputs["image"]
        b = image.shape[0]
        logits = image.new_zeros((b, self.num_classes))
        return {
            "map": F.pad(image, (0, 0, 0, 0, 0, self.channels - image.shape[1])),
            "logits": logits,
            "prev": logits,
            "run": image.new_zeros((b,)),
            "peak": image.new_zeros((b,)),
        }

    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        assert isinstance(state, dict)
        out = self.blocks[t](self._features(t - 1, state["map"]))
        logits = self._exit(t, out)
        pad = self.image_size - out.shape[-1]
        extra = self.channels - out.shape[1]
        with torch.no_grad():
            same = logits.argmax(dim=1) == state["logits"].argmax(dim=1)
            if t == 0:
                same = torch.zeros_like(same)
            run = torch.where(same, state["run"] + 1, torch.zeros_like(state["run"]))
            peak = torch.maximum(state["peak"], torch.softmax(logits, dim=1).amax(dim=1))
        return {
            "map": F.pad(out, (0, pad, 0, pad, 0, extra)) if pad or extra else out,
            "logits": logits,
            "prev": state["logits"].detach(),
            "run": run,
            "peak": peak,
        }

    def readout(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        assert isinstance(state, dict)
        return state["logits"]

    def predict_full_depth(self, inputs: dict[str, Tensor]) -> Tensor:
        # The blocks and the last exit only: ``layer`` also runs every block's exit and
        # pads each map to one shape (for batches of instances at different layers).
        out = inputs["image"][:, :1]
        for block in self.blocks:
            out = block(out)
        return self._exit(self.num_layers - 1, out)

    def _input_stats(self, image: Tensor) -> Tensor:
        flat = image.flatten(1)
        lap = F.conv2d(image[:, :1], self.laplacian.to(image.dtype), padding=1)
        return torch.stack(
            [flat.mean(dim=1), flat.std(dim=1), lap.abs().flatten(1).mean(dim=1)], dim=1
        )

    def policy_features(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> Tensor:
        assert isinstance(state, dict)
        log_p = torch.log_softmax(prediction, dim=1)
        p = log_p.exp()
        sorted_p = p.sort(dim=1, descending=True).values
        parts = []
        if "exit" in self.feature_groups:
            entropy = -(p * log_p).sum(dim=1, keepdim=True)
            parts += [sorted_p, entropy, sorted_p[:, :1]]
        if "trajectory" in self.feature_groups:
            prev = torch.softmax(state["prev"], dim=1)  # uniform at the first exit
            prev_class = state["prev"].argmax(dim=1, keepdim=True)
            agree = (p.argmax(dim=1, keepdim=True) == prev_class).to(p.dtype)
            if t == 0:
                agree = torch.zeros_like(agree)
            parts += [
                agree,
                state["run"].unsqueeze(1).to(p.dtype) / self.num_layers,
                sorted_p[:, :1] - prev.amax(dim=1, keepdim=True),
                p.gather(1, prev_class),
                0.5 * (p - prev).abs().sum(dim=1, keepdim=True),
                state["peak"].unsqueeze(1).to(p.dtype),
            ]
        if "input" in self.feature_groups:
            parts.append(self._input_stats(inputs["image"]).to(p.dtype))
        return torch.cat(parts, dim=1)

    def extras(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> dict[str, Tensor]:
        return {"confidence": torch.softmax(prediction, dim=1).max(dim=1).values}

"""DnCNN with a read-out after every layer (the deeply-supervised DnCNN of DnCNN-stop)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2s_gym.config import ConfigError, positive
from l2s_gym.predictor import LayeredPredictor, State
from l2s_gym.registry import register_predictor
from l2s_gym.tasks.denoising import DenoisingTask


class ImageEncoder(nn.Module):
    """The stop policy's encoder for image features ``(N, C, H, W) -> (N, channels + C)``.

    A small CNN (three 3x3 convolutions, two with stride 2, then global average pooling)
    next to the log standard deviation of each input channel. For denoising features
    the standard deviation of the difference channel is a direct estimate of the noise
    level, which is what most decides how many layers an image needs.
    """

    def __init__(self, in_channels: int, channels: int = 16) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(start_dim=1),
        )

    def forward(self, images: Tensor) -> Tensor:
        spread = torch.log(images.flatten(2).std(dim=2) + 1e-3)
        return torch.cat([self.cnn(images), spread], dim=1)


@dataclass
class DnCNNConfig:
    """DnCNN (Zhang et al. 2017) with one read-out head per layer.

    The paper's denoiser has 20 layers of 64 channels; the small config narrows and
    shortens it so that the whole comparison runs on a CPU.
    """

    num_layers: int = 20
    """Conv-BN-ReLU blocks (the first has no BN), each followed by a read-out."""
    channels: int = 64
    feature_size: int = 16
    """The policy's 3-channel feature image is average-pooled to at most this side."""
    encoder_channels: int = 16
    """Width of the stop policy's CNN encoder."""

    def validate(self, path: str) -> None:
        positive(self, path, "num_layers", "channels", "feature_size", "encoder_channels")
        if self.feature_size < 4:
            raise ConfigError(f"{path}.feature_size: must be >= 4, got {self.feature_size!r}")


@register_predictor("dncnn", DnCNNConfig, task="denoising")
class DnCNN(LayeredPredictor):
    """Residual denoiser: layer ``t`` refines the features, head ``t`` reads out the noise.

    ``h_0`` is the noisy image; ``h_t = ReLU(BN(conv_t(h_{t-1})))`` (no BN in the first
    block); the estimate after layer ``t`` is ``x_t = noisy - head_t(h_t)`` where
    ``head_t`` is a single 3x3 convolution to one channel (the predicted noise).

    One head per layer rather than one shared head: features at different depths have
    different statistics, and a shared head would force every layer into one feature
    space, which costs the deep layers quality; untied heads add only ``9 * channels``
    weights each. (The original DnCNN has a single head after the last block.)

    State ``{"h": features, "x": estimate, "dx": x_t - x_{t-1}}``. Policy features: the
    noisy image, the estimate and their difference (the predicted noise) as a 3-channel
    image, average-pooled to ``feature_size``; no clean image is used. Extras:
    ``"change"``, the relative change ``||dx||^2 / ||x_t||^2`` (convergence heuristic).
    """

    display_name = "DnCNN"

    def __init__(self, cfg: DnCNNConfig, task: DenoisingTask) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        self.encoder_channels = cfg.encoder_channels
        self.channels = c = cfg.channels
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU())]
        for _ in range(cfg.num_layers - 1):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 3, padding=1) for _ in range(cfg.num_layers))
        # Zero heads: every read-out starts as the noisy image itself, so all layers start
        # with the same loss, the oracle q* starts uniform and every head gets gradient
        # (otherwise the layer that happens to learn first can take all of q*'s mass).
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        side = min(cfg.feature_size, task.cfg.patch_size)
        self.feature_shape = (3, side, side)

    def initial_state(self, inputs: dict[str, Tensor]) -> State:
        noisy = inputs["noisy"]
        # ``h`` keeps one shape at every layer (the noisy image zero-padded to ``channels``
        # at t = 0), so that instances at different layers share a batch (forward_step).
        h = F.pad(noisy, (0, 0, 0, 0, 0, self.channels - 1))
        return {"h": h, "x": noisy, "dx": torch.zeros_like(noisy)}

    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        h = state["h"]  # type: ignore[index]
        h = self.blocks[t](h[:, :1] if t == 0 else h)
        x = inputs["noisy"] - self.heads[t](h)
        return {"h": h, "x": x, "dx": x - state["x"]}  # type: ignore[index]

    def readout(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        return state["x"]  # type: ignore[index]

    def policy_features(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> Tensor:
        noisy = inputs["noisy"]
        image = torch.cat([noisy, prediction, noisy - prediction], dim=1)
        if image.shape[-1] != self.feature_shape[-1] or image.shape[-2] != self.feature_shape[-2]:
            image = F.adaptive_avg_pool2d(image, self.feature_shape[1:])
        return image

    def policy_encoder(self) -> nn.Module:
        return ImageEncoder(self.feature_shape[0], self.encoder_channels)

    def extras(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> dict[str, Tensor]:
        x, dx = state["x"], state["dx"]  # type: ignore[index]
        return {"change": dx.pow(2).flatten(1).sum(1) / (x.pow(2).flatten(1).sum(1) + 1e-12)}

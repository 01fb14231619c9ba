"""DnCNN with a read-out after every layer (the deeply-supervised DnCNN of DnCNN-stop)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2s_gym.config import ConfigError, positive
from l2s_gym.predictor import LayeredPredictor, State
from l2s_gym.registry import register_predictor
from l2s_gym.tasks.denoising import DenoisingTask

NUM_STATS = 6
"""Scalar statistics per layer in the policy features (see ``noise_statistics``)."""


def haar_noise_sigma(images: Tensor) -> Tensor:
    """A label-free noise level estimate per image ``(B, 1, H, W) -> (B,)``.

    The median absolute finest-scale diagonal Haar coefficient over 0.6745 (Donoho's MAD
    estimate): for i.i.d. Gaussian noise of standard deviation sigma the coefficient
    ``(a - b - c + d) / 2`` of each 2x2 block has standard deviation sigma, and the median
    ignores the few blocks where the image itself has diagonal detail.
    """
    h, w = images.shape[-2] // 2 * 2, images.shape[-1] // 2 * 2
    x = images[..., :h, :w]
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    return hh.abs().flatten(1).median(dim=1).values / 0.6745


def _log255(values: Tensor) -> Tensor:
    """``log(255 v + 0.5) - 3``: statistics of [0, 1] images on a log scale near 0."""
    return torch.log(255.0 * values + 0.5) - 3.0


def noise_statistics(noisy: Tensor, estimate: Tensor, change: Tensor) -> Tensor:
    """``(B, NUM_STATS)`` label-free statistics of one layer's estimate, on log scales.

    0. the noise level of the input (``haar_noise_sigma(noisy)``);
    1. the noise left in the estimate (the same estimate on ``estimate``);
    2. the standard deviation of the predicted noise ``noisy - estimate``: it matches
       statistic 0 when the layer removed about as much as the input's noise level, is
       below it while noise remains, and above it when the layer removes image content;
    3. the size (RMS) of the layer's change ``x_t - x_{t-1}``;
    4. the texture of the estimate (mean absolute horizontal and vertical difference);
    5. the contrast of the estimate (its standard deviation).
    """
    flat = estimate.flatten(1)
    texture = 0.5 * (
        (estimate[..., 1:, :] - estimate[..., :-1, :]).abs().flatten(1).mean(1)
        + (estimate[..., :, 1:] - estimate[..., :, :-1]).abs().flatten(1).mean(1)
    )
    stats = [
        haar_noise_sigma(noisy),
        haar_noise_sigma(estimate),
        (noisy - estimate).flatten(1).std(dim=1),
        change.pow(2).flatten(1).mean(1).sqrt(),
        texture,
        flat.std(dim=1),
    ]
    return _log255(torch.stack(stats, dim=1))


class ImageEncoder(nn.Module):
    """The stop policy's encoder for DnCNN features ``(N, D) -> (N, E)``.

    The features are a flat vector: an optional ``(C, S, S)`` image (flattened), then
    ``num_stats`` scalar statistics (``noise_statistics``). The image goes through a small
    CNN (three 3x3 convolutions, two with stride 2, then global average pooling); the
    statistics pass through unchanged next to the CNN's output.
    """

    def __init__(
        self, image_shape: tuple[int, int, int] | None, num_stats: int, channels: int = 16
    ) -> None:
        super().__init__()
        self.image_shape = image_shape
        self.image_size = 0 if image_shape is None else math.prod(image_shape)
        self.num_stats = num_stats
        self.cnn: nn.Module | None = None
        if image_shape is not None:
            self.cnn = nn.Sequential(
                nn.Conv2d(image_shape[0], channels, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(start_dim=1),
            )

    def forward(self, features: Tensor) -> Tensor:
        stats = features[:, self.image_size :]
        if self.cnn is None:
            return stats
        image = features[:, : self.image_size].reshape(-1, *self.image_shape)  # type: ignore[misc]
        return torch.cat([self.cnn(image), stats], dim=1)


@dataclass
class DnCNNConfig:
    """DnCNN (Zhang et al. 2017) with one read-out head per layer.

    The paper's denoiser has 20 layers of 64 channels; the small config narrows and
    shortens it so that the whole comparison runs on a CPU.
    """

    num_layers: int = 20
    """Conv-BN-ReLU blocks (the first has no BN), each followed by a read-out."""
    channels: int = 64
    features: Literal["image", "stats", "image+stats"] = "image+stats"
    """What the stop policy sees after each layer: ``image``, the noisy input, the estimate
    and their difference average-pooled to ``feature_size`` (encoded by a small CNN);
    ``stats``, six label-free statistics (``noise_statistics``: the input's noise level,
    the noise left, the predicted noise's spread, the change, texture, contrast); or both."""
    feature_size: int = 16
    """The policy's 3-channel feature image is average-pooled to at most this side."""
    encoder_channels: int = 16
    """Width of the stop policy's CNN encoder."""
    heads: Literal["separate", "cumulative"] = "separate"
    """How read-out ``t`` is formed from head ``t``'s noise estimate ``n_t = head_t(h_t)``:
    ``separate``: ``x_t = noisy - n_t``; ``cumulative``: ``x_t = x_{t-1} - n_t`` (each layer
    corrects the previous estimate, so a layer whose head is untrained repeats the last
    estimate instead of the noisy input)."""

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

    State ``{"h": features, "x": estimate, "dx": x_t - x_{t-1}}``. Policy features (a flat
    vector, ``features`` chooses the parts): the noisy image, the estimate and their
    difference (the predicted noise) as a 3-channel image average-pooled to
    ``feature_size``, and the label-free statistics of ``noise_statistics`` (the input's
    noise level, the noise left in the estimate, the spread of the predicted noise, ...);
    no clean image is used. Extras:
    ``"change"``, the relative change ``||dx||^2 / ||x_t||^2`` (convergence heuristic).
    """

    display_name = "DnCNN"

    def __init__(self, cfg: DnCNNConfig, task: DenoisingTask) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        self.encoder_channels = cfg.encoder_channels
        self.cumulative = cfg.heads == "cumulative"
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
        self.image_shape: tuple[int, int, int] | None = (
            (3, side, side) if "image" in cfg.features else None
        )
        self.num_stats = NUM_STATS if "stats" in cfg.features else 0
        image_size = 0 if self.image_shape is None else math.prod(self.image_shape)
        self.feature_shape = (image_size + self.num_stats,)

    def initial_state(self, inputs: dict[str, Tensor]) -> State:
        noisy = inputs["noisy"]
        # ``h`` keeps one shape at every layer (the noisy image zero-padded to ``channels``
        # at t = 0), so that instances at different layers share a batch (forward_step).
        h = F.pad(noisy, (0, 0, 0, 0, 0, self.channels - 1))
        return {"h": h, "x": noisy, "dx": torch.zeros_like(noisy)}

    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        h = state["h"]  # type: ignore[index]
        h = self.blocks[t](h[:, :1] if t == 0 else h)
        base = state["x"] if self.cumulative else inputs["noisy"]  # type: ignore[index]
        x = base - self.heads[t](h)
        return {"h": h, "x": x, "dx": x - state["x"]}  # type: ignore[index]

    def readout(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        return state["x"]  # type: ignore[index]

    def predict_full_depth(self, inputs: dict[str, Tensor]) -> Tensor:
        if self.cumulative:  # every head adds to the estimate
            return super().predict_full_depth(inputs)
        # The blocks and the last head only: ``layer`` also runs every layer's head (the
        # estimate after each layer) and the change since the last one.
        noisy = inputs["noisy"]
        h = noisy
        for block in self.blocks:
            h = block(h)
        return noisy - self.heads[-1](h)

    def policy_features(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> Tensor:
        noisy = inputs["noisy"]
        parts = []
        if self.image_shape is not None:
            image = torch.cat([noisy, prediction, noisy - prediction], dim=1)
            if image.shape[-2:] != self.image_shape[1:]:
                image = F.adaptive_avg_pool2d(image, self.image_shape[1:])
            parts.append(image.flatten(1))
        if self.num_stats:
            parts.append(noise_statistics(noisy, prediction, state["dx"]))  # type: ignore[index]
        return torch.cat(parts, dim=1)

    def policy_encoder(self) -> nn.Module:
        return ImageEncoder(self.image_shape, self.num_stats, self.encoder_channels)

    def extras(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> dict[str, Tensor]:
        x, dx = state["x"], state["dx"]  # type: ignore[index]
        return {"change": dx.pow(2).flatten(1).sum(1) / (x.pow(2).flatten(1).sum(1) + 1e-12)}

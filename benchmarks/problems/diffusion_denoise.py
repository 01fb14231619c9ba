"""A problem of its own for checking the library's defaults: denoising by learned diffusion.

Held out: this problem was not used to choose the library's defaults (see
docs/defaults.md). A 1-D signal, piecewise constant with a few jumps plus a gentle
slope, is observed with white noise of a level drawn per instance, log-uniformly over
``[noise_min, noise_max]``. Each layer is one explicit step of nonlinear (Perona-Malik)
diffusion, ``x <- x + tau_t * D^T (g(|D x| / kappa_t) * D x)`` with ``g(s) = 1 / (1 + s^2)``
and a learned step ``tau_t`` and edge scale ``kappa_t`` per layer: it smooths the noise
away while sparing the jumps, and run too long it flattens the signal itself, sooner
the weaker the noise. So the best number of steps depends on the noise level, which
the solver is not told.

Loss and metric: the per-instance mean squared error in dB, ``10 log10 mean((x - x*)^2)``;
the metric is its mean over instances (lower is better). Groups: the noise tercile.
Policy features (label-free): log size of the last update, log distance from the noisy
input, a robust noise estimate of the input (median absolute first difference) and the
log total variation of the estimate.

    l2s frontier benchmarks/problems/diffusion_denoise.yaml \
        --import benchmarks/problems/diffusion_denoise.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2s_gym import Batch, LayeredPredictor, Task
from l2s_gym.config import ConfigError, positive
from l2s_gym.registry import register_predictor, register_task


@dataclass
class DiffusionConfig:
    n: int = 128
    """Signal length."""
    jumps: int = 4
    """Jumps of the piecewise-constant part of every signal."""
    noise_min: float = 0.02
    noise_max: float = 0.5
    """Noise standard deviation (the jumps are of order 1), log-uniform over this range."""
    val_size: int = 1000
    test_size: int = 2000

    def validate(self, path: str) -> None:
        positive(self, path, "n", "jumps", "noise_min", "val_size", "test_size")
        if not self.noise_max > self.noise_min:
            raise ConfigError(f"{path}.noise_max: must exceed noise_min ({self.noise_min})")


def difference(x: Tensor) -> Tensor:
    """``D x``: forward differences, ``(B, n) -> (B, n - 1)``."""
    return x[:, 1:] - x[:, :-1]


def difference_adjoint(v: Tensor) -> Tensor:
    """``D^T v``, ``(B, n - 1) -> (B, n)``."""
    return F.pad(v, (1, 0)) - F.pad(v, (0, 1))


@register_task("diffusion_denoise", DiffusionConfig)
class DiffusionTask(Task):
    name = "diffusion_denoise"
    metric_name = "MSE (dB)"
    higher_is_better = False
    group_title = "noise"
    default_predictor = "perona_malik"

    def __init__(self, cfg: DiffusionConfig, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        self.edges = torch.linspace(math.log(cfg.noise_min), math.log(cfg.noise_max), 4)
        self.group_names = ["low", "mid", "high"]

    def _draw(self, size: int, gen: torch.Generator) -> Batch:
        c, dev = self.cfg, gen.device
        grid = torch.linspace(0, 1, c.n, device=dev)
        where = torch.rand(size, c.jumps, 1, generator=gen, device=dev)
        height = torch.randn(size, c.jumps, 1, generator=gen, device=dev)
        slope = 0.5 * torch.randn(size, 1, generator=gen, device=dev)
        x = (height * (grid > where)).sum(1) + slope * grid
        log_sigma = self.edges[0] + (self.edges[-1] - self.edges[0]) * torch.rand(
            size, generator=gen, device=dev
        )
        noise = torch.randn(size, c.n, generator=gen, device=dev) * log_sigma.exp().unsqueeze(1)
        groups = torch.bucketize(log_sigma, self.edges[1:-1].to(dev))
        return Batch({"y": x + noise}, x, groups)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._draw(batch_size, generator)

    def make_eval_set(self, split: str) -> Batch:
        size = self.cfg.val_size if split == "val" else self.cfg.test_size
        return self._draw(size, self.generator(1 if split == "val" else 2, "cpu")).to(self.device)

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return 10 * torch.log10((prediction - targets).pow(2).mean(1).clamp_min(1e-12))

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return self.loss(prediction, targets)


@dataclass
class PeronaMalikConfig:
    num_layers: int = 16


@register_predictor("perona_malik", PeronaMalikConfig, task="diffusion_denoise")
class PeronaMalik(LayeredPredictor):
    """Explicit Perona-Malik steps with a learned step and edge scale per layer."""

    display_name = "PM"
    feature_shape = (4,)

    def __init__(self, cfg: PeronaMalikConfig, task: DiffusionTask) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        # tau = 0.5 sigmoid(a) stays below the explicit scheme's stability limit of 1/2.
        self.tau_logit = nn.Parameter(torch.zeros(cfg.num_layers, device=task.device))
        self.log_kappa = nn.Parameter(
            torch.full((cfg.num_layers,), math.log(0.3), device=task.device)
        )

    def initial_state(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        y = inputs["y"]
        return {"x": y, "dx": torch.zeros_like(y)}

    def layer(self, t: int, state: dict[str, Tensor], inputs: dict[str, Tensor]) -> dict:
        x = state["x"]
        grad = difference(x)
        flux = grad / (1 + (grad / self.log_kappa[t].exp()).pow(2))
        dx = -0.5 * torch.sigmoid(self.tau_logit[t]) * difference_adjoint(flux)
        return {"x": x + dx, "dx": dx}

    def readout(self, t: int, state: dict[str, Tensor], inputs: dict[str, Tensor]) -> Tensor:
        return state["x"]

    def policy_features(self, t: int, state: dict, inputs: dict, prediction: Tensor) -> Tensor:
        x, y = state["x"], inputs["y"]
        noise = difference(y).abs().median(dim=1).values / (0.6745 * math.sqrt(2))
        return torch.stack(
            [
                torch.log10(state["dx"].pow(2).mean(1) + 1e-12),
                torch.log10((x - y).pow(2).mean(1) + 1e-12),
                torch.log10(noise.pow(2) + 1e-12),
                torch.log10(difference(x).abs().mean(1) + 1e-12),
            ],
            dim=1,
        )

    def extras(self, t: int, state: dict, inputs: dict, prediction: Tensor) -> dict:
        return {"change": state["dx"].pow(2).sum(1) / (state["x"].pow(2).sum(1) + 1e-12)}

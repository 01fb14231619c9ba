"""A problem of its own for checking the library's defaults: 1-D deblurring by CGLS.

Regularisation by early stopping, with a solver that has nothing to train. A signal
``x*`` (piecewise smooth: a few bumps and steps) is blurred by a fixed Gaussian kernel and
measured with noise, ``y = K x* + e``; each instance draws its own relative noise level,
log-uniformly over ``[noise_min, noise_max]``, and the solver is *not* told it. Each
layer is one iteration of conjugate gradient on the normal equations (CGLS) from
``x_0 = 0``: the error falls while the iterations fit the signal and rises once they
start fitting the noise (semi-convergence), so the best iteration depends on the
instance's noise, and a stop rule has to infer it from the residual's history.

Loss and metric: the per-instance relative error in dB, ``10 log10(||x_t - x*||^2 /
||x*||^2)`` (the metric is its mean over instances). Groups: the noise decade.
Policy features (label-free): log relative residual, its decrease over the last
iteration, log relative update size and log norm of the normal-equation residual.

    l2s frontier benchmarks/problems/cg_deblur.yaml --import benchmarks/problems/cg_deblur.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from l2s_gym import Batch, LayeredPredictor, Task
from l2s_gym.config import ConfigError, positive
from l2s_gym.registry import register_predictor, register_task


@dataclass
class DeblurConfig:
    n: int = 96
    """Signal length."""
    blur_width: float = 2.5
    """Standard deviation of the Gaussian blur kernel, in samples."""
    noise_min: float = 0.001
    noise_max: float = 0.1
    """Each instance's noise ``||e|| / ||K x*||`` is log-uniform over this range."""
    val_size: int = 1000
    test_size: int = 2000

    def validate(self, path: str) -> None:
        positive(self, path, "n", "blur_width", "noise_min", "val_size", "test_size")
        if not self.noise_max > self.noise_min:
            raise ConfigError(f"{path}.noise_max: must exceed noise_min ({self.noise_min})")


@register_task("cg_deblur", DeblurConfig)
class DeblurTask(Task):
    name = "cg_deblur"
    metric_name = "relative error (dB)"
    higher_is_better = False
    group_title = "noise"
    default_predictor = "cgls"

    def __init__(self, cfg: DeblurConfig, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        lo, hi = math.log10(cfg.noise_min), math.log10(cfg.noise_max)
        self.edges = torch.linspace(lo, hi, 4)
        self.group_names = [
            f"{10**a:.2g}-{10**b:.2g}" for a, b in zip(self.edges[:-1], self.edges[1:], strict=True)
        ]
        i = torch.arange(cfg.n, dtype=torch.float32)
        kernel = torch.exp(-0.5 * ((i[:, None] - i[None, :]) / cfg.blur_width) ** 2)
        self.K = (kernel / kernel.sum(1, keepdim=True)).to(self.device)

    def _draw(self, size: int, gen: torch.Generator) -> Batch:
        n, dev = self.cfg.n, gen.device
        grid = torch.linspace(0, 1, n, device=dev)
        # Three Gaussian bumps and two steps of random place, width and height.
        centre = torch.rand(size, 3, 1, generator=gen, device=dev)
        width = 0.02 + 0.1 * torch.rand(size, 3, 1, generator=gen, device=dev)
        height = torch.randn(size, 3, 1, generator=gen, device=dev)
        x = (height * torch.exp(-0.5 * ((grid - centre) / width) ** 2)).sum(1)
        jump = torch.rand(size, 2, 1, generator=gen, device=dev)
        step = 0.5 * torch.randn(size, 2, 1, generator=gen, device=dev)
        x = x + (step * (grid > jump)).sum(1)
        clean = x @ self.K.to(dev).T
        lo, hi = float(self.edges[0]), float(self.edges[-1])
        log_noise = lo + (hi - lo) * torch.rand(size, generator=gen, device=dev)
        e = torch.randn(size, n, generator=gen, device=dev)
        e = e * (10**log_noise * clean.norm(dim=1) / e.norm(dim=1)).unsqueeze(1)
        groups = torch.bucketize(log_noise, self.edges[1:-1].to(dev))
        return Batch({"y": clean + e}, x, groups)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._draw(batch_size, generator)

    def make_eval_set(self, split: str) -> Batch:
        size = self.cfg.val_size if split == "val" else self.cfg.test_size
        return self._draw(size, self.generator(1 if split == "val" else 2, "cpu")).to(self.device)

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        err = (prediction - targets).pow(2).sum(1) / targets.pow(2).sum(1).clamp_min(1e-12)
        return 10 * torch.log10(err.clamp_min(1e-12))

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return self.loss(prediction, targets)

    def fixed_data(self) -> dict[str, Tensor]:
        return {"K": self.K}


@dataclass
class CGLSConfig:
    num_layers: int = 24

    def validate(self, path: str) -> None:
        positive(self, path, "num_layers")


@register_predictor("cgls", CGLSConfig, task="cg_deblur")
class CGLS(LayeredPredictor):
    """Conjugate gradient on ``K^T K x = K^T y`` from ``x_0 = 0``: no parameters."""

    display_name = "CGLS"
    feature_shape = (4,)

    def __init__(self, cfg: CGLSConfig, task: DeblurTask) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        self.register_buffer("K", task.K.clone())

    def initial_state(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        y = inputs["y"]
        s = y @ self.K
        gamma = s.pow(2).sum(1)
        zero = torch.zeros_like(s)
        return {"x": zero, "r": y, "p": s, "gamma": gamma, "gamma0": gamma, "dx": zero,
                "r_prev": y}  # fmt: skip

    def layer(self, t: int, state: dict[str, Tensor], inputs: dict[str, Tensor]) -> dict:
        x, r, p, gamma = state["x"], state["r"], state["p"], state["gamma"]
        q = p @ self.K.T
        alpha = (gamma / q.pow(2).sum(1).clamp_min(1e-30)).unsqueeze(1)
        dx = alpha * p
        r_new = r - alpha * q
        s = r_new @ self.K
        gamma_new = s.pow(2).sum(1)
        p = s + (gamma_new / gamma.clamp_min(1e-30)).unsqueeze(1) * p
        return {"x": x + dx, "r": r_new, "p": p, "gamma": gamma_new, "gamma0": state["gamma0"],
                "dx": dx, "r_prev": r}  # fmt: skip

    def readout(self, t: int, state: dict[str, Tensor], inputs: dict[str, Tensor]) -> Tensor:
        return state["x"]

    def policy_features(self, t: int, state: dict, inputs: dict, prediction: Tensor) -> Tensor:
        y2 = inputs["y"].pow(2).sum(1) + 1e-12
        r2 = state["r"].pow(2).sum(1)
        fall = r2 / (state["r_prev"].pow(2).sum(1) + 1e-12)
        change = state["dx"].pow(2).sum(1) / (state["x"].pow(2).sum(1) + 1e-12)
        normal = state["gamma"] / (state["gamma0"] + 1e-12)
        return torch.log10(torch.stack([r2 / y2, fall, change, normal], dim=1) + 1e-12)

    def extras(self, t: int, state: dict, inputs: dict, prediction: Tensor) -> dict:
        # The convergence-threshold heuristic: the relative size of the last update.
        change = state["dx"].pow(2).sum(1) / (state["x"].pow(2).sum(1) + 1e-12)
        return {"change": change}

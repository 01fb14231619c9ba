"""Power iteration for the top eigenvector of random symmetric PSD matrices, as a stop problem.

Each instance is its own n x n matrix M = Q diag(lam) Q^T with lam_1 = 1, lam_2 = 1 - gap,
gap log-uniform over [gap_min, gap_max], the others uniform on [0, lam_2]; a random start
vector. Layer t is one power-iteration step x <- M x / ||M x||. Loss: sin^2 of the angle
between x_t and the top eigenvector (linear, in [0, 1]); metric: its mean, in dB.
Small gaps converge slowly, large gaps in a few layers: the best stop depends on the instance.
Policy features (label-free): log10 Rayleigh residual ||Mx - (x'Mx) x||, log10 of its ratio to
the previous layer's residual (an estimate of lam_2 / lam_1), and (t + 1) / T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from l2s_gym import Batch, Task
from l2s_gym.adapters import Iterative, register_adapter
from l2s_gym.config import ConfigError, positive
from l2s_gym.registry import register_task


@dataclass
class PowerConfig:
    n: int = 16
    gap_min: float = 0.02
    gap_max: float = 0.5
    val_size: int = 1000
    test_size: int = 2000

    def validate(self, path: str) -> None:
        positive(self, path, "n", "gap_min", "val_size", "test_size")
        if not (self.gap_min < self.gap_max < 1):
            raise ConfigError(f"{path}.gap_max: must be in (gap_min, 1), got {self.gap_max}")


@register_task("power_iteration", PowerConfig)
class PowerTask(Task):
    name = "power_iteration"
    metric_name = "sin^2 angle (dB)"
    higher_is_better = False
    group_title = "eigengap"
    default_predictor = "power_it"

    def __init__(self, cfg: PowerConfig, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        lo, hi = math.log10(cfg.gap_min), math.log10(cfg.gap_max)
        self.edges = torch.linspace(lo, hi, 4)
        self.group_names = [
            f"{10**a:.2g}-{10**b:.2g}" for a, b in zip(self.edges[:-1], self.edges[1:], strict=True)
        ]

    def _draw(self, size: int, gen: torch.Generator) -> Batch:
        n, dev = self.cfg.n, gen.device
        lo, hi = float(self.edges[0]), float(self.edges[-1])
        log_gap = lo + (hi - lo) * torch.rand(size, generator=gen, device=dev)
        lam2 = 1 - 10**log_gap
        rest = torch.rand(size, n - 2, generator=gen, device=dev) * lam2[:, None]
        lam = torch.cat([torch.ones(size, 1, device=dev), lam2[:, None], rest], dim=1)
        q, _ = torch.linalg.qr(torch.randn(size, n, n, generator=gen, device=dev))
        M = (q * lam[:, None, :]) @ q.transpose(1, 2)
        M = 0.5 * (M + M.transpose(1, 2))
        x0 = torch.randn(size, n, generator=gen, device=dev)
        x0 = x0 / x0.norm(dim=1, keepdim=True)
        groups = torch.bucketize(log_gap, self.edges[1:-1].to(dev))
        return Batch({"M": M, "x0": x0}, q[:, :, 0], groups)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._draw(batch_size, generator)

    def make_eval_set(self, split: str) -> Batch:
        size = self.cfg.val_size if split == "val" else self.cfg.test_size
        return self._draw(size, self.generator(1 if split == "val" else 2, "cpu")).to(self.device)

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        x = prediction / prediction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        along = (x * targets).sum(1, keepdim=True) * targets
        return (x - along).pow(2).sum(1)  # sin^2, without 1 - cos^2's cancellation

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return self.loss(prediction, targets)

    def aggregate(self, stats: Tensor) -> float:
        return float(10 * torch.log10(stats.double().mean().clamp_min(1e-30)))


def _residual(M: Tensor, x: Tensor) -> Tensor:
    Mx = (M @ x.unsqueeze(2)).squeeze(2)
    rho = (x * Mx).sum(1, keepdim=True)
    return (Mx - rho * x).norm(dim=1)


def power_it(task, num_layers: int = 30) -> Iterative:
    T = num_layers

    def init(inputs):
        x = inputs["x0"]
        r = _residual(inputs["M"], x)
        return {"x": x, "res": r, "res_prev": r}

    def step(t, s, inputs):
        y = (inputs["M"] @ s["x"].unsqueeze(2)).squeeze(2)
        x = y / y.norm(dim=1, keepdim=True).clamp_min(1e-30)
        return {"x": x, "res": _residual(inputs["M"], x), "res_prev": s["res"]}

    def features(t, s, inputs, prediction):
        r = s["res"].clamp_min(1e-12)
        ratio = r / s["res_prev"].clamp_min(1e-12)
        depth = torch.full_like(r, (t + 1) / T)
        return torch.stack([torch.log10(r), torch.log10(ratio.clamp_min(1e-12)), depth], dim=1)

    return Iterative(
        num_layers,
        init=init,
        step=step,
        readout=lambda t, s, inputs: s["x"],
        features=features,
        feature_shape=3,
        kind="regressor",
        display_name="PowerIt",
    )


register_adapter("power_it", power_it, task="power_iteration")

"""Sparse recovery (the paper's first family): recover x* from y = A x* + noise."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from l2s_gym.config import ConfigError, positive
from l2s_gym.registry import register_task
from l2s_gym.task import Batch, Task


@dataclass
class SparseRecoveryConfig:
    """Parameters of the sparse-recovery task (the paper's defaults are m=250, n=500)."""

    m: int = 250
    """Measurements (rows of A)."""
    n: int = 500
    """Signal length (columns of A)."""
    p: float = 0.1
    """Probability that an entry of x* is non-zero (Bernoulli-Gaussian)."""
    p_max: float = 0.0
    """0: every instance has sparsity ``p``. Otherwise each instance draws its own
    probability uniformly from ``[p, p_max]``: sparser instances converge in fewer
    layers, so the best depth varies per instance (easy and hard instances)."""
    snr_db: list[float] = field(default_factory=lambda: [20.0, 30.0, 40.0])
    """Each instance's SNR is drawn uniformly from this list."""
    condition_number: float = 0.0
    """0 for a plain Gaussian A; otherwise the condition number imposed on A."""
    val_size: int = 1000
    test_size_per_snr: int = 1000

    def validate(self, path: str) -> None:
        positive(self, path, "m", "n", "p", "val_size", "test_size_per_snr")
        if self.p > 1:
            raise ConfigError(f"{path}.p: must be in (0, 1], got {self.p!r}")
        if self.p_max != 0 and not self.p <= self.p_max <= 1:
            raise ConfigError(
                f"{path}.p_max: must be 0 (off) or in [p, 1] = [{self.p!r}, 1], got {self.p_max!r}"
            )
        if not self.snr_db:
            raise ConfigError(f"{path}.snr_db: must list at least one SNR")
        if self.condition_number != 0 and self.condition_number < 1:
            raise ConfigError(
                f"{path}.condition_number: must be 0 (off) or >= 1, got {self.condition_number!r}"
            )


def make_matrix(m: int, n: int, condition_number: float, generator: torch.Generator) -> Tensor:
    """Gaussian ``m x n`` matrix with unit-norm columns, optionally with a set condition number.

    With a condition number ``k``, the singular values are replaced by values spaced
    geometrically from 1 to ``1/k`` before the columns are normalised (which moves the
    final condition number a little; the realised value is in ``SparseRecoveryTask.kappa``).
    """
    a = torch.randn(m, n, generator=generator, device=generator.device) / math.sqrt(m)
    if condition_number and condition_number > 1:
        u, _, vh = torch.linalg.svd(a, full_matrices=False)
        k = min(m, n)
        s = torch.logspace(0, -math.log10(condition_number), k, device=a.device)
        a = u @ torch.diag(s) @ vh
    return a / a.norm(dim=0, keepdim=True)


def stem_image(values: np.ndarray, height: int = 121, min_width: int = 256) -> np.ndarray:
    """``(height, W, 3)`` uint8 stem plot of a vector, each entry ``W // len(values)`` wide."""
    n = len(values)
    width = max(1, -(-min_width // n))  # pixels per entry
    scale = float(np.abs(values).max()) or 1.0
    half = height // 2
    reach = np.rint(np.clip(values / scale, -1, 1) * half).astype(int)
    rows = np.arange(height)[:, None]  # row 0 at the top; the axis at row ``half``
    up = (rows < half) & (rows >= half - reach[None, :])
    down = (rows > half) & (rows <= half - reach[None, :])
    bars = np.repeat(up | down, width, axis=1)
    image = np.full((height, n * width, 3), 255, dtype=np.uint8)
    image[half] = 160
    image[bars] = (31, 119, 180)
    return image


@register_task("sparse_recovery", SparseRecoveryConfig)
class SparseRecoveryTask(Task):
    """``y = A x* + noise``; x* Bernoulli(p)-Gaussian; the SNR is drawn per instance (and,
    with ``p_max``, the sparsity too).

    Loss and metric: the squared error normalised by the expected signal energy
    ``E||x*||^2 = n p`` (``n (p + p_max) / 2`` with ``p_max``); the metric is NMSE in dB,
    ``10 log10(mean_i ||x_i - x*_i||^2 / E||x*||^2)``, overall and per SNR (groups). The validation set mixes SNRs at random; the test set
    holds ``test_size_per_snr`` instances of every SNR.
    """

    name = "sparse_recovery"
    metric_name = "NMSE (dB)"
    higher_is_better = False
    group_title = "SNR"
    default_predictor = "lista"
    env_id = "l2s/SparseRecovery-v1"

    def __init__(self, cfg: SparseRecoveryConfig, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        self.group_names = [f"{s:g} dB" for s in cfg.snr_db]
        # Drawn on the CPU, then moved: the same matrix on every device.
        fixed = self.generator(0, device="cpu")
        self.A = make_matrix(cfg.m, cfg.n, cfg.condition_number, fixed).to(self.device)
        self.kappa = float(torch.linalg.cond(self.A.cpu()))
        self._snr = torch.tensor(cfg.snr_db, dtype=torch.float32, device=self.device)
        # E||x*||^2 = n E[p]: one normaliser for every instance, so the metric stays the
        # ratio of the mean squared error to the mean signal energy.
        self._energy = cfg.n * (0.5 * (cfg.p + cfg.p_max) if cfg.p_max else cfg.p)

    def _draw(self, groups: Tensor, generator: torch.Generator) -> Batch:
        """Instances of SNR ``groups``, drawn and computed on the generator's device."""
        b, (m, n) = groups.shape[0], self.A.shape
        dev = generator.device
        p: float | Tensor = self.cfg.p
        if self.cfg.p_max:
            lo, hi = self.cfg.p, self.cfg.p_max
            p = lo + (hi - lo) * torch.rand(b, 1, generator=generator, device=dev)
        support = torch.rand(b, n, generator=generator, device=dev) < p
        x = torch.randn(b, n, generator=generator, device=dev) * support
        clean = x @ self.A.to(dev).T
        snr = self._snr.to(dev)[groups]
        sigma = torch.sqrt(clean.pow(2).sum(1) / (m * 10 ** (snr / 10)))
        y = clean + sigma.unsqueeze(1) * torch.randn(b, m, generator=generator, device=dev)
        return Batch({"y": y}, x, groups)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        groups = torch.randint(
            len(self.cfg.snr_db), (batch_size,), generator=generator, device=generator.device
        )
        return self._draw(groups, generator)

    def make_eval_set(self, split: str) -> Batch:
        gen = self.generator(1 if split == "val" else 2, device="cpu")
        if split == "val":
            groups = torch.randint(len(self.cfg.snr_db), (self.cfg.val_size,), generator=gen)
        else:
            groups = torch.arange(len(self.cfg.snr_db)).repeat_interleave(
                self.cfg.test_size_per_snr
            )
        return self._draw(groups, gen).to(self.device)

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return (prediction - targets).pow(2).sum(1) / self._energy

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return self.loss(prediction, targets)

    def aggregate(self, stats: Tensor) -> float:
        return float(10 * torch.log10(stats.double().mean()))

    def fixed_data(self) -> dict[str, Tensor]:
        """The sensing matrix: a LISTA trained on one ``A`` is wrong for another."""
        return {"A": self.A}

    def render(self, prediction: Tensor, inputs: dict[str, Tensor]) -> np.ndarray:
        """A stem plot of the current estimate ``x_t``: one bar per entry, up or down from the
        middle line, scaled by its largest magnitude (blue bars on white, grey axis)."""
        return stem_image(prediction.detach().float().cpu().numpy())

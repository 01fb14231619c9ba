"""Task-imbalanced meta learning (the paper's third family): few-shot sinusoid regression.

Each task is a sinusoid ``y = a sin(x - phase)`` with amplitude ``a ~ U[0.1, 5]``, phase
``~ U[0, pi]`` and inputs ``x ~ U[-5, 5]`` (the MAML sinusoid benchmark). The imbalance:
every task draws its own number of support shots ``K`` from ``[k_min, k_max]``, so a
1-shot task and a 10-shot task want different numbers of inner adaptation steps (few
shots overfit with many steps; many shots keep improving).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from l2s_gym.config import ConfigError, non_negative, positive
from l2s_gym.registry import register_task
from l2s_gym.task import Batch, Task


@dataclass
class MetaLearningConfig:
    """Parameters of the sinusoid few-shot task (MAML's ranges by default)."""

    k_min: int = 1
    """Fewest support shots a task may draw."""
    k_max: int = 10
    """Most support shots a task may draw (``K ~ U{k_min..k_max}`` per task)."""
    pool_size: int = 10
    """Support points drawn per task; the first ``K`` are used, the rest are masked
    padding. Must be at least ``k_max``."""
    query_size: int = 20
    """Query points per task (their labels are the targets)."""
    amplitude: list[float] = field(default_factory=lambda: [0.1, 5.0])
    """``[low, high]`` of the uniform amplitude."""
    phase: list[float] = field(default_factory=lambda: [0.0, math.pi])
    """``[low, high]`` of the uniform phase."""
    x_range: list[float] = field(default_factory=lambda: [-5.0, 5.0])
    """``[low, high]`` of the uniform inputs (support and query)."""
    val_size: int = 1000
    """Validation tasks, ``K`` drawn at random."""
    test_tasks_per_k: int = 200
    """Test tasks for every ``K`` in the range (so every K bucket is well populated)."""
    support_noise: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """``[low, high]`` of the uniform per-task standard deviation of Gaussian observation
    noise on the support labels (what the inner steps fit). With noise, a 1- or 2-shot
    task overfits it with more inner steps while a many-shot task averages it out and
    keeps improving: the task imbalance. The task's noise level is an input
    (``noise_std``), as a known measurement precision would be."""
    query_noise: float = 0.0
    """Standard deviation of Gaussian noise on the query labels (the targets); 0 scores
    the adapted model against the clean sinusoid."""
    num_buckets: int = 3
    """Groups: ``K`` split into this many contiguous buckets (see ``k_buckets``)."""

    def validate(self, path: str) -> None:
        positive(self, path, "k_min", "k_max", "pool_size", "query_size", "val_size")
        positive(self, path, "test_tasks_per_k", "num_buckets")
        non_negative(self, path, "query_noise")
        if self.k_min > self.k_max:
            raise ConfigError(
                f"{path}.k_min: K range is empty (k_min={self.k_min} > k_max={self.k_max})"
            )
        if self.k_max > self.pool_size:
            raise ConfigError(
                f"{path}.k_max: {self.k_max} shots exceed the support pool "
                f"({path}.pool_size={self.pool_size})"
            )
        if len(self.support_noise) != 2 or min(self.support_noise) < 0:
            raise ConfigError(f"{path}.support_noise: expected [low, high] with 0 <= low")
        for name in ("amplitude", "phase", "x_range", "support_noise"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ConfigError(f"{path}.{name}: expected [low, high] with low <= high")


def k_buckets(k_min: int, k_max: int, num: int = 3) -> list[tuple[int, int]]:
    """Split ``k_min..k_max`` into at most ``num`` contiguous buckets, larger ones last.

    ``1..10`` gives ``(1, 3), (4, 6), (7, 10)``.
    """
    n = k_max - k_min + 1
    num = min(num, n)
    sizes = [n // num] * num
    for i in range(n % num):
        sizes[num - 1 - i] += 1
    out, lo = [], k_min
    for s in sizes:
        out.append((lo, lo + s - 1))
        lo += s
    return out


@register_task("meta_learning", MetaLearningConfig)
class MetaLearningTask(Task):
    """Few-shot sinusoid regression with a per-task number of shots ``K``.

    Batch inputs (``B`` tasks, ``P = pool_size``, ``Q = query_size``):

    - ``support_x``, ``support_y``: ``(B, P, 1)``; entries past ``K`` are padding
    - ``support_mask``: ``(B, P)`` float, 1 on the first ``K`` points
    - ``k``: ``(B,)`` long, the number of shots
    - ``noise_std``: ``(B,)`` the standard deviation of the task's support-label noise
    - ``query_x``: ``(B, Q, 1)``

    Targets: the query labels ``(B, Q)``. Loss and metric: the query MSE of each task;
    the metric is its mean over tasks, and ``metric_interval`` gives a 95% normal
    interval for that mean. Groups are K buckets (``K=1-3``, ``K=4-6``, ``K=7-10``).
    The validation set draws ``K`` at random; the test set holds ``test_tasks_per_k``
    tasks for every ``K``.
    """

    name = "meta_learning"
    metric_name = "query MSE"
    higher_is_better = False
    group_title = "shots"
    default_predictor = "maml"
    env_id = "l2s/MetaLearning-v1"

    def __init__(
        self, cfg: MetaLearningConfig | None = None, seed: int = 0, device: str = "cpu"
    ) -> None:
        super().__init__(seed, device)
        self.cfg = cfg = cfg if cfg is not None else MetaLearningConfig()
        self.buckets = k_buckets(cfg.k_min, cfg.k_max, cfg.num_buckets)
        self.group_names = [f"K={lo}-{hi}" if lo != hi else f"K={lo}" for lo, hi in self.buckets]
        # K -> bucket index, looked up on the device.
        group_of_k = torch.zeros(cfg.k_max + 1, dtype=torch.long)
        for g, (lo, hi) in enumerate(self.buckets):
            group_of_k[lo : hi + 1] = g
        self._group_of_k = group_of_k.to(self.device)

    def _uniform(self, shape: tuple[int, ...], lo_hi: list[float], gen: torch.Generator) -> Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(shape, generator=gen, device=gen.device)

    def _draw(self, k: Tensor, gen: torch.Generator) -> Batch:
        """Tasks with ``k`` support points each, drawn on the generator's device."""
        cfg, b = self.cfg, k.shape[0]
        amp = self._uniform((b, 1, 1), cfg.amplitude, gen)
        phase = self._uniform((b, 1, 1), cfg.phase, gen)
        support_x = self._uniform((b, cfg.pool_size, 1), cfg.x_range, gen)
        query_x = self._uniform((b, cfg.query_size, 1), cfg.x_range, gen)
        slots = torch.arange(cfg.pool_size, device=gen.device)
        mask = (slots.unsqueeze(0) < k.unsqueeze(1)).float()
        support_y = amp * torch.sin(support_x - phase)
        query_y = (amp * torch.sin(query_x - phase)).squeeze(-1)
        # Noise is drawn only when asked for, so noise-free sets keep their old draws.
        lo, hi = cfg.support_noise
        noise_std = torch.full((b,), float(lo), device=self.device)
        if hi > 0:
            if hi > lo:
                noise_std = self._uniform((b,), cfg.support_noise, gen)
            support_y = support_y + noise_std.view(b, 1, 1) * torch.randn(
                support_y.shape, generator=gen, device=self.device
            )
        if cfg.query_noise > 0:
            query_y = query_y + cfg.query_noise * torch.randn(
                query_y.shape, generator=gen, device=self.device
            )
        # Padding is zeroed so nothing about the unused points can leak into features.
        support_y = support_y * mask.unsqueeze(-1)
        support_x = support_x * mask.unsqueeze(-1)
        inputs = {
            "support_x": support_x,
            "support_y": support_y,
            "support_mask": mask,
            "k": k,
            "noise_std": noise_std,
            "query_x": query_x,
        }
        return Batch(inputs, query_y, self._group_of_k.to(gen.device)[k])

    def _draw_k(self, n: int, gen: torch.Generator) -> Tensor:
        return torch.randint(
            self.cfg.k_min, self.cfg.k_max + 1, (n,), generator=gen, device=gen.device
        )

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._draw(self._draw_k(batch_size, generator), generator)

    def make_eval_set(self, split: str) -> Batch:
        # Drawn on the CPU, then moved: the same set on every device.
        gen = self.generator(1 if split == "val" else 2, device="cpu")
        if split == "val":
            k = self._draw_k(self.cfg.val_size, gen)
        else:
            k = torch.arange(self.cfg.k_min, self.cfg.k_max + 1).repeat_interleave(
                self.cfg.test_tasks_per_k
            )
        return self._draw(k, gen).to(self.device)

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return (prediction - targets).pow(2).mean(dim=1)

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return self.loss(prediction, targets)

    def metric_interval(self, stats: Tensor) -> list[float]:
        """A 95% normal interval ``[low, high]`` for the mean query MSE over ``stats``."""
        s = stats.double()
        half = 1.96 * float(s.std()) / math.sqrt(s.numel()) if s.numel() > 1 else math.nan
        mean = float(s.mean())
        return [mean - half, mean + half]

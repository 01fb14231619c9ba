"""The Task protocol: data, the per-sample loss of the oracle and rewards, the user's metric."""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Batch:
    """A batch of instances: named input tensors, targets, and a group id per instance.

    Every tensor has the batch as its leading dimension. ``groups`` indexes
    ``Task.group_names`` (e.g. the SNR of each sparse-recovery instance).
    """

    inputs: dict[str, Tensor]
    targets: Tensor
    groups: Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            {k: v.to(device) for k, v in self.inputs.items()},
            self.targets.to(device),
            self.groups.to(device),
        )

    def select(self, index: Tensor | slice) -> Batch:
        """The instances at ``index`` (a slice, an index tensor or a bool mask)."""
        return Batch(
            {k: v[index] for k, v in self.inputs.items()}, self.targets[index], self.groups[index]
        )

    def chunks(self, size: int) -> list[Batch]:
        return [self.select(slice(i, i + size)) for i in range(0, len(self), size)]


class Task(abc.ABC):
    """A family of problems: draws batches, holds seeded evaluation sets, scores predictions.

    Subclasses set ``name``, ``metric_name``, ``higher_is_better``, ``group_title`` and
    ``group_names`` and implement the abstract methods. The per-sample ``loss`` drives
    the oracle and the environment's rewards; ``metric_stat`` and ``aggregate`` give the
    metric a user reads (``aggregate`` turns per-sample statistics into one number, so
    that e.g. NMSE in dB is ``10 log10`` of a mean, not a mean of logs).
    """

    name: str = "task"
    metric_name: str = "metric"
    higher_is_better: bool = False
    group_title: str = "group"
    group_names: list[str] = []
    default_predictor: str = ""
    """Registered predictor name used when an environment is made without one."""
    env_id: str = ""
    """Gymnasium id registered for this task (``l2s/<Name>-v1``); empty: none."""

    def __init__(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.seed = int(seed)
        self.device = torch.device(device)
        self._eval_cache: dict[str, Batch] = {}

    # --- data -------------------------------------------------------------------------
    @abc.abstractmethod
    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A fresh training batch on ``self.device`` drawn with ``generator``."""

    @abc.abstractmethod
    def make_eval_set(self, split: str) -> Batch:
        """Build the fixed validation (``"val"``) or test (``"test"``) set, seeded.

        Draw it with ``self.generator(offset, device="cpu")`` and move it to ``self.device``:
        the same set on every device.
        """

    def eval_set(self, split: str) -> Batch:
        """The fixed, seeded ``"val"`` or ``"test"`` set (built once, then cached)."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if split not in self._eval_cache:
            self._eval_cache[split] = self.make_eval_set(split)
        return self._eval_cache[split]

    def fixed_data(self) -> dict[str, Tensor]:
        """Tensors fixed for the task's lifetime that a trained model depends on besides the
        evaluation sets (sparse recovery's sensing matrix ``A``); default: none. They enter
        ``fingerprint``."""
        return {}

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the task's data: the validation and test sets and ``fixed_data``.

        Checkpoints store it, so that a model is never loaded onto other data without a
        word (another seed, or a task whose data a library change altered). Computed once.
        """
        cached = getattr(self, "_fingerprint", None)
        if cached is not None:
            return cached
        digest = hashlib.sha256(f"l2s-gym task {self.name}".encode())
        named: list[tuple[str, Tensor]] = []
        for split in ("val", "test"):
            batch = self.eval_set(split)
            named += [(f"{split}.inputs.{k}", v) for k, v in sorted(batch.inputs.items())]
            named += [(f"{split}.targets", batch.targets), (f"{split}.groups", batch.groups)]
        named += [(f"fixed.{k}", v) for k, v in sorted(self.fixed_data().items())]
        for key, tensor in named:
            data = tensor.detach().cpu().contiguous()
            digest.update(f"{key} {data.dtype} {tuple(data.shape)}".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        self._fingerprint: str | None = digest.hexdigest()
        return self._fingerprint

    def stream_seed(self, offset: int) -> int:
        """The seed of random stream ``offset``: distinct streams never share instances."""
        return self.seed * 1_000_003 + offset

    def generator(self, offset: int, device: torch.device | str | None = None) -> torch.Generator:
        """A generator seeded with ``stream_seed(offset)``, on ``device`` (default: the task's).

        Fixed data (a task's matrices, its validation and test sets) are drawn with
        ``device="cpu"`` and then moved to the task's device, so that they are the same on
        every device (CPU and CUDA generators give different numbers for one seed);
        training streams may use the task's device.
        """
        gen = torch.Generator(device=self.device if device is None else device)
        gen.manual_seed(self.stream_seed(offset))
        return gen

    # --- scoring ----------------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        """Per-sample loss ``l(y, x_t)``, shape ``(B,)``, differentiable in ``prediction``."""

    @abc.abstractmethod
    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        """Per-sample statistic, shape ``(B,)``, that ``aggregate`` turns into the metric."""

    def aggregate(self, stats: Tensor) -> float:
        """The metric of a set of per-sample statistics (default: their mean)."""
        return float(stats.double().mean())

    def metric_interval(self, stats: Tensor) -> list[float] | None:
        """A 95% interval ``[low, high]`` for ``aggregate(stats)``, or ``None`` (default)."""
        return None

    # --- drawing ----------------------------------------------------------------------
    def render(self, prediction: Tensor, inputs: dict[str, Tensor]) -> np.ndarray | None:
        """An RGB picture ``(H, W, 3)`` uint8 of one instance's current read-out, or ``None``.

        ``prediction`` is the read-out after the current layer and ``inputs`` the instance's
        inputs, both for one instance (no batch dimension). It must not use the targets.
        The default, ``None``, means the task cannot draw: the environments then offer
        ``render_mode="ansi"`` only. A task that overrides it offers ``"rgb_array"`` too.
        """
        return None

    @classmethod
    def can_render(cls) -> bool:
        """Whether this task draws its read-outs (it overrides ``render``)."""
        return cls.render is not Task.render

"""Fixed task data (matrices, validation and test sets) are the same on every device."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from l2s_gym.task import Batch, Task
from l2s_gym.tasks.denoising import DenoisingConfig, DenoisingTask
from l2s_gym.tasks.meta_learning import MetaLearningConfig, MetaLearningTask
from l2s_gym.tasks.recognition import RecognitionConfig, RecognitionTask
from l2s_gym.tasks.sparse_recovery import SparseRecoveryConfig, SparseRecoveryTask
from l2s_gym.testing import ToyTask, ToyTaskConfig

TASKS: dict[str, Callable[[str], Task]] = {
    "sparse_recovery": lambda device: SparseRecoveryTask(
        SparseRecoveryConfig(m=64, n=128, p=0.05, val_size=100, test_size_per_snr=50), 3, device
    ),
    "denoising": lambda device: DenoisingTask(
        DenoisingConfig(patch_size=16, val_size=32, test_patches=8), 1, device
    ),
    "meta_learning": lambda device: MetaLearningTask(MetaLearningConfig(), 2, device),
    "recognition": lambda device: RecognitionTask(RecognitionConfig(), 0, device),
    "toy": lambda device: ToyTask(ToyTaskConfig(), 0, device),
}

# Sums of each eval-set tensor (inputs in key order, targets, groups) drawn with the CPU
# generator: the numbers behind the README's CPU tables. A change of how fixed data are
# drawn shows here first.
CPU_SUMS = {
    "sparse_recovery": ([-21.384863, -44.355397, 94.0], [-21.973199, -33.003976, 150.0]),
    "denoising": ([3538.312556, 3539.191918, 31.0], [3203.15244, 3213.891208, 80.0]),
    "toy": ([151.833334, 911.0, 137.0], [141.166668, 847.0, 113.0]),
}


def sums(batch: Batch) -> list[float]:
    tensors = [*batch.inputs.values(), batch.targets, batch.groups]
    return [round(float(t.double().sum()), 6) for t in tensors]


def fixed_data(task: Task) -> dict[str, torch.Tensor]:
    out = {}
    for split in ("val", "test"):
        batch = task.eval_set(split)
        out |= {f"{split}.{k}": v for k, v in batch.inputs.items()}
        out[f"{split}.targets"], out[f"{split}.groups"] = batch.targets, batch.groups
    return out | task.fixed_data()


@pytest.mark.parametrize("name", sorted(CPU_SUMS))
def test_cpu_eval_sets_are_the_recorded_ones(name: str) -> None:
    task = TASKS[name]("cpu")
    assert (sums(task.eval_set("val")), sums(task.eval_set("test"))) == CPU_SUMS[name]
    if name == "sparse_recovery":
        assert round(float(task.A.double().sum()), 6) == 12.120196


@pytest.mark.parametrize("name", sorted(TASKS))
def test_fixed_data_are_drawn_with_cpu_generators(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the task's device, fixed data ask for a CPU generator (the default, the
    # task's device, would give other numbers on CUDA).
    asked: list[torch.device | str | None] = []
    original = Task.generator

    def spy(self: Task, offset: int, device: torch.device | str | None = None) -> torch.Generator:
        asked.append(device)
        return original(self, offset, device)

    monkeypatch.setattr(Task, "generator", spy)
    task = TASKS[name]("cpu")
    task.eval_set("val"), task.eval_set("test")
    assert all(d is not None and torch.device(d).type == "cpu" for d in asked), asked
    if name != "recognition":  # recognition splits with numpy: no torch generator at all
        assert len(asked) >= 2


def test_generator_defaults_to_the_task_device_for_training_streams() -> None:
    task = TASKS["toy"]("cpu")
    assert task.generator(5).device == task.device
    assert task.generator(5, device="cpu").initial_seed() == task.stream_seed(5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(TASKS))
def test_fixed_data_are_the_same_on_cuda(name: str) -> None:
    on_cpu, on_cuda = fixed_data(TASKS[name]("cpu")), fixed_data(TASKS[name]("cuda"))
    assert on_cpu.keys() == on_cuda.keys()
    for key, value in on_cuda.items():
        assert value.device.type == "cuda", key
        assert torch.equal(value.cpu(), on_cpu[key]), key

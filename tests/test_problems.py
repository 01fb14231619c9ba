"""The problems of benchmarks/problems (the defaults suite's): each loads from its own
files as a user's would (``--import``), builds from its config, and its predictor passes
the library's checks. The frontier runs themselves are the suite's (docs/defaults.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from l2s_gym import registry, testing
from l2s_gym.build import make_predictor, make_task
from l2s_gym.config import load_config

HERE = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(HERE))
from defaults_suite import PROBLEMS  # noqa: E402


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_a_problem_builds_and_passes_the_predictor_checks(name: str) -> None:
    registry.import_module_or_file(str(HERE / "problems" / f"{name}.py"))
    cfg = load_config(HERE / "problems" / f"{name}.yaml")
    task = make_task(cfg.task, 0, "cpu")
    predictor = make_predictor(cfg.predictor, task, seed=0).eval()
    batch = task.train_batch(8, task.generator(0))
    with torch.no_grad():
        testing.check_full_depth(predictor, batch.inputs)
        testing.check_carried_state(predictor, batch.inputs)
        trace = predictor.trace(batch, task)
    assert trace.losses.shape == (8, predictor.num_layers)
    assert torch.isfinite(trace.losses).all() and torch.isfinite(trace.features).all()

"""The custom-predictor example (examples/custom_predictor.py) runs and its results make sense."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_predictor.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("custom_predictor_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    example = load_example()
    return example.run(tiny=True, runs_root=tmp_path_factory.mktemp("runs"), progress=False)


def row(results: dict, method_part: str) -> dict:
    matches = [r for r in results["rows"] if method_part in r["method"]]
    assert len(matches) == 1, [r["method"] for r in results["rows"]]
    return matches[0]


def test_example_registers_task_predictor_and_env() -> None:
    import gymnasium

    from l2s_gym import registry

    load_example()
    assert "least_squares" in registry.TASKS
    assert registry.PREDICTORS["gradient_descent"].task == "least_squares"
    assert "l2s/LeastSquares-v1" in gymnasium.registry


def test_learned_stop_rules_use_fewer_layers_where_the_oracle_does(results: dict) -> None:
    T = results["num_layers"]
    oracle = row(results, "oracle (label-using bound on")
    full = row(results, f"(T={T})")
    imitation = row(results, "(reverse KL)")
    reinforce = row(results, "(REINFORCE)")
    # Noise makes gradient descent semi-convergent: the oracle stops early on noisy instances.
    assert oracle["avg_layers"] < T - 1
    for learned in (imitation, reinforce):
        # Fewer layers than running them all, and a better answer: a stop rule that works.
        assert learned["avg_layers"] < T - 1
        assert learned["metric"] < full["metric"]
        # Nobody beats the label-using bound.
        assert oracle["metric"] <= learned["metric"] + 1e-9


def test_example_env_episode_through_gymnasium_make(results: dict) -> None:
    episode = results["env_episode"]
    assert episode["decisions"] == 3 and episode["t"] == 3  # the "stop at layer 3" rule
    # The stop reward is the loss at layer 3 in units of beta (the checkpoint's, 0.01).
    assert episode["reward"] == pytest.approx(-episode["loss"] / 0.01, rel=1e-6)


def test_table_lists_every_row(results: dict) -> None:
    table = load_example().format_table(results)
    assert table.count("\n") == len(results["rows"]) + 1
    assert "REINFORCE" in table and "reverse KL" in table

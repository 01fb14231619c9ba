"""The CleanRL-style REINFORCE example (examples/cleanrl_reinforce.py) runs end to end."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from conftest import TOY_CONFIG, write_config

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "cleanrl_reinforce.py"


def _load_script():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("cleanrl_reinforce", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cleanrl_reinforce_on_toy(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(tmp_path, TOY_CONFIG, "toy.yaml")
    script = _load_script()
    result = script.main(["--source", str(config), "--import", "--cost", "0.1",
                          "--num-envs", "16", "--num-steps", "4", "--num-iterations", "3",
                          "--eval-rounds", "1", "--runs-dir", str(tmp_path / "runs")])  # fmt: skip
    for name in ("learned (greedy)", "never stop", "stop at once"):
        assert math.isfinite(result[name])
    run_dir = Path(result["run_dir"])
    assert list(run_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"charts/episode_return", "charts/episode_layers", "charts/layer_evals",
            "losses/policy_gradient", "losses/entropy"} <= tags  # fmt: skip
    steps = [e.step for e in events.Scalars("charts/episode_return")]
    assert len(steps) == 3 and steps == sorted(steps) and steps[0] > 0  # global step on x

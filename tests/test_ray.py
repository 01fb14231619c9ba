"""The Ray Tune backend gives the same results as the local runner, and survives a failing trial."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray.tune")

from conftest import TOY_FRONTIER  # noqa: E402

from l2s_gym.compare import run_experiment  # noqa: E402
from l2s_gym.config import from_dict  # noqa: E402
from l2s_gym.ray_backend import RayRunner  # noqa: E402


def numbers(results: dict) -> list:
    rows = [(r["id"], r["metric"], r["avg_layers"]) for r in results["rows"]]
    curves = sorted(
        (k, tuple(v["metric"]), tuple(v["avg_layers"])) for k, v in results["frontiers"].items()
    )
    return [rows, curves, results["frontier_summary"], results["frontier_reference"]]


@pytest.fixture(scope="module")
def ray_runtime():
    import ray

    from l2s_gym import plugins

    plugins.IMPORTED.append("l2s_gym.testing")  # workers register the toy task too
    yield
    ray.shutdown()


def test_ray_frontier_equals_local_and_reports_a_failed_trial(
    tmp_path: Path, ray_runtime: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = from_dict({**yaml.safe_load(TOY_FRONTIER), "seeds": [0, 1]})
    _, local_run = run_experiment(
        cfg, tmp_path / "local", "frontier", progress=False, log=lambda *_: None
    )
    local = local_run.to_json()
    runner = RayRunner("auto", num_cpus=2, progress=False, log=lambda *_: None)
    ray_dir, remote_run = run_experiment(
        cfg, tmp_path / "ray", "frontier", progress=False, runner=runner, log=lambda *_: None
    )
    remote = remote_run.to_json()
    assert not remote.get("failed") and not local.get("failed")
    assert numbers(remote) == numbers(local)
    assert (ray_dir / "seed-1" / "reverse_kl" / "cost-1" / "done").is_file()

    # A trial that fails is retried once, then reported; the rest of the sweep completes.
    failing_cfg = replace(cfg, compare=replace(cfg.compare, learners=["reverse_kl", "failing"]))
    fail_dir, failing_run = run_experiment(
        failing_cfg, tmp_path / "fail", "frontier", progress=False, runner=runner,
        log=lambda *_: None,
    )  # fmt: skip
    failing = failing_run.to_json()
    keys = sorted(f"seed-{s}/failing/cost-{c}" for s in (0, 1) for c in (0, 1))
    assert sorted(f["key"] for f in failing["failed"]) == keys
    assert "the failing learner failed" in failing["failed"][0]["error"]
    trials = json.loads((fail_dir / "trials.json").read_text())["trials"]
    status = {t["key"]: t["status"] for t in trials}
    assert {k for k, v in status.items() if v == "failed"} == set(keys)
    assert sum(v == "done" for v in status.values()) == len(status) - len(keys)
    assert "the failing learner failed" in (fail_dir / "results.md").read_text()
    attempts = (fail_dir / "failing_attempts.log").read_text().split()
    assert sorted(attempts) == sorted(keys * 2)  # each tried, retried once, reported

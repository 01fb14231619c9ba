"""l2s_gym.predict (predict_run, format_summary, `l2s predict`) and the early-exit speed-up benchmark."""

from __future__ import annotations

import pytest
import torch
from runner_cases import random_policy

from l2s_gym.rules import ReadoutRule


# --- l2s predict: a run folder in the layout of l2s compare -------------------------------
def write_run_folder(root, cfg_path, learner: str = "reverse_kl", cost: float = 0.5):  # noqa: ANN001, ANN201
    """A run folder as ``l2s compare`` writes it: the oracle predictor of seed 0 and one
    policy checkpoint with its read-out, both from the builders, saved as the trainers do."""
    from l2s_gym import build
    from l2s_gym.config import load_config
    from l2s_gym.runs import save_checkpoint

    cfg = load_config(cfg_path)
    task = build.make_task(cfg.task, cfg.seed, "cpu")
    predictor = build.make_predictor(cfg.predictor, task, seed=cfg.seed)
    run = root / "toy_run" / "20260101-000000"
    seed_dir = run / "seed-0"
    save_checkpoint(
        seed_dir / "stage1" / "predictor-oracle" / "best.pt",
        {"kind": "predictor", "state_dict": predictor.state_dict(), "config": cfg.to_dict()},
    )
    with torch.no_grad():
        trace = predictor.trace(task.eval_set("val"), task)
    policy = random_policy(predictor, trace.features, 4, build.make_policy(cfg, predictor))
    save_checkpoint(
        seed_dir / learner / f"cost-{cost:g}" / "best.pt",
        {
            "kind": "policy",
            "learner": learner,
            "state_dict": policy.state_dict(),
            "readout": ReadoutRule("quantile", 0.5).to_dict(),
            "cost": cost,
            "config": cfg.to_dict(),
        },
    )
    return cfg, run, predictor, policy


@pytest.fixture
def toy_run(tmp_path, toy_config):  # noqa: ANN001, ANN201
    return write_run_folder(tmp_path, toy_config)


def test_predict_run_matches_the_trace_based_evaluation(toy_run, tmp_path) -> None:  # noqa: ANN001
    from l2s_gym.predict import format_summary, predict_run

    cfg, run, predictor, policy = toy_run
    out = tmp_path / "out" / "pred.pt"
    summary = predict_run(cfg, run, "reverse_kl", batch_size=100, out=out)
    assert summary["cost"] == 0.5 and summary["readout"] == {"kind": "quantile", "value": 0.5}
    assert summary["instances"] == 256 and summary["stop_agreement"] == 1.0
    assert summary["metric"] == pytest.approx(summary["trace_metric"], rel=1e-6)
    assert summary["avg_layers"] == pytest.approx(summary["trace_avg_layers"])
    assert summary["runner_s"] > 0 and summary["full_depth_s"] > 0
    assert summary["ideal_speedup"] == pytest.approx(6 / summary["avg_layers"])
    saved = torch.load(out)
    test = predictor.trace_eval(predictor_task(cfg).eval_set("test"), predictor_task(cfg))
    stop = ReadoutRule("quantile", 0.5).stop(policy.trace_logits(test.features))
    assert torch.equal(saved["stop"], stop) and torch.equal(saved["layers"], stop + 1)
    assert saved["predictions"].shape == (256,)
    import json

    assert json.loads(out.with_suffix(".json").read_text())["avg_layers"] == summary["avg_layers"]
    assert "stop layers agree on 100.0%" in format_summary(summary)


def predictor_task(cfg):  # noqa: ANN001, ANN201
    from l2s_gym import build

    return build.make_task(cfg.task, cfg.seed, "cpu")


def test_predict_command(toy_run, toy_config, tmp_path, capsys) -> None:  # noqa: ANN001
    from l2s_gym.cli import main

    _, run, _, _ = toy_run
    base = ["predict", str(toy_config), "--import", "l2s_gym.testing", "--run", str(run)]
    out = tmp_path / "p.pt"
    assert main([*base, "--learner", "reverse_kl", "--out", str(out), "--batch-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "measured speed-up" in printed and out.is_file() and out.with_suffix(".json").is_file()
    # A look-ahead: the same stops (the summary's agreement with the trace), said in the output.
    assert main([*base, "--learner", "reverse_kl", "--lookahead", "3"]) == 0
    printed = capsys.readouterr().out
    assert "look-ahead 3" in printed and "agree on 100.0%" in printed
    assert main([*base, "--learner", "reverse_kl", "--lookahead", "0"]) == 2
    assert "--lookahead" in capsys.readouterr().err
    # A user's batch: only inputs, no metric.
    inputs = tmp_path / "batch.pt"
    torch.save({"hint": torch.rand(10, 1)}, inputs)
    assert main([*base, "--learner", "reverse_kl", "--input", str(inputs)]) == 0
    assert "10 instances" in capsys.readouterr().out
    # Wrong learner, cost or input: one line, exit 2, naming what exists.
    assert main([*base, "--learner", "ppo"]) == 2
    assert "reverse_kl" in capsys.readouterr().err
    assert main([*base, "--learner", "reverse_kl", "--cost", "3"]) == 2
    assert "cost-0.5" in capsys.readouterr().err
    torch.save({"y": torch.rand(10, 1)}, inputs)
    assert main([*base, "--learner", "reverse_kl", "--input", str(inputs)]) == 2
    assert "hint" in capsys.readouterr().err


def test_predict_on_a_real_family(tmp_path, sparse_tiny_config) -> None:  # noqa: ANN001
    """LISTA through the same path (a run folder of the sparse tiny config)."""
    from l2s_gym.predict import predict_run

    cfg, run, _, _ = write_run_folder(tmp_path, sparse_tiny_config)
    summary = predict_run(cfg, run, "reverse_kl", batch_size=50)
    assert summary["stop_agreement"] == 1.0
    assert summary["metric"] == pytest.approx(summary["trace_metric"], abs=1e-4)
    assert 1 <= summary["avg_layers"] < summary["num_layers"]


def test_speedup_benchmark_runs_and_writes_its_rows(tmp_path, toy_config) -> None:  # noqa: ANN001
    """benchmarks/early_exit_speedup.py end to end, on the toy config (seconds)."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "early_exit_speedup.py"
    spec = importlib.util.spec_from_file_location("early_exit_speedup", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up by name
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.json"
    argv = ["--out", str(out), "--quick", "--threads", "1", "--configs", str(toy_config)]
    argv += ["--batch-sizes", "1", "16", "--instances-b1", "3", "--import", "l2s_gym.testing"]
    argv += ["--lookahead-batches", "1", "16"]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["threads"] == 1 and result["device"] == "cpu"
    rows = result["rows"]
    assert {r["batch"] for r in rows} == {1, 16}
    for row in rows:
        for key in ("family", "batch", "cost", "avg_layers", "ideal_speedup", "measured_speedup"):
            assert key in row
        assert 1 <= row["avg_layers"] <= 6
        assert row["ideal_speedup"] == pytest.approx(6 / row["avg_layers"], rel=1e-3)
        assert row["measured_speedup"] > 0 and row["runner_parts_ms"]["layer"] > 0
    # Look-aheads 1, 4 and T=6 at both batch sizes (the same stops: the script checks).
    assert {(r["batch"], r["lookahead"]) for r in rows} == {
        (b, k) for b in (1, 16) for k in (1, 4, 6)
    }
    # Costs spread the depth: the highest price stops earliest.
    assert result["complete"] is True
    costs = result["families"][str(toy_config)]["costs"]
    assert costs == sorted(costs, reverse=True) and len(costs) >= 2
    # --set reaches every family's config: a 4-layer toy.
    argv = ["--out", str(out), "--quick", "--threads", "1", "--configs", str(toy_config)]
    argv += ["--batch-sizes", "16", "--lookahead", "--import", "l2s_gym.testing"]
    argv += ["--set", "task.num_layers=4", "--set", "predictor.num_layers=4"]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(r["num_layers"] == 4 and r["avg_layers"] <= 4 for r in rows)

"""l2s_gym.predict (predict_run, format_summary, `l2s predict`) and the early-exit speed-up benchmark."""

from __future__ import annotations

import json

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
    with torch.random.fork_rng(devices=[]):  # the same body weights whatever ran before
        torch.manual_seed(4)
        policy = random_policy(predictor, trace.features, 4, build.make_policy(cfg, predictor))
    with torch.no_grad():
        # random_policy puts a logit at exactly 0 (pi = 1/2), which the quantile-0.5 rule
        # meets as an exact tie; the toy's features repeat, so many instances would sit on
        # it and float rounding would decide their stops. Off the boundary:
        policy.head.bias.add_(0.01)
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
    summary = predict_run(cfg, run, "reverse_kl", batch_size=100, out=out, lookahead=1)
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
    assert json.loads(out.with_suffix(".json").read_text())["avg_layers"] == summary["avg_layers"]
    assert "stop layers agree on 100.0%" in format_summary(summary)


def test_predict_auto_tunes_on_the_first_batch_stores_and_reuses(toy_run, tmp_path) -> None:  # noqa: ANN001
    """The default look-ahead: tuned on the first batch, stored next to the policy
    checkpoint and reused on the same device and batch size; said in the summary."""
    from l2s_gym.predict import TUNE_FILE, format_summary, predict_run

    cfg, run, predictor, _ = toy_run
    T = predictor.num_layers
    stored = run / "seed-0" / "reverse_kl" / "cost-0.5" / TUNE_FILE
    out = tmp_path / "auto.pt"
    first = predict_run(cfg, run, "reverse_kl", batch_size=100, out=out)
    assert first["lookahead_mode"] == "auto" and first["tune_source"] == "tuned"
    assert first["tune_file"] == str(stored) and stored.is_file()
    k = first["lookahead"]
    assert 1 <= k <= T and first["tune"]["lookahead"] == k and first["tune"]["batch_size"] == 100
    assert first["plain"] == (k == T)
    if k < T:  # early exit at any k stops where the trace says
        assert first["stop_agreement"] == 1.0
    else:  # the plain model: every instance at the last layer
        assert torch.equal(torch.load(out)["stop"], torch.full((256,), T - 1))
    text = format_summary(first)
    assert "look-ahead auto: k=" in text and "tuned (" in text
    # Reused: same device, batch size and policy.
    again = predict_run(cfg, run, "reverse_kl", batch_size=100)
    assert again["tune_source"] == "stored" and again["lookahead"] == k
    # Another batch size: tuned again, both kept; retune: tuned again.
    other = predict_run(cfg, run, "reverse_kl", batch_size=7)
    assert other["tune_source"] == "tuned" and other["tune"]["batch_size"] == 7
    assert len(json.loads(stored.read_text())["entries"]) == 2
    assert predict_run(cfg, run, "reverse_kl", batch_size=7, retune=True)["tune_source"] == "tuned"
    assert len(json.loads(stored.read_text())["entries"]) == 2


@pytest.mark.parametrize("k", [2, "T"])
def test_predict_adopts_a_stored_choice(toy_run, k) -> None:  # noqa: ANN001
    """A stored choice is used as it is: an early-exit k (stops as the trace's) or the plain
    model (full depth, the policy not asked, said so)."""
    from pathlib import Path

    from l2s_gym.predict import TUNE_FILE, _tune_key, format_summary, predict_run, store_tune
    from l2s_gym.rules import ReadoutRule
    from l2s_gym.runner import StopRunner, TuneResult

    cfg, run, predictor, policy = toy_run
    T = predictor.num_layers
    k = T if k == "T" else k
    policy_path = Path(run) / "seed-0" / "reverse_kl" / "cost-0.5" / "best.pt"
    runner = StopRunner(predictor, policy, ReadoutRule("quantile", 0.5))
    measured = {1: 2e-3, k: 1e-3, T: 1.5e-3}
    relative = {j: s / measured[T] for j, s in measured.items()}
    fake = TuneResult(k, T, 64, "", 64, 3.0, 1e-5, 1e-4, {1: 2e-3}, measured, relative)
    store_tune(policy_path.parent / TUNE_FILE, _tune_key(runner, policy_path, 64), fake)
    summary = predict_run(cfg, run, "reverse_kl", batch_size=64)
    assert summary["tune_source"] == "stored" and summary["lookahead"] == k
    text = format_summary(summary)
    if k < T:
        assert summary["stop_agreement"] == 1.0 and not summary["plain"]
        assert "look-ahead auto: k=2," in text
    else:
        assert summary["plain"] and summary["avg_layers"] == T
        assert "k=T=6, the plain model" in text and "the policy was not asked" in text


def test_parse_lookahead() -> None:
    from l2s_gym.config import ConfigError
    from l2s_gym.predict import parse_lookahead

    assert parse_lookahead("auto") == "auto" and parse_lookahead("AUTO") == "auto"
    assert parse_lookahead("3") == 3 and parse_lookahead(4) == 4
    for bad in ("0", 0, -2, "x", "1.5", 1.5, True):
        with pytest.raises(ConfigError, match="--lookahead"):
            parse_lookahead(bad)


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
    # The risk-calibrated read-out, its promise printed; a bad epsilon is one line.
    assert main([*base, "--learner", "reverse_kl", "--lookahead", "1", "--risk", "0.2"]) == 0
    assert "guarantee: " in capsys.readouterr().out
    assert main([*base, "--learner", "reverse_kl", "--risk", "-1"]) == 2
    assert "--risk" in capsys.readouterr().err
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
    summary = predict_run(cfg, run, "reverse_kl", batch_size=50, lookahead=1)
    assert summary["stop_agreement"] == 1.0
    assert summary["metric"] == pytest.approx(summary["trace_metric"], abs=1e-4)
    assert 1 <= summary["avg_layers"] < summary["num_layers"]


def benchmark_script(name: str):  # noqa: ANN201
    """``benchmarks/<name>.py`` as a module (a script, not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def speedup_benchmark():  # noqa: ANN201
    """``benchmarks/early_exit_speedup.py`` as a module."""
    return benchmark_script("early_exit_speedup")


def test_speedup_benchmark_runs_and_writes_its_rows(tmp_path, toy_config) -> None:  # noqa: ANN001
    """benchmarks/early_exit_speedup.py end to end, on the toy config (seconds)."""
    bench = speedup_benchmark()
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
        lo, hi = row["measured_speedup_rounds"]
        assert lo <= row["measured_speedup_paired"] <= hi
    # Look-aheads 1, 4 and T=6 (the plain model) at both batch sizes, and the tuned runner
    # (the same stops, or the last layer for the plain model: the script checks).
    assert {(r["batch"], r["lookahead"]) for r in rows} == {
        (b, k) for b in (1, 16) for k in (1, 4, 6, "auto")
    }
    for row in rows:
        if row["lookahead"] == "auto":
            assert 1 <= row["k"] <= 6 and row["tune"]["lookahead"] == row["k"]
            assert row["tune"]["batch_size"] == row["batch"]
        else:
            assert row["k"] == row["lookahead"]
        if row["k"] == 6:
            assert row["avg_layers"] == 6
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
    assert "tuned k" in bench.tuned_table(rows)


def test_speedup_benchmark_times_a_run_folder(tmp_path, toy_config) -> None:  # noqa: ANN001
    """--runs: a trained run folder's policies (here one price), no training; the tuned
    runner next to k = 1; --try-compile is left to the real runs (it compiles)."""
    import shutil

    bench = speedup_benchmark()
    _, run, _, _ = write_run_folder(tmp_path, toy_config)
    shutil.copy(toy_config, run / "config.yaml")
    out = tmp_path / "runs.json"
    argv = ["--out", str(out), "--runs", str(run), "--threads", "1", "--repeats", "1"]
    argv += ["--batch-sizes", "1", "8", "--instances-b1", "3", "--import", "l2s_gym.testing"]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["complete"] and list(result["families"]) == ["toy_run"]
    rows = result["rows"]
    assert {r["cost"] for r in rows} == {0.5, "never"}
    assert {(r["batch"], r["lookahead"]) for r in rows} >= {(1, 1), (1, "auto"), (8, "auto")}
    assert all(r["family"] == "toy_run" for r in rows)


def test_example_rows_are_a_fixed_random_draw_not_the_head() -> None:
    from l2s_gym.runner import example_rows

    inputs = {"x": torch.arange(100).float().unsqueeze(1), "i": torch.arange(100)}
    a, b = example_rows(inputs, 32), example_rows(inputs, 32)
    assert torch.equal(a["i"], b["i"]) and torch.equal(a["x"][:, 0].long(), a["i"])
    assert len(set(a["i"].tolist())) == 32 and not torch.equal(a["i"], torch.arange(32))
    assert a["i"].max() > 50  # from the whole set, not the first rows
    many = example_rows(inputs, 250)["i"]  # fewer rows than asked: each repeated in turn
    assert torch.equal(many[:100].sort().values, torch.arange(100))
    assert torch.equal(many[100:200], many[:100])


def test_predict_with_risk_reads_out_by_the_calibrated_rule(toy_run) -> None:  # noqa: ANN001
    from l2s_gym.build import make_task
    from l2s_gym.config import ConfigError
    from l2s_gym.evaluation import stop_logits
    from l2s_gym.predict import format_summary, parse_risk, predict_run
    from l2s_gym.risk import calibrate_risk, default_risk

    cfg, run, predictor, policy = toy_run
    summary = predict_run(cfg, run, "reverse_kl", batch_size=100, lookahead=1, risk=0.2)
    task = make_task(cfg.task, 0, "cpu")
    val = predictor.trace_eval(task.eval_set("val"), task)
    stated = default_risk(task)
    expected = calibrate_risk(
        val, stop_logits(policy, val), task, 0.2, stated.delta, loss=stated.loss
    )
    assert summary["readout"] == expected.rule.to_dict() != {"kind": "quantile", "value": 0.5}
    assert summary["risk"]["epsilon"] == 0.2 and summary["risk"]["delta"] == stated.delta
    assert summary["stop_agreement"] == 1.0  # the runner's stops are the calibrated rule's
    assert "guarantee: " in format_summary(summary) and "<= 0.2" in format_summary(summary)
    default = predict_run(cfg, run, "reverse_kl", batch_size=100, lookahead=1, risk="default")
    assert default["risk"]["epsilon"] == stated.epsilon
    assert parse_risk(None) is None and parse_risk("0.05") == 0.05
    for bad in ("0", "-1", "x", "nan"):
        with pytest.raises(ConfigError, match="--risk"):
            parse_risk(bad)
    with pytest.raises(ConfigError, match="--delta"):
        predict_run(cfg, run, "reverse_kl", lookahead=1, risk=0.2, delta=1.5)
    # The promise about the served set: calibrated for that many instances.
    served = predict_run(cfg, run, "reverse_kl", batch_size=100, lookahead=1, risk=0.2, risk_set=True)  # fmt: skip
    n = served["instances"]
    on_set = calibrate_risk(
        val, stop_logits(policy, val), task, 0.2, stated.delta, loss=stated.loss, test_size=n
    )
    assert served["risk"]["test_size"] == n and served["readout"] == on_set.rule.to_dict()
    assert f"set of {n} fresh instances" in format_summary(served)
    with pytest.raises(ConfigError, match="--risk-set"):
        predict_run(cfg, run, "reverse_kl", lookahead=1, risk_set=True)


def test_speedup_benchmark_samples_last_min_sample_and_are_per_pass(monkeypatch) -> None:  # noqa: ANN001
    """``timed_rounds`` with ``min_sample_s``: each sample runs a function as often as its
    warm-up call needs to last that long and reports the time of one call (a fake clock:
    every call of a function takes 1 ms)."""
    bench = speedup_benchmark()
    calls = {"a": 0, "b": 0}

    def fake_timed(fn, device):  # noqa: ANN001, ANN202
        before = sum(calls.values())
        fn()
        took = (sum(calls.values()) - before) * 1e-3
        return took, took

    monkeypatch.setattr(bench, "timed", fake_timed)
    fns = {k: (lambda k=k: calls.__setitem__(k, calls[k] + 1)) for k in calls}
    samples, cpu = bench.timed_rounds(fns, 3, True, torch.device("cpu"), min_sample_s=0.0105)
    assert calls == {"a": 1 + 3 * 11, "b": 1 + 3 * 11}  # warm-up once, then 11 calls a sample
    for key in calls:
        assert samples[key] == pytest.approx([1e-3] * 3)
        assert cpu[key] == pytest.approx([1e-3] * 3)
    samples, _ = bench.timed_rounds(fns, 2, False, torch.device("cpu"), min_sample_s=1.0)
    assert samples["a"] == pytest.approx([1e-3, 1e-3])  # no warm-up: one call a sample


def test_speedup_benchmark_rows_carry_the_spread_of_their_rounds() -> None:
    """``measured_speedup_rounds``: the lowest and highest within-round ratio (full over
    runner); the tuned table prints them beside the paired median where there are rounds."""
    bench = speedup_benchmark()
    samples = {"full": [2.0, 4.0, 3.0], "k": [1.0, 1.0, 2.0]}  # ratios 2, 4, 1.5
    fields = bench.timing_fields(samples, samples, "k", per=1)
    assert fields["measured_speedup_paired"] == 2.0
    assert fields["measured_speedup_rounds"] == [1.5, 4.0]
    assert bench._rounds({"measured_speedup_rounds": [1.5, 4.0], "repeats": 3}) == " (1.50-4.00)"
    assert bench._rounds({"measured_speedup_rounds": [2.0, 2.0], "repeats": 1}) == ""
    assert bench._rounds({"measured_speedup": 2.0}) == ""  # a row of an earlier run
    note = bench.single_sample_note([("denoising", 1024)])
    assert "denoising at batch 1024" in note and "--repeats" in note


def test_runner_overhead_script_times_the_plain_path(tmp_path, toy_config) -> None:  # noqa: ANN001
    """benchmarks/runner_overhead.py on a toy run folder: three timings, the overhead and
    the paired ratio written out (the figures are the machine's; only their shape here)."""
    import shutil

    script = benchmark_script("runner_overhead")
    _, run, _, _ = write_run_folder(tmp_path, toy_config)
    shutil.copy(toy_config, run / "config.yaml")
    out = tmp_path / "overhead.json"
    argv = [str(run), "--calls", "5", "--instances", "4", "--no-progress"]
    argv += ["--import", "l2s_gym.testing"]
    assert script.main([*argv, "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert set(figures["us_per_instance"]) == {"direct", "full", "plain"}
    assert all(v > 0 for v in figures["us_per_instance"].values())
    assert figures["paired_full_over_plain"] > 0 and figures["instances"] == 4
    with pytest.raises(SystemExit):
        script.main([str(run), "--calls", "0"])

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from l2s_gym.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "l2s_gym.cli", *args, "--import", "l2s_gym.testing"],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--set", "stage1.stepz=3"], "stage1.stepz: unknown key"),
        (["--set", "beta=0"], "beta: must be > 0"),
        (["--set", "task.num_layers=0"], "task.num_layers: must be > 0"),
    ],
)
def test_bad_config_is_one_line_exit_2(toy_config, extra, needle):
    proc = run_cli("compare", str(toy_config), *extra)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_checkpoint_names_the_file(toy_config, tmp_path, capsys):
    missing = tmp_path / "nope" / "best.pt"
    code = main(["train-policy", str(toy_config), "--predictor", str(missing)])
    assert code == 2
    assert str(missing) in capsys.readouterr().err


def test_stages_alone_chain_through_checkpoints(toy_config, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main(["train-predictor", str(toy_config), "--runs", runs, "--no-progress"]) == 0
    predictor = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert predictor.is_file()
    assert (
        main(
            [
                "train-policy",
                str(toy_config),
                "--predictor",
                str(predictor),
                "--runs",
                runs,
                "--no-progress",
                "--set",
                "imitation.steps=20",
            ]
        )
        == 0
    )
    policy = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert policy.is_file()
    assert (
        main(
            [
                "evaluate",
                str(toy_config),
                "--predictor",
                str(predictor),
                "--policy",
                str(policy),
                "--runs",
                runs,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Toy-stop (reverse KL)" in out and "| Toy (T=6) |" in out


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _numbers(results: dict) -> list:
    """Every row's metric and layers, every frontier point: what a rerun must reproduce."""
    rows = [(r["id"], r["metric"], r["avg_layers"]) for r in results["rows"]]
    curves = sorted((k, tuple(v["metric"])) for k, v in results.get("frontiers", {}).items())
    return [rows, curves]


def test_compare_end_to_end_deterministic_and_never_overwrites(toy_config, tmp_path):
    runs = tmp_path / "runs"
    folders = []
    for _ in range(2):
        proc = run_cli("compare", str(toy_config), "--runs", str(runs), "--no-progress")
        assert proc.returncode == 0, proc.stderr
        run_dir = Path(proc.stdout.strip().splitlines()[-1])
        assert run_dir.parent == runs / "toy_run"
        folders.append(run_dir)
        for f in (
            "results.md",
            "results.json",
            "metric_vs_layers.png",
            "learning_curves.png",
            "config.yaml",
            "trials.json",
            "seed-0/reverse_kl/cost-0/best.pt",
            "seed-0/stage1/predictor-oracle/best.pt",
            "seed-0/stage1/predictor-fixed/best.pt",
        ):
            assert (run_dir / f).is_file(), f
    # Two identical commands: two complete, separate run folders; latest is the second.
    a_dir, b_dir = folders
    assert a_dir != b_dir
    assert (runs / "toy_run" / "latest").resolve() == b_dir.resolve()
    for run_dir in folders:
        for tb in run_dir.rglob("tb"):
            events = list(tb.glob("events.out.tfevents.*"))
            assert len(events) <= 1, f"{tb} holds the event files of more than one run"
    a, b = _results(a_dir), _results(b_dir)
    assert _numbers(a) == _numbers(b)
    assert a["metric"] == "toy loss" and a["higher_is_better"] is False
    assert a["experiment"] == "toy_run" and a["num_layers"] == 6
    rows = {r["id"]: r for r in a["rows"]}
    fixed, oracle, learned = rows["fixed_T"], rows["oracle"], rows["learner:reverse_kl"]
    # The toy's best layer is visible in the features: imitation reaches the oracle's loss.
    assert oracle["metric"] < 1e-3 * fixed["metric"]
    assert learned["metric"] <= oracle["metric"] + 1e-3 * fixed["metric"]
    assert abs(learned["avg_layers"] - oracle["avg_layers"]) < 0.05
    lo, hi = learned["ci95"]
    assert lo <= learned["metric"] <= hi


def test_resume_after_sigkill_in_stage_2_gives_the_same_results(toy_config, tmp_path):
    import os
    import signal
    import time

    args = ["--set", "imitation.steps=500", "--set", "imitation.val_every=25"]
    ref = run_cli(
        "compare", str(toy_config), "--runs", str(tmp_path / "ref"), "--no-progress", *args
    )
    assert ref.returncode == 0, ref.stderr
    expected = _results(Path(ref.stdout.strip().splitlines()[-1]))

    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "l2s_gym.cli", "compare", str(toy_config), "--runs", str(runs),
           "--no-progress", "--import", "l2s_gym.testing", *args]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    learner = None
    deadline = time.time() + 60
    while time.time() < deadline:
        # Stage 2 has begun: the first learner has written a checkpoint and is not done.
        hits = [p.parent for p in runs.glob("toy_run/*/seed-0/*/cost-0/best.pt")]
        if hits and not (hits[0] / "done").exists():
            learner = hits[0]
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert learner is not None, "stage 2 never started"
    assert not (learner / "done").exists()
    stage1_marker = learner.parent.parent / "stage1" / "done"
    stamp = stage1_marker.stat().st_mtime

    resumed = run_cli(
        "compare",
        str(toy_config),
        "--runs",
        str(runs),
        "--no-progress",
        "--resume",
        "latest",
        *args,
    )
    assert resumed.returncode == 0, resumed.stderr
    run_dir = Path(resumed.stdout.strip().splitlines()[-1])
    assert run_dir.resolve() == learner.parent.parent.parent.resolve()
    assert stage1_marker.stat().st_mtime == stamp  # stage 1 was not run again
    assert _numbers(_results(run_dir)) == _numbers(expected)


def test_resume_refuses_a_different_config(toy_config, tmp_path):
    runs = tmp_path / "runs"
    first = run_cli("compare", str(toy_config), "--runs", str(runs), "--no-progress",
                    "--set", "imitation.steps=5")  # fmt: skip
    assert first.returncode == 0, first.stderr
    proc = run_cli("compare", str(toy_config), "--runs", str(runs), "--no-progress",
                   "--resume", "latest", "--set", "beta=0.07")  # fmt: skip
    assert proc.returncode == 2
    assert "differs from the run's at beta" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_resume_without_seeds_keeps_the_runs_seeds(toy_config, tmp_path):
    runs = tmp_path / "runs"
    args = ["compare", str(toy_config), "--runs", str(runs), "--no-progress",
            "--set", "imitation.steps=5", "--set", "compare.learners=[reverse_kl]"]  # fmt: skip
    first = run_cli(*args, "--seeds", "0", "1")
    assert first.returncode == 0, first.stderr
    run_dir = Path(first.stdout.strip().splitlines()[-1])
    again = run_cli(*args, "--resume", "latest")
    assert again.returncode == 0, again.stderr
    assert "seeds 0, 1" in again.stdout
    assert _results(run_dir)["seeds"] == [0, 1]


def test_resume_reuses_trials_finished_before_a_config_key_existed(toy_config, tmp_path):
    """A ``done`` marker written before a key was added to the schema (here: without the
    stage-1 continuation's two keys, at their defaults) still counts as finished; a marker
    whose recorded value differs from the config's is trained again."""
    runs = tmp_path / "runs"
    args = ["compare", str(toy_config), "--runs", str(runs), "--no-progress",
            "--set", "imitation.steps=5", "--set", "compare.learners=[reverse_kl]"]  # fmt: skip
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    run_dir = Path(first.stdout.strip().splitlines()[-1])
    markers = sorted(run_dir.rglob("done"))
    assert len(markers) == 2  # stage 1 and reverse KL
    for marker in markers:
        saved = json.loads(marker.read_text())
        for key in ("stage1.beta_anneal_from", "stage1.anneal_fraction"):
            del saved["config"][key]
        if "reverse_kl" in str(marker):
            saved["config"]["imitation.lr"] = 0.5  # a value the config does not have
        marker.write_text(json.dumps(saved))
    again = run_cli(*args, "--resume", "latest")
    assert again.returncode == 0, again.stderr
    status = {
        t["key"]: t["status"] for t in json.loads((run_dir / "trials.json").read_text())["trials"]
    }
    assert status == {"seed-0/stage1": "reused", "seed-0/reverse_kl/cost-0": "done"}


def test_local_runner_retries_a_failing_trial_once_then_reports_it(toy_config, tmp_path):
    proc = run_cli("compare", str(toy_config), "--runs", str(tmp_path), "--no-progress",
                   "--set", "imitation.steps=20", "--set", "compare.learners=[reverse_kl, failing]")  # fmt: skip
    assert proc.returncode == 1
    assert "trial seed-0/failing/cost-0 failed: RuntimeError: the failing learner" in proc.stderr
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert (run_dir / "failing_attempts.log").read_text().split() == ["seed-0/failing/cost-0"] * 2
    results = _results(run_dir)
    assert [f["key"] for f in results["failed"]] == ["seed-0/failing/cost-0"]
    assert "learner:reverse_kl" in {r["id"] for r in results["rows"]}  # the rest completed

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
        timeout=120,
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


def test_compare_end_to_end_and_deterministic(toy_config, tmp_path):
    outs = []
    for name in ("a", "b"):
        proc = run_cli("compare", str(toy_config), "--runs", str(tmp_path / name), "--no-progress")
        assert proc.returncode == 0, proc.stderr
        exp = Path(proc.stdout.strip().splitlines()[-1])
        assert exp == tmp_path / name / "toy_run"
        outs.append(json.loads((exp / "results.json").read_text()))
        for f in (
            "results.md",
            "metric_vs_layers.png",
            "learning_curves.png",
            "config.yaml",
            "reverse_kl/best.pt",
            "predictor-oracle/best.pt",
            "predictor-fixed/best.pt",
        ):
            assert (exp / f).is_file(), f
        assert list((exp / "reverse_kl" / "tb").glob("events.out.tfevents.*"))
    a, b = outs
    assert [r["metric"] for r in a["rows"]] == [r["metric"] for r in b["rows"]]
    assert a["metric"] == "toy loss" and a["higher_is_better"] is False
    rows = {r["method"]: r for r in a["rows"]}
    for r in a["rows"]:
        assert {"method", "metric", "avg_layers", "groups"} <= set(r)
    fixed, oracle = rows["Toy (T=6)"], rows["Toy-stop oracle (label-using bound)"]
    learned = rows["Toy-stop (reverse KL)"]
    # The toy's best layer is visible in the features: imitation must get close to the oracle.
    assert oracle["metric"] < 1e-3 * fixed["metric"]
    assert learned["metric"] < 0.25 * fixed["metric"]
    assert learned["avg_layers"] < 5.0

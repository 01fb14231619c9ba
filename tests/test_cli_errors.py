"""The command line's error paths: one line ``l2s: error: ...``, exit 2, no traceback, no run
folder (divergence: exit 1). In-process through ``l2s_gym.cli.main`` (a subprocess costs
seconds; ``main`` is what the ``l2s`` script calls)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TOY_CONFIG, write_config

from l2s_gym import __version__
from l2s_gym.cli import build_parser, main


class RunsCode:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.target}",))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("l2s: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A toy config, its trained predictor and a policy trained on it."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_config(folder, TOY_CONFIG, "toy.yaml")
    runs = str(folder / "runs")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train-predictor", str(config), "--runs", runs, "--no-progress"]) == 0
    # (resolved now: ``latest`` moves on to the next run)
    predictor = next((folder / "runs").glob("toy_run/*/predictor-oracle/best.pt")).resolve()
    args = ["train-policy", str(config), "--predictor", str(predictor), "--runs", runs,
            "--no-progress", "--set", "imitation.steps=20", "--set", "imitation.val_every=10"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    policy = next((folder / "runs").glob("toy_run/*/reverse_kl/best.pt")).resolve()
    return {"config": config, "predictor": predictor, "policy": policy, "folder": folder}


# --- global options ---------------------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"l2s {__version__}"


def test_help_texts_show_no_markup():
    parser = build_parser()
    texts = [parser.description or ""]
    for action in parser._actions:
        texts.append(action.help or "")
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                texts += [sub.description or ""] + [a.help or "" for a in sub._actions]
            texts += [a.help or "" for a in action._choices_actions]
    assert texts and not [t for t in texts if "``" in t or "`" in t]


@pytest.mark.parametrize("where", ["global", "command"])
def test_threads_option_sets_torchs_threads_before_any_work(trained, tmp_path, capsys, where):
    before = torch.get_num_threads()
    missing = str(tmp_path / "missing.pt")
    cmd = ["evaluate", str(trained["config"]), "--predictor", missing]
    argv = ["--threads", "2", *cmd] if where == "global" else [*cmd, "--threads", "2"]
    try:
        assert main(argv) == 2  # the config was read (threads set), then the file is missing
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert "not found" in one_error_line(capsys)


def test_threads_config_key(trained, tmp_path, capsys):
    before = torch.get_num_threads()
    cmd = ["evaluate", str(trained["config"]), "--predictor", str(tmp_path / "missing.pt")]
    try:
        assert main([*cmd, "--set", "threads=3"]) == 2
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    one_error_line(capsys)


# --- config errors: one line, exit 2, no run folder ---------------------------------------------


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("beta=.nan", "beta: expected a finite number"),
        ("beta=.inf", "beta: expected a finite number"),
        ("stage1.lr=.nan", "stage1.lr: expected a finite number"),
        ("compare.learners=[]", "compare.learners: must list at least one learner"),
        ("compare.learners=[reverse_kl, reverse_kl]", "'reverse_kl' is listed twice"),
        ("stage1.steps=[1,", "--set stage1.steps=[1,: the value is not valid YAML"),
        ("seed=-1", "seed: must be >= 0"),
        ("experiment=../escaped", "experiment: must be a single folder name"),
        ("threads=-2", "threads: must be >= 0"),
    ],
)
def test_refused_config_is_one_line_and_writes_nothing(
    toy_config, tmp_path, capsys, setting, needle
):
    runs = tmp_path / "runs"
    assert main(["compare", str(toy_config), "--runs", str(runs), "--set", setting]) == 2
    assert needle in one_error_line(capsys)
    assert not runs.exists() and not (tmp_path / "escaped").exists()


def test_float_spellings_reach_the_run(toy_config, tmp_path, capsys):
    """``beta: 3e-4`` in a file and ``--set stage1.lr=1e9`` are numbers (YAML 1.1 says str)."""
    text = toy_config.read_text().replace("beta: 0.05", "beta: 3e-4")
    toy_config.write_text(text)
    missing = str(tmp_path / "missing.pt")
    argv = ["evaluate", str(toy_config), "--predictor", missing, "--set", "stage1.lr=1e9"]
    assert main(argv) == 2
    assert "predictor checkpoint not found" in one_error_line(capsys)  # the config passed


def test_top_level_list_with_set_is_one_line(tmp_path, capsys):
    config = write_config(tmp_path, "- experiment: x\n- beta: 1\n")
    assert main(["compare", str(config), "--runs", str(tmp_path / "r"), "--set", "beta=1"]) == 2
    assert "at the top level, got a list" in one_error_line(capsys)


def test_yaml_syntax_error_names_line_and_column(tmp_path, capsys):
    config = write_config(tmp_path, "experiment: x\nbeta: [0.1\nseed: 0\n")
    assert main(["compare", str(config), "--runs", str(tmp_path / "r")]) == 2
    line = one_error_line(capsys)
    assert f"{config}:3:" in line and "invalid YAML" in line


@pytest.mark.parametrize("inside", [False, True])
def test_runs_pointing_at_a_file_is_one_line(toy_config, tmp_path, capsys, inside):
    runs_file = tmp_path / "runs.txt"
    runs_file.write_text("not a folder\n")
    runs = runs_file / "sub" if inside else runs_file
    assert main(["compare", str(toy_config), "--runs", str(runs)]) == 2
    assert f"--runs {runs}" in one_error_line(capsys)


# --- checkpoints ------------------------------------------------------------------------------


def test_evaluate_refuses_a_checkpoint_of_another_seed(trained, capsys):
    argv = ["evaluate", str(trained["config"]), "--predictor", str(trained["predictor"]),
            "--set", "seed=1"]  # fmt: skip
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert str(trained["predictor"]) in line and "seed is 0 there but 1 now" in line


def test_evaluate_warns_about_a_harmless_difference(trained, capsys):
    argv = ["evaluate", str(trained["config"]), "--predictor", str(trained["predictor"]),
            "--policy", str(trained["policy"]), "--set", "stage1.batch_size=7"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("l2s: warning: ") for w in warnings)
    assert all("stage1.batch_size" in w for w in warnings)
    assert "Toy-stop (reverse KL)" in captured.out


def test_a_checkpoint_of_another_task_is_refused(trained, sparse_tiny_config, capsys):
    argv = ["evaluate", str(sparse_tiny_config), "--predictor", str(trained["predictor"])]
    assert main(argv) == 2
    assert "trained under another config: task.name is 'toy' there" in one_error_line(capsys)


def test_a_lista_checkpoint_of_other_m_n_is_one_line(sparse_tiny_config, tmp_path, capsys):
    from l2s_gym.build import make_predictor, make_task
    from l2s_gym.config import load_config
    from l2s_gym.runs import save_checkpoint

    other = load_config(sparse_tiny_config, ["task.m=8", "task.n=16"])
    task = make_task(other.task, 0, "cpu")
    lista = make_predictor(other.predictor, task, seed=0)
    path = tmp_path / "other_size.pt"
    save_checkpoint(path, {"kind": "predictor", "state_dict": lista.state_dict(),
                           "config": other.to_dict(), "data_fingerprint": task.fingerprint()})  # fmt: skip
    assert main(["evaluate", str(sparse_tiny_config), "--predictor", str(path)]) == 2
    assert "task.m is 8 there but 16 now" in one_error_line(capsys)


def _bad_predictor_files(folder: Path, trained: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    data = trained["predictor"].read_bytes()
    files = {}
    for name, content in {
        "empty": b"",
        "truncated": data[: len(data) // 3],
        "random": np.random.default_rng(1).bytes(2048),
        "text": b"just some text\n",
    }.items():
        (folder / f"{name}.pt").write_bytes(content)
        needle = "is empty" if name == "empty" else "is not a readable checkpoint"
        files[name] = (folder / f"{name}.pt", needle)
    bare = folder / "bare.pt"
    torch.save({"scale": torch.ones(())}, bare)
    files["foreign"] = (bare, "is not an l2s-gym checkpoint")
    files["policy"] = (trained["policy"], "is a policy checkpoint, but a predictor checkpoint")
    return files


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "text", "foreign", "policy"])
@pytest.mark.parametrize("command", ["evaluate", "train-policy"])
def test_every_bad_predictor_checkpoint_is_one_line(trained, tmp_path, capsys, kind, command):
    path, needle = _bad_predictor_files(tmp_path, trained)[kind]
    runs = tmp_path / "runs"
    argv = [command, str(trained["config"]), "--predictor", str(path), "--runs", str(runs)]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert str(path) in line and needle in line
    assert not runs.exists()


def test_a_predictor_given_as_policy_is_one_line(trained, capsys):
    argv = ["evaluate", str(trained["config"]), "--predictor", str(trained["predictor"]),
            "--policy", str(trained["predictor"])]  # fmt: skip
    assert main(argv) == 2
    assert "is a predictor checkpoint, but a policy checkpoint" in one_error_line(capsys)


def test_a_malicious_checkpoint_never_runs(trained, tmp_path, capsys):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(
        pickle.dumps({"kind": "predictor", "state_dict": RunsCode(target)}, protocol=2)
    )
    assert main(["evaluate", str(trained["config"]), "--predictor", str(evil)]) == 2
    assert "refused: loading it would run code" in one_error_line(capsys)
    assert not target.exists()


# --- divergence in stage 2 ---------------------------------------------------------------------


def test_a_policy_learner_at_lr_1e9_stops_with_the_divergence_message(trained, tmp_path, capsys):
    argv = ["train-policy", str(trained["config"]), "--predictor", str(trained["predictor"]),
            "--runs", str(tmp_path / "runs"), "--no-progress", "--set", "imitation.lr=1e9",
            "--set", "imitation.steps=40", "--set", "imitation.val_every=20"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("l2s: training diverged: imitation (reverse KL)")
    assert "parameters diverged at step 20" in err[0]
    kept = Path(err[0].split("last good checkpoint kept at ")[1])
    assert kept.is_file() and kept.name == "best.pt"

"""Checkpoints that know what they belong to, and the divergence guard (l2s_gym.runs)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from l2s_gym.build import make_predictor, make_task
from l2s_gym.config import from_dict
from l2s_gym.runs import (
    CheckpointError,
    TrainingDiverged,
    check_finite,
    load_checkpoint,
    load_state,
    save_checkpoint,
)

TOY = {
    "experiment": "toy_run",
    "device": "cpu",
    "beta": 0.05,
    "task": {"name": "toy", "num_layers": 6, "val_size": 64, "test_size": 64},
    "predictor": {"name": "toy_counter", "num_layers": 6},
}


def toy_config(**changes) -> dict:
    cfg = from_dict({**TOY, **changes})
    return cfg.to_dict()


def write_predictor(path: Path, config: dict | None = None, task=None, kind="predictor") -> Path:  # noqa: ANN001
    config = config or toy_config()
    payload = {"kind": kind, "state_dict": {"scale": torch.ones(())}, "config": config}
    if task is not None:
        payload["data_fingerprint"] = task.fingerprint()
    save_checkpoint(path, payload)
    return path


def toy_task(seed: int = 0):  # noqa: ANN201
    return make_task(from_dict(TOY).task, seed, "cpu")


def error_of(path: Path, kind: str = "predictor", **kwargs) -> str:  # noqa: ANN003
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, kind, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# --- every bad file is one line naming the file --------------------------------------------


class RunsCode:
    """Unpickling this would create a file: what a malicious checkpoint does."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.target}",))


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = write_predictor(tmp_path / "good.pt")
    data = good.read_bytes()
    files: dict[str, tuple[Path, str]] = {}

    def put(name: str, content: bytes, needle: str) -> None:
        path = tmp_path / name
        path.write_bytes(content)
        files[name] = (path, needle)

    put("empty.pt", b"", "is empty (0 bytes)")
    unreadable = "is not a readable checkpoint (truncated, corrupt, or not written by torch.save"
    put("truncated.pt", data[: len(data) // 2], unreadable)
    put("random.pt", np.random.default_rng(0).bytes(4096), unreadable)
    put("text.pt", b"experiment: x\nbeta: 0.1\n", unreadable)
    bare = tmp_path / "bare.pt"
    torch.save(nn.Linear(2, 2).state_dict(), bare)
    files["bare.pt"] = (bare, "is not an l2s-gym checkpoint (it holds a bare state dict)")
    foreign = tmp_path / "list.pt"
    torch.save([1, 2, 3], foreign)
    files["list.pt"] = (foreign, "is not an l2s-gym checkpoint (it holds a list)")
    files["policy.pt"] = (
        write_predictor(tmp_path / "policy.pt", kind="policy"),
        "is a policy checkpoint, but a predictor checkpoint is expected",
    )
    files["folder"] = (tmp_path, "is a folder, not a file")
    files["missing.pt"] = (tmp_path / "missing.pt", "predictor checkpoint not found")
    return files


BAD = ["empty.pt", "truncated.pt", "random.pt", "text.pt", "bare.pt", "list.pt", "policy.pt",
       "folder", "missing.pt"]  # fmt: skip


@pytest.mark.parametrize("name", BAD)
def test_every_bad_checkpoint_is_one_line_naming_the_file(tmp_path, name):
    path, needle = _bad_files(tmp_path)[name]
    msg = error_of(path)
    assert str(path) in msg and needle in msg


@pytest.mark.parametrize("how", ["torch.save", "pickle protocol 2", "pickle protocol 5"])
def test_a_checkpoint_whose_unpickling_would_run_code_is_refused_and_nothing_runs(tmp_path, how):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"kind": "predictor", "state_dict": {}, "config": RunsCode(target)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(how[-1])))
    msg = error_of(path)
    assert str(path) in msg
    if how != "pickle protocol 5":  # (weights_only stops at protocol 5's first frame)
        assert "refused: loading it would run code" in msg and "posix.system" in msg
    assert not target.exists()


# --- what the checkpoint belongs to ------------------------------------------------------------


def test_a_good_checkpoint_loads_with_weights_only(tmp_path):
    path = write_predictor(tmp_path / "best.pt", task=toy_task())
    payload = load_checkpoint(path, "predictor", expect_config=toy_config(), task=toy_task())
    assert payload["format"] == "l2s-gym checkpoint"
    assert torch.equal(payload["state_dict"]["scale"], torch.ones(()))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"seed": 1}, "seed"),
        ({"beta": 0.07}, "beta"),
        ({"task": {**TOY["task"], "val_size": 32}}, "task.val_size"),
        ({"predictor": {"name": "toy_counter", "num_layers": 5}}, "predictor.num_layers"),
    ],
)
def test_a_config_that_changes_data_or_model_is_refused_naming_the_key(tmp_path, change, key):
    path = write_predictor(tmp_path / "best.pt")
    msg = error_of(path, expect_config=toy_config(**change))
    assert f"trained under another config: {key} is" in msg and str(path) in msg


def test_policy_sections_matter_for_policies_only(tmp_path):
    policy_change = toy_config(policy={"hidden": 8})
    warnings: list[str] = []
    load_checkpoint(write_predictor(tmp_path / "p.pt"), "predictor", policy_change,
                    warn=warnings.append)  # fmt: skip
    assert warnings == []  # a predictor does not depend on the policy's size
    policy = write_predictor(tmp_path / "q.pt", kind="policy")
    assert "policy.hidden" in error_of(policy, "policy", expect_config=policy_change)


def test_a_harmless_difference_is_one_warning_line(tmp_path):
    path = write_predictor(tmp_path / "best.pt")
    warnings: list[str] = []
    changed = toy_config(stage1={"batch_size": 7, "lr": 0.5}, device="auto", threads=2)
    load_checkpoint(path, "predictor", expect_config=changed, warn=warnings.append)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    for key in ("stage1.batch_size", "stage1.lr", "device", "threads"):
        assert key in warnings[0]
    warnings.clear()
    load_checkpoint(path, "predictor", expect_config=changed, warn=warnings.append,
                    ignore=("stage1", "device", "threads"))  # fmt: skip
    assert warnings == []


def test_a_key_added_since_the_checkpoint_compares_as_its_default(tmp_path):
    """A checkpoint saved before a config key existed (its snapshot lacks the key) loads
    without a warning when today's config has that key at its default, and still warns
    when today's value differs from the default."""
    saved = toy_config()
    del saved["stage1"]["beta_anneal_from"]  # as written before the key was added
    path = write_predictor(tmp_path / "best.pt", config=saved)
    warnings: list[str] = []
    load_checkpoint(path, "predictor", expect_config=toy_config(), warn=warnings.append)
    assert warnings == []
    load_checkpoint(path, "predictor", expect_config=toy_config(stage1={"beta_anneal_from": 10.0}),
                    warn=warnings.append)  # fmt: skip
    assert len(warnings) == 1 and "stage1.beta_anneal_from" in warnings[0]
    # A key since removed still shows up (the snapshot no longer parses: raw comparison).
    saved["stage1"]["retired_option"] = 1
    path = write_predictor(tmp_path / "old.pt", config=saved)
    warnings.clear()
    load_checkpoint(path, "predictor", expect_config=toy_config(), warn=warnings.append)
    assert len(warnings) == 1 and "stage1.retired_option" in warnings[0]


def test_other_task_data_is_refused_by_fingerprint(tmp_path):
    path = write_predictor(tmp_path / "best.pt", task=toy_task(seed=0))
    load_checkpoint(path, "predictor", task=toy_task(seed=0))
    assert "trained on other data" in error_of(path, task=toy_task(seed=1))


def test_fingerprint_covers_eval_sets_and_fixed_data():
    assert toy_task(0).fingerprint() == toy_task(0).fingerprint()
    assert toy_task(0).fingerprint() != toy_task(1).fingerprint()
    sparse = from_dict({"experiment": "s", "task": {"name": "sparse_recovery", "m": 8, "n": 16,
                        "val_size": 8, "test_size_per_snr": 4}})  # fmt: skip
    task = make_task(sparse.task, 0, "cpu")
    before = task.fingerprint()
    assert "A" in task.fixed_data()
    task._fingerprint = None
    task.A = task.A + 1.0  # same evaluation sets, another matrix
    assert task.fingerprint() != before


def test_a_state_dict_of_another_size_is_one_line(tmp_path):
    small = from_dict({"experiment": "s", "task": {"name": "sparse_recovery", "m": 8, "n": 16}})
    large = from_dict({"experiment": "s", "task": {"name": "sparse_recovery", "m": 12, "n": 24}})
    a = make_predictor(small.predictor, make_task(small.task, 0, "cpu"))
    b = make_predictor(large.predictor, make_task(large.task, 0, "cpu"))
    path = tmp_path / "lista.pt"
    with pytest.raises(CheckpointError) as info:
        load_state(b, a.state_dict(), path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "size mismatch" in msg


def test_save_refuses_what_weights_only_would_refuse_and_converts_numpy(tmp_path):
    with pytest.raises(TypeError, match="tensors and plain containers"):
        save_checkpoint(tmp_path / "x.pt", {"kind": "policy", "state_dict": {}, "obj": object()})
    save_checkpoint(
        tmp_path / "y.pt",
        {"kind": "policy", "state_dict": {}, "metric": np.float64(1.5), "where": tmp_path},
    )
    payload = load_checkpoint(tmp_path / "y.pt", "policy")
    assert payload["metric"] == 1.5 and payload["where"] == str(tmp_path)


# --- divergence ------------------------------------------------------------------------------


def test_check_finite_names_a_checkpoint_only_if_it_exists(tmp_path):
    missing = tmp_path / "last.pt"
    with pytest.raises(TrainingDiverged, match="loss became nan at step 3; no checkpoint was"):
        check_finite(torch.tensor(float("nan")), "stage 1 (oracle)", "step 3", missing)
    existing = write_predictor(tmp_path / "best.pt")
    with pytest.raises(TrainingDiverged, match=f"last good checkpoint kept at {existing}"):
        check_finite(torch.tensor(float("inf")), "x", "step 1", existing)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e10])
def test_check_finite_catches_diverged_parameters(tmp_path, value):
    module = nn.Linear(2, 2)
    check_finite(torch.tensor(1.0), "x", "step 1", None, module=module)  # fine
    with torch.no_grad():
        module.weight[0, 0] = value
    closed = []

    class Closable:
        def close(self) -> None:
            closed.append(True)

    with pytest.raises(TrainingDiverged, match="x parameters diverged at step 2"):
        check_finite(torch.tensor(1.0), "x", "step 2", None, Closable(), module=module)
    assert closed == [True]


def test_resume_takes_a_key_added_since_the_run_as_its_default(tmp_path) -> None:
    from l2s_gym.config import ConfigError, from_dict
    from l2s_gym.trials import check_resume_config

    cfg = from_dict(
        {"experiment": "x", "task": {"name": "sparse_recovery", "m": 8, "n": 16},
         "predictor": {"name": "lista", "num_layers": 4}}
    ).to_dict()  # fmt: skip
    older = {**cfg, "rl": {k: v for k, v in cfg["rl"].items() if k != "reinforce_num_envs"}}
    check_resume_config(older, cfg, tmp_path)  # a new key at its default: same computation
    changed = {**cfg, "rl": {**cfg["rl"], "reinforce_num_envs": 8}}
    with pytest.raises(ConfigError, match="differs from the run's at rl.reinforce_num_envs"):
        check_resume_config(older, changed, tmp_path)

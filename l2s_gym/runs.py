"""Run folders, crash-safe checkpoints that know what they belong to, TensorBoard writers.

Run folders (``new_run_dir``) never overwrite: every run of a command gets
``runs/<experiment>/<YYYYMMDD-HHMMSS>[-N]/``, and ``runs/<experiment>/latest`` points at
the newest (``resolve_run_dir`` finds it again for ``--resume``).

A checkpoint (``save_checkpoint``) holds tensors and plain containers only (dicts, lists,
strings, numbers), so that ``load_checkpoint`` can open it with
``torch.load(..., weights_only=True)``: opening a file someone else made never runs code.
Every checkpoint l2s-gym writes carries its ``kind`` (``"predictor"`` or ``"policy"``), the
experiment ``config`` it was trained under and the ``data_fingerprint`` of its task
(``Task.fingerprint``). ``load_checkpoint`` turns every way a file can be wrong (missing,
empty, truncated, not a checkpoint, another kind, trained under another config or on
other data) into one ``CheckpointError`` line that names the file. ``load_predictor`` and
``load_policy`` are the one way a run's artifacts are loaded into a model: read and check
the file, load its weights, freeze the model.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from l2s_gym.config import ConfigError, ExperimentConfig, through_schema


class TrainingDiverged(RuntimeError):
    """A loss or a parameter became NaN, inf or absurdly large; the message says whether a
    good checkpoint was kept, and where."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the one-line message names the file and the fault."""


PARAMETER_LIMIT = 1e6
"""``check_finite``'s default bound on ``|weight|``: a parameter beyond it means the
optimiser blew up (a learning rate of 1e9 leaves finite weights around 1e10)."""

CHECKPOINT_FORMAT = "l2s-gym checkpoint"
"""The ``format`` entry every checkpoint written by ``save_checkpoint`` carries."""

MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "predictor": ("task", "predictor", "seed", "beta"),
    "policy": ("task", "predictor", "seed", "beta", "policy"),
}
"""Config keys (and sections) that change the data or the model a checkpoint of each
kind holds: loading it under a config that differs in one of them is refused. Any other
difference (batch sizes, steps, learning rates, ``val_every``, ``device``, ``threads``,
``compare.eval_batch_size``, ...) only gets a warning."""

UNRELATED_KEYS: dict[str, tuple[str, ...]] = {
    "predictor": ("experiment", "seeds", "policy", "imitation", "rl", "compare", "frontier"),
    "policy": ("experiment", "seeds", "frontier"),
}
"""Config keys not compared at all: a predictor does not depend on how stop policies are
trained on it (``train-policy`` with another ``imitation.lr`` is the normal use), and no
checkpoint depends on the experiment's name or on which other seeds its run held."""


# --- divergence ---------------------------------------------------------------------------


def _kept(checkpoint: Path | None) -> str:
    if checkpoint is not None and Path(checkpoint).is_file():
        return f"last good checkpoint kept at {checkpoint}"
    return "no checkpoint was written before it diverged"


def check_finite(
    loss: torch.Tensor,
    what: str,
    where: str,
    checkpoint: Path | None,
    *to_close: Any,
    module: nn.Module | None = None,
    max_abs: float = PARAMETER_LIMIT,
) -> None:
    """Raise ``TrainingDiverged`` if ``loss`` is NaN or inf, or a parameter of ``module`` is
    NaN, inf or larger than ``max_abs`` in magnitude; close ``to_close`` first.

    The message reads ``"<what> loss became <value> at <where>; last good checkpoint kept
    at <checkpoint>"`` (or ``"<what> parameters diverged at <where> ..."``), and says that
    no checkpoint was written when ``checkpoint`` does not exist: the one guard of every
    training loop (stage 1 and the learners). One host-device synchronisation per call.
    """
    loss = loss.detach()
    flags = [~torch.isfinite(loss).all()]
    largest = None
    if module is not None:
        params = [p.detach() for p in module.parameters() if p.numel()]
        if params:
            largest = torch.stack([p.abs().max().float().to(loss.device) for p in params]).max()
            flags.append(~(largest <= max_abs))  # NaN-safe: NaN <= x is false
    if not bool(torch.stack(flags).any()):
        return
    for item in to_close:
        item.close()
    bad = loss[~torch.isfinite(loss)].reshape(-1)
    if bad.numel():
        text = f"{what} loss became {bad[0].item()} at {where}"
    else:
        assert largest is not None
        text = (
            f"{what} parameters diverged at {where} (largest |weight| {largest.item():.3g}, "
            f"limit {max_abs:g})"
        )
    raise TrainingDiverged(f"{text}; {_kept(checkpoint)}")


# --- writing ------------------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _plain(obj: Any, where: str) -> Any:
    """``obj`` with numpy values and paths made plain; ``TypeError`` for anything that
    ``torch.load(weights_only=True)`` would refuse. Containers are rebuilt only where a
    value changed (a module's ``state_dict`` is kept as it is, metadata and all)."""
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str | torch.Tensor | torch.Size):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        new = {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        if any(not isinstance(k, str | int) for k in new):
            raise TypeError(f"{where}: checkpoint dict keys must be strings or ints")
        return obj if all(new[k] is obj[k] for k in obj) else new
    if isinstance(obj, list | tuple):
        new_items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if all(a is b for a, b in zip(new_items, obj, strict=True)):
            return obj
        return type(obj)(new_items) if isinstance(obj, list) else tuple(new_items)
    raise TypeError(
        f"{where}: a checkpoint holds tensors and plain containers only, got "
        f"{type(obj).__name__} (it could not be loaded with weights_only=True)"
    )


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint so that a crash mid-write never leaves a truncated file.

    ``payload`` must hold tensors and plain containers only (numpy values and paths are
    converted); it should carry ``kind``, ``state_dict``, ``config`` and
    ``data_fingerprint``, which ``load_checkpoint`` checks.
    """
    payload = {"format": CHECKPOINT_FORMAT, **_plain(payload, "checkpoint")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


# --- reading ------------------------------------------------------------------------------


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(payload: Any) -> str:
    if isinstance(payload, dict):
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            return "a bare state dict"
        keys = ", ".join(map(str, list(payload)[:4]))
        return f"a dict with keys {keys}" if keys else "an empty dict"
    return f"a {type(payload).__name__}"


def _read(path: Path, kind: str) -> Any:
    """``torch.load(path, weights_only=True)``, every failure as one ``CheckpointError``."""
    if not path.exists():
        raise CheckpointError(f"{kind} checkpoint not found: expected a file at {path}")
    if path.is_dir():
        hint = f"; did you mean {path / 'best.pt'}?" if (path / "best.pt").is_file() else ""
        raise CheckpointError(f"{kind} checkpoint {path} is a folder, not a file{hint}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{kind} checkpoint {path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the error below says more
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        # weights_only names the global it would have imported (a function to call, a
        # class to build); anything else it trips on is a damaged or foreign file.
        found = re.search(r"[^\n]*\bGLOBAL\b[^\n]*", text)
        if found:
            line = re.sub(r"^.*?error:\s*", "", found.group(0)).split(" Please")[0]
            detail = _one_line(line, 160)
            raise CheckpointError(
                f"{kind} checkpoint {path} refused: loading it would run code or build "
                f"objects other than tensors and plain containers ({detail}); l2s-gym "
                "checkpoints never need that"
            ) from None
        raise CheckpointError(_unreadable(kind, path, exc)) from None
    except Exception as exc:  # noqa: BLE001 - zip, EOF, decode errors: all a bad file
        raise CheckpointError(_unreadable(kind, path, exc)) from None


def _unreadable(kind: str, path: Path, exc: BaseException) -> str:
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(boilerplate)]
    reason = re.sub(r"^.*?error:\s*", "", lines[0]) if lines else type(exc).__name__
    return (
        f"{kind} checkpoint {path} is not a readable checkpoint (truncated, corrupt, or not "
        f"written by torch.save: {_one_line(reason.split('. ')[0], 120)})"
    )


def flatten_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"dotted.key": value}``."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def is_under(key: str, prefixes: Iterable[str]) -> bool:
    """Whether dotted ``key`` is one of ``prefixes`` or lies under one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_differences(
    saved: dict[str, Any], expected: dict[str, Any], ignore: Iterable[str] = ()
) -> list[str]:
    """Dotted keys whose values differ, in the order of ``expected`` (then keys only in
    ``saved``), skipping keys under ``ignore``."""
    fs, fe = flatten_config(saved), flatten_config(expected)
    ignore = tuple(ignore)
    keys = list(fe) + [k for k in fs if k not in fe]
    return [
        k
        for k in keys
        if not is_under(k, ignore) and fs.get(k, "<missing>") != fe.get(k, "<missing>")
    ]


def _warn_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def check_checkpoint_config(
    path: Path,
    kind: str,
    saved: dict[str, Any] | None,
    expected: dict[str, Any],
    ignore: Iterable[str] = (),
    warn: Callable[[str], None] = _warn_stderr,
) -> None:
    """Refuse (``CheckpointError``) a checkpoint whose config differs from ``expected`` in a
    key of ``MODEL_KEYS[kind]``, naming the first such key; warn (one line) about any other
    difference."""
    if not isinstance(saved, dict):
        warn(f"l2s: warning: {path} holds no config; cannot check what it was trained under")
        return
    saved = through_schema(saved)
    diffs = config_differences(saved, expected, (*UNRELATED_KEYS.get(kind, ()), *ignore))
    model_keys = MODEL_KEYS.get(kind, MODEL_KEYS["policy"])
    refused = [k for k in diffs if is_under(k, model_keys)]
    if refused:
        key = refused[0]
        fs, fe = flatten_config(saved), flatten_config(expected)
        raise CheckpointError(
            f"{path} was trained under another config: {key} is "
            f"{fs.get(key, '<missing>')!r} there but {fe.get(key, '<missing>')!r} now "
            "(that changes the data or the model; use the config it was trained with)"
        )
    if diffs:
        shown = ", ".join(diffs[:6]) + (f" and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        warn(
            f"l2s: warning: {path} was trained with other settings of {shown} (harmless: "
            "they change neither the data nor the model)"
        )


def load_checkpoint(
    path: str | Path,
    kind: str,
    expect_config: dict[str, Any] | None = None,
    task: Any = None,
    *,
    ignore: Iterable[str] = (),
    warn: Callable[[str], None] = _warn_stderr,
) -> dict[str, Any]:
    """Load and check a checkpoint written by l2s-gym (``weights_only=True``).

    Args:
        path: the ``best.pt`` (or ``last.pt``) file.
        kind: ``"predictor"`` or ``"policy"``: what the caller will load it into.
        expect_config: the experiment config (``cfg.to_dict()``) it is loaded under; a
            difference in a key of ``MODEL_KEYS[kind]`` is refused naming the first one,
            any other difference is one warning line.
        task: the ``Task`` it is loaded onto; its ``fingerprint()`` must equal the one the
            checkpoint stored (when it stored one).
        ignore: dotted config keys (or sections) not compared at all.
        warn: where warning lines go (default: stderr).

    Returns the payload (``state_dict``, ``config``, ...; tensors on the CPU). Raises
    ``CheckpointError``, one line naming the file, for a missing, empty, truncated or
    corrupt file, one that is not an l2s-gym checkpoint, one of another kind, one whose
    unpickling would run code, and one trained under another config or on other data.
    Load its ``state_dict`` with ``load_state`` to get size mismatches the same way.
    """
    path = Path(path)
    payload = _read(path, kind)
    if not isinstance(payload, dict) or "kind" not in payload or "state_dict" not in payload:
        raise CheckpointError(
            f"{path} is not an l2s-gym checkpoint (it holds {_describe(payload)}); expected a "
            "best.pt written by l2s"
        )
    if payload["kind"] != kind:
        raise CheckpointError(
            f"{path} is a {payload['kind']} checkpoint, but a {kind} checkpoint is expected "
            f"here (a {'predictor-*' if kind == 'predictor' else '<learner>'}/best.pt)"
        )
    if not isinstance(payload["state_dict"], dict):
        raise CheckpointError(f"{path}: its state_dict is {_describe(payload['state_dict'])}")
    if expect_config is not None:
        check_checkpoint_config(path, kind, payload.get("config"), expect_config, ignore, warn)
    stored = payload.get("data_fingerprint")
    if task is not None and stored is not None:
        now = task.fingerprint()
        if stored != now:
            raise CheckpointError(
                f"{path} was trained on other data than this config's {task.name} task holds "
                f"(data fingerprint {str(stored)[:12]} there, {now[:12]} now): another seed, "
                "device or l2s-gym version draws other data"
            )
    return payload


def load_state(module: nn.Module, state_dict: dict[str, Any], path: str | Path) -> nn.Module:
    """``module.load_state_dict(state_dict)``; a size or key mismatch (a checkpoint of another
    task, or a LISTA of other ``m``/``n``) becomes one ``CheckpointError`` naming ``path``."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = _one_line("; ".join(lines[1:] or lines), 300)
        raise CheckpointError(
            f"{path} does not fit this {type(module).__name__} (a checkpoint of another task "
            f"or size?): {detail}"
        ) from None
    return module


def _load_into(
    kind: str,
    path: str | Path,
    module: nn.Module,
    cfg: ExperimentConfig | None,
    task: Any,
    ignore: Iterable[str],
    warn: Callable[[str], None],
    freeze: bool,
) -> dict[str, Any]:
    payload = load_checkpoint(
        path, kind, None if cfg is None else cfg.to_dict(), task, ignore=ignore, warn=warn
    )
    load_state(module, payload["state_dict"], path)
    if freeze:
        module.eval().requires_grad_(False)
    return payload


def load_predictor(
    path: str | Path,
    predictor: nn.Module,
    cfg: ExperimentConfig | None = None,
    task: Any = None,
    *,
    ignore: Iterable[str] = (),
    warn: Callable[[str], None] = _warn_stderr,
    freeze: bool = True,
) -> dict[str, Any]:
    """Load the predictor checkpoint ``path`` (a ``best.pt``) into ``predictor``, built
    by the caller for ``cfg`` and ``task`` (``l2s_gym.build.make_predictor``).

    ``cfg`` (the config it is loaded under) and ``task`` (the data it is used on) are
    checked as ``load_checkpoint`` checks them (``None``: not checked); a size mismatch is
    a ``CheckpointError`` too (``load_state``). ``freeze``: leave the predictor in eval mode
    with no gradients. Returns the checkpoint's payload.
    """
    return _load_into("predictor", path, predictor, cfg, task, ignore, warn, freeze)


def load_policy(
    path: str | Path,
    policy: nn.Module,
    cfg: ExperimentConfig | None = None,
    task: Any = None,
    *,
    ignore: Iterable[str] = (),
    warn: Callable[[str], None] = _warn_stderr,
    freeze: bool = True,
) -> dict[str, Any]:
    """Load the policy checkpoint ``path`` into ``policy`` (``l2s_gym.build.make_policy``),
    checked as in ``load_predictor``. Returns the payload (``learner``, ``readout``,
    ``cost``, ... as the learner saved them)."""
    return _load_into("policy", path, policy, cfg, task, ignore, warn, freeze)


# --- run folders --------------------------------------------------------------------------


def new_run_dir(runs_root: str | Path, experiment: str) -> Path:
    """A fresh folder ``runs_root/experiment/<timestamp>[-N]``; ``latest`` then points at it."""
    exp = Path(runs_root) / experiment
    exp.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        folder = exp / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        point_latest(folder)
        return folder
    raise RuntimeError(f"could not create a new run folder under {exp}")


def point_latest(run_dir: Path) -> None:
    """Make ``<experiment>/latest`` name ``run_dir`` (a symlink; a text file where links fail)."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        if link.is_symlink():
            link.unlink()
        (run_dir.parent / "latest.txt").write_text(run_dir.name + "\n")


def resolve_run_dir(runs_root: str | Path, experiment: str, spec: str) -> Path:
    """``--resume`` target: ``latest`` (the newest run of ``experiment``) or a folder path."""
    if spec == "latest":
        exp = Path(runs_root) / experiment
        link = exp / "latest"
        if link.exists():
            return link.resolve()
        marker = exp / "latest.txt"
        if marker.is_file():
            return exp / marker.read_text().strip()
        runs = sorted(p for p in exp.glob("[0-9]*") if p.is_dir()) if exp.is_dir() else []
        if not runs:
            raise ConfigError(f"--resume latest: no run of experiment {experiment!r} under {exp}")
        return runs[-1]
    folder = Path(spec)
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"--resume {spec}: not a run folder (no config.yaml in it)")
    return folder


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_config_snapshot(folder: Path, cfg_dict: dict[str, Any]) -> None:
    atomic_write_bytes(folder / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False).encode())


def summary_writer(folder: Path):  # noqa: ANN201 - SummaryWriter is imported lazily
    """A TensorBoard writer logging into ``folder`` (imported lazily: it is slow to import)."""
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(folder))

"""Run folders, crash-safe checkpoints and TensorBoard writers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml


class TrainingDiverged(RuntimeError):
    """A loss became NaN or inf; the message says where the last good checkpoint is."""


def check_finite(
    loss: torch.Tensor, what: str, where: str, checkpoint: Path, *to_close: Any
) -> None:
    """Raise ``TrainingDiverged`` if ``loss`` is NaN or inf, closing ``to_close`` first.

    The message reads ``"<what> loss became <value> at <where>; last good checkpoint kept
    at <checkpoint>"``: the one guard of every training loop (stage 1 and the learners).
    """
    if torch.isfinite(loss):
        return
    for item in to_close:
        item.close()
    raise TrainingDiverged(
        f"{what} loss became {loss.item()} at {where}; last good checkpoint kept at {checkpoint}"
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint so that a crash mid-write never leaves a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Load a checkpoint written by l2s-gym, naming the file expected if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} checkpoint not found: expected a file at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        raise ValueError(f"{path} is not a {kind} checkpoint")
    return payload


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_config_snapshot(folder: Path, cfg_dict: dict[str, Any]) -> None:
    atomic_write_bytes(folder / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False).encode())


def summary_writer(folder: Path):  # noqa: ANN201 - SummaryWriter is imported lazily
    """A TensorBoard writer logging into ``folder`` (imported lazily: it is slow to import)."""
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(folder))

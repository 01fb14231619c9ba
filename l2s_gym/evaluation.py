"""One evaluation path for every stop rule: metric vs layers computed, per group.

A stop rule is anything that yields a 0-based stop index per instance of a Trace:
a fixed depth, the label-using oracle, a heuristic, or a learned policy's stop logits
(deterministic: first layer with stop probability > 0.5; stochastic: sampled).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from l2s_gym.predictor import Trace
from l2s_gym.stopping import deterministic_stop, sample_stop, stop_log_q
from l2s_gym.task import Task


class StopModel(Protocol):
    """Anything that maps a trace's features ``(B, T, *F)`` to stop logits ``(B, T)``."""

    def trace_logits(self, features: Tensor) -> Tensor: ...


def metric_at(task: Task, trace: Trace, stop: Tensor, mask: Tensor | None = None) -> float:
    stats = trace.metric_stats.gather(1, stop.long().unsqueeze(1)).squeeze(1)
    if mask is not None:
        stats = stats[mask]
    return task.aggregate(stats)


def stop_summary(task: Task, trace: Trace, stop: Tensor) -> dict[str, Any]:
    """Metric (overall and per group), average layers and the stop-layer histogram."""
    stop = stop.long().to(trace.metric_stats.device)
    groups = {}
    for g, name in enumerate(task.group_names):
        mask = trace.groups == g
        if bool(mask.any()):
            groups[name] = metric_at(task, trace, stop, mask)
    stats = trace.metric_stats.gather(1, stop.unsqueeze(1)).squeeze(1)
    interval = task.metric_interval(stats)
    return {
        **({"ci95": interval} if interval is not None else {}),
        "metric": task.aggregate(stats),
        "avg_layers": float((stop + 1).double().mean()),
        "groups": groups,
        "histogram": torch.bincount(stop, minlength=trace.num_layers).tolist(),
    }


def fixed_depth_stop(trace: Trace, depth: int) -> Tensor:
    """Stop every instance after ``depth`` layers (1-based)."""
    return torch.full((len(trace),), depth - 1, dtype=torch.long, device=trace.losses.device)


def oracle_stop(trace: Trace) -> Tensor:
    """The label-using oracle's choice: the layer of least loss (the mode of q*)."""
    return trace.losses.argmin(dim=1)


def depth_curve(task: Task, trace: Trace) -> list[float]:
    """The metric when every instance stops at layer k, for k = 1..T."""
    return [
        metric_at(task, trace, fixed_depth_stop(trace, k)) for k in range(1, trace.num_layers + 1)
    ]


def best_fixed_depth(task: Task, val_trace: Trace) -> int:
    """The depth (1-based) with the best validation metric."""
    curve = torch.tensor(depth_curve(task, val_trace))
    best = curve.argmax() if task.higher_is_better else curve.argmin()
    return int(best) + 1


@torch.no_grad()
def stop_logits(model: StopModel, trace: Trace, chunk_size: int = 4096) -> Tensor:
    feats = trace.features
    return torch.cat(
        [model.trace_logits(feats[i : i + chunk_size]) for i in range(0, len(trace), chunk_size)]
    )


@torch.no_grad()
def evaluate_stop_model(
    task: Task, trace: Trace, model: StopModel, seed: int = 0
) -> dict[str, Any]:
    """Deterministic and stochastic evaluation of a learned stop rule on ``trace``."""
    logits = stop_logits(model, trace)
    row = stop_summary(task, trace, deterministic_stop(logits))
    gen = torch.Generator(device=logits.device)
    gen.manual_seed(seed)
    sampled = stop_summary(task, trace, sample_stop(stop_log_q(logits), gen))
    row["stochastic"] = {k: sampled[k] for k in ("metric", "avg_layers", "groups")}
    return row


def is_better(task: Task, a: float, b: float) -> bool:
    """Whether metric ``a`` beats ``b`` for this task."""
    return a > b if task.higher_is_better else a < b

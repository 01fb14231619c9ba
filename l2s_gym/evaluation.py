"""One evaluation path for every stop rule: metric vs layers computed, per group.

A stop rule (``l2s_gym.rules``) yields a 0-based stop index per instance of a Trace: a
fixed depth, the label-using oracle, a heuristic, or a learned policy's stop logits read
out by a ``ReadoutRule`` chosen on the validation set (``choose_readout``).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor

from l2s_gym.predictor import Trace
from l2s_gym.rules import (
    PAPER_RULE,
    THRESHOLD_RULES,
    ReadoutRule,
    candidate_stops,
    default_thresholds,
    fixed_depth_stop,
    readout_candidates,
    threshold_stop,
)
from l2s_gym.stopping import cost_adjusted_losses
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


def depth_curve(task: Task, trace: Trace) -> list[float]:
    """The metric when every instance stops at layer k, for k = 1..T."""
    return [
        metric_at(task, trace, fixed_depth_stop(trace, k)) for k in range(1, trace.num_layers + 1)
    ]


@torch.no_grad()
def stop_logits(
    model: StopModel, trace: Trace, chunk_size: int = 4096, folded: bool = False
) -> Tensor:
    """``model``'s stop logits ``(B, T)`` over ``trace``, in chunks of instances. ``folded``:
    a ``StopPolicy`` at its dial runs through its folded MLP (``chunk_logits`` over all
    ``T`` layers: the same function up to float rounding, about half the time on a CPU);
    any other model as without it."""
    from l2s_gym.policy import StopPolicy

    logits = model.trace_logits
    if folded and isinstance(model, StopPolicy):
        logits = lambda f: model.chunk_logits(f, 0)  # noqa: E731
    feats = trace.features
    return torch.cat([logits(feats[i : i + chunk_size]) for i in range(0, len(trace), chunk_size)])


def stop_objective(
    trace: Trace, stop: Tensor, cost: float = 0.0, cum_costs: Tensor | None = None
) -> float:
    """The method's objective at the chosen stops: ``mean_i l_{stop_i} + lambda C_{stop_i}``."""
    adjusted = cost_adjusted_losses(trace.losses, cost, cum_costs)
    return float(adjusted.gather(1, stop.long().unsqueeze(1)).double().mean())


def choose_readout(
    val_trace: Trace,
    logits: Tensor,
    cost: float = 0.0,
    cum_costs: Tensor | None = None,
    candidates: list[ReadoutRule] | None = None,
) -> tuple[ReadoutRule, list[dict[str, Any]]]:
    """The deterministic read-out with the least validation objective (``stop_objective``).

    ``logits`` are the policy's stop logits on ``val_trace``. Ties go to the rule that
    computes fewer layers, then to the earlier candidate. Returns the rule and, for the
    record, every candidate's ``{"rule", "label", "objective", "avg_layers"}``.
    """
    best: tuple[float, float, int] | None = None
    chosen = PAPER_RULE
    table = []
    rules = candidates or readout_candidates()
    adjusted = cost_adjusted_losses(val_trace.losses, cost, cum_costs)
    for i, (rule, stop) in enumerate(zip(rules, candidate_stops(logits, rules), strict=True)):
        objective = float(adjusted.gather(1, stop.long().unsqueeze(1)).double().mean())
        layers = float((stop + 1).double().mean())
        table.append(
            {
                "rule": rule.to_dict(),
                "label": rule.label,
                "objective": objective,
                "avg_layers": layers,
            }
        )
        key = (objective, layers, i)
        if math.isfinite(objective) and (best is None or key < best):
            best, chosen = key, rule
    return chosen, table


@torch.no_grad()
def evaluate_stop_model(
    task: Task,
    trace: Trace,
    model: StopModel,
    seed: int = 0,
    rule: ReadoutRule = PAPER_RULE,
) -> dict[str, Any]:
    """A learned stop rule on ``trace``: read out by ``rule`` (chosen on validation), plus
    the stochastic read-out (a sample from ``q_phi``) and, for reference, the paper's rule."""
    return evaluate_stop_logits(task, trace, stop_logits(model, trace), seed, rule)


def evaluate_stop_logits(
    task: Task,
    trace: Trace,
    logits: Tensor,
    seed: int = 0,
    rule: ReadoutRule = PAPER_RULE,
) -> dict[str, Any]:
    """``evaluate_stop_model`` from a policy's stop logits on ``trace`` (``stop_logits``),
    for a caller that reads those logits out in other ways too."""
    row = stop_summary(task, trace, rule.stop(logits))
    row["readout"] = rule.label
    gen = torch.Generator(device=logits.device)
    gen.manual_seed(seed)
    sampled = stop_summary(task, trace, ReadoutRule("sample").stop(logits, gen))
    row["stochastic"] = {k: sampled[k] for k in ("metric", "avg_layers", "groups")}
    paper = stop_summary(task, trace, PAPER_RULE.stop(logits))
    row["paper_rule"] = {k: paper[k] for k in ("metric", "avg_layers", "groups")}
    return row


def threshold_sweep(
    task: Task,
    val: Trace,
    test: Trace,
    key: str,
    thresholds: list[float] | None = None,
    cost: float = 0.0,
    cum_costs: Tensor | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sweep a heuristic threshold rule: a test curve, and a row at the threshold chosen on
    validation (least ``stop_objective`` at ``cost``; at cost 0, the best metric).

    Returns ``(row, curve)``: ``row`` is a table row (kind ``heuristic``); ``curve`` holds
    ``threshold``, ``avg_layers`` and ``metric`` lists over the thresholds, for the plots.
    """
    label, _ = THRESHOLD_RULES[key]
    thresholds = thresholds or default_thresholds(val, key)
    best_tau, best_score = thresholds[0], None
    curve: dict[str, Any] = {"label": label, "threshold": [], "avg_layers": [], "metric": []}
    for tau in thresholds:
        v_stop = threshold_stop(val, key, tau)
        if cost:
            score = -stop_objective(val, v_stop, cost, cum_costs)
        else:
            v_metric = metric_at(task, val, v_stop)
            score = v_metric if task.higher_is_better else -v_metric
        if best_score is None or score > best_score:
            best_tau, best_score = tau, score
        summary = stop_summary(task, test, threshold_stop(test, key, tau))
        curve["threshold"].append(tau)
        curve["avg_layers"].append(summary["avg_layers"])
        curve["metric"].append(summary["metric"])
    row = {
        "method": f"{label}, tau={best_tau:.3g} (chosen on validation)",
        "kind": "heuristic",
        "threshold": best_tau,
        **stop_summary(task, test, threshold_stop(test, key, best_tau)),
    }
    return row, curve


def metric_follows_loss(task: Task, trace: Trace) -> bool:
    """Whether on every instance of ``trace`` the layer of least loss is also a layer of
    best metric statistic (up to float rounding).

    Then the label-using oracle (``argmin_t l_t``) bounds the metric of every stop rule at
    no layer price, not only the objective; it does not where the loss is a surrogate of
    the metric (cross-entropy for accuracy) or where the metric pools instances."""
    stats = trace.metric_stats.double()
    if not task.higher_is_better:
        stats = -stats
    best = stats.max(dim=1).values
    at_oracle = stats.gather(1, trace.losses.argmin(dim=1, keepdim=True)).squeeze(1)
    tol = 1e-9 * (1 + stats.abs().max(dim=1).values)
    return bool((at_oracle >= best - tol).all())


def is_better(task: Task, a: float, b: float) -> bool:
    """Whether metric ``a`` beats ``b`` for this task."""
    return a > b if task.higher_is_better else a < b

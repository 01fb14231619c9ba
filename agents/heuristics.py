"""Heuristic stop rules, scored by the same evaluation path as the learned ones.

- fixed depth and the label-using oracle live in ``l2s_gym.evaluation``
  (``fixed_depth_stop``, ``oracle_stop``);
- ``threshold_stop``: stop at the first layer where a per-layer quantity the predictor
  exposes in ``Trace.extras`` passes a threshold. With ``"confidence"`` (max softmax
  probability, higher is surer) this is the Shallow-Deep Network rule; with ``"change"``
  (relative update size, lower is more converged) it is a convergence test.

A sweep over thresholds traces a metric-vs-layers curve; the row reported in a table
uses the threshold chosen on the validation trace, never the test set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from l2s_gym.evaluation import is_better, metric_at, stop_summary
from l2s_gym.predictor import Trace
from l2s_gym.task import Task

#: extras key -> (label, whether larger values mean "ready to stop")
THRESHOLD_RULES: dict[str, tuple[str, bool]] = {
    "confidence": ("confidence threshold (SDN)", True),
    "change": ("convergence threshold", False),
}


def threshold_stop(trace: Trace, key: str, threshold: float) -> Tensor:
    """First 0-based layer whose ``trace.extras[key]`` passes ``threshold``; else the last."""
    if key not in trace.extras:
        raise KeyError(f"the predictor exposes no {key!r} in its trace extras")
    values = trace.extras[key]
    ready = values >= threshold if THRESHOLD_RULES[key][1] else values <= threshold
    ready = ready.clone()
    ready[:, -1] = True
    return ready.to(torch.int8).argmax(dim=1)


def default_thresholds(trace: Trace, key: str, num: int = 12) -> list[float]:
    """Thresholds at quantiles of the observed values, so the sweep spans all depths."""
    values = trace.extras[key].flatten().double()
    qs = torch.linspace(0.02, 0.98, num, dtype=torch.float64)
    return sorted({float(v) for v in torch.quantile(values.cpu(), qs)})


def threshold_sweep(
    task: Task, val: Trace, test: Trace, key: str, thresholds: list[float] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sweep a threshold rule: a test curve, and a row at the threshold best on validation.

    Returns ``(row, curve)``: ``row`` is a table row (kind ``heuristic``); ``curve`` holds
    ``avg_layers`` and ``metric`` lists over the thresholds, for the plot.
    """
    label, _ = THRESHOLD_RULES[key]
    thresholds = thresholds or default_thresholds(val, key)
    best_tau, best_metric = thresholds[0], None
    curve: dict[str, Any] = {"label": label, "threshold": [], "avg_layers": [], "metric": []}
    for tau in thresholds:
        v_stop = threshold_stop(val, key, tau)
        v_metric = metric_at(task, val, v_stop)
        if best_metric is None or is_better(task, v_metric, best_metric):
            best_tau, best_metric = tau, v_metric
        summary = stop_summary(task, test, threshold_stop(test, key, tau))
        curve["threshold"].append(tau)
        curve["avg_layers"].append(summary["avg_layers"])
        curve["metric"].append(summary["metric"])
    row = {
        "method": f"{label}, tau={best_tau:.3g} (chosen on validation)",
        "kind": "heuristic",
        **stop_summary(task, test, threshold_stop(test, key, best_tau)),
    }
    return row, curve

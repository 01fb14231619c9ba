"""The accuracy-compute frontier: curves of metric against average layers, and their summary.

A *curve* is a list of points ``(avg_layers, metric)`` of one family of stop rules: a
learner trained at several layer prices, the fixed depths of a predictor, a heuristic's
threshold sweep, the label-using oracle at several prices. To compare curves at equal
compute, each is read as a *budget curve*

    f(b) = the best metric the family reaches with at most b layers on average,

keeping the best point at or below ``b`` and, between two consecutive points, what
running one rule on a fraction ``a`` of the instances and the other on the rest gives:
``a L_A + (1 - a) L_B`` layers and the task's aggregate of the mixed per-instance
statistics (``mix(stats_A, stats_B, a)``; for a metric that is a mean this is the straight
line, for NMSE in dB of a mean or a pooled accuracy it is not). Without per-instance
statistics a segment is the straight line. ``f(b)`` is undefined (NaN) below the family's
fewest layers. On a grid of budgets over ``[1, T]``:

- the *envelope* is the pointwise best of the label-free baselines' budget curves (fixed
  depths and heuristics): the baseline a learned rule must beat;
- ``dominance``: the fraction of budgets where a learner's curve is defined and at least
  as good as the envelope (ties count); ``strict_dominance``: where it is strictly better
  (a learner that only ties the baselines, e.g. one that learned a fixed depth, gets 0);
- ``oracle_gap_closed``: the signed area between the learner's curve and the envelope
  (zero where the learner is undefined) divided by the area between the oracle's curve
  and the envelope: 1 means the learner captures all of the oracle's gain, 0 none,
  negative worse than the baselines; NaN when the oracle has no gain to capture. The
  oracle minimises the loss (``l_t + lambda C_t``) per instance: its curve bounds every
  stop rule's where the metric follows the loss, and is only a reference where it does not
  (cross-entropy for accuracy);
- ``layers_to_match``: the fewest average layers at which the learner's curve reaches a
  target metric (e.g. the predictor's at full depth), or ``None``.

Everything here works on "scores", the metric with its sign flipped when lower is better,
so that larger is always better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Mix = Callable[[Any, Any, float], float]
"""``mix(stats_a, stats_b, a)``: the metric of running rule A on a fraction ``a`` of the
instances and rule B on the rest, from the two rules' per-instance statistics."""

GRID_POINTS = 200
"""Budgets on the grid over ``[1, T]`` (the issue asks for at least 20)."""


def budget_grid(num_layers: int, points: int = GRID_POINTS) -> np.ndarray:
    """``points`` budgets evenly spaced over ``[1, T]``."""
    return np.linspace(1.0, float(num_layers), max(points, 2))


def _score(metric: Sequence[float] | np.ndarray, higher_is_better: bool) -> np.ndarray:
    y = np.asarray(metric, dtype=np.float64)
    return y if higher_is_better else -y


def _sorted_points(
    x: Sequence[float], y: np.ndarray, stats: Sequence[Any] | None = None
) -> tuple[np.ndarray, np.ndarray, list[Any] | None]:
    """Points sorted by x; of several points at one x the best is kept; NaNs dropped (and
    each kept point's per-instance statistics, when given)."""
    xs = np.asarray(x, dtype=np.float64)
    keep = np.isfinite(xs) & np.isfinite(y)
    index = np.flatnonzero(keep)
    xs, ys = xs[keep], y[keep]
    order = np.lexsort((-ys, xs))
    xs, ys, index = xs[order], ys[order], index[order]
    first = np.ones(len(xs), dtype=bool)
    first[1:] = xs[1:] != xs[:-1]
    kept = None if stats is None else [stats[i] for i in index[first]]
    return xs[first], ys[first], kept


def _sign(higher_is_better: bool) -> float:
    return 1.0 if higher_is_better else -1.0


def budget_curve(
    avg_layers: Sequence[float],
    metric: Sequence[float],
    grid: np.ndarray,
    higher_is_better: bool,
    stats: Sequence[Any] | None = None,
    mix: Mix | None = None,
) -> np.ndarray:
    """Scores ``f(b)`` on ``grid`` (see the module doc); NaN below the fewest layers.

    With ``stats`` (each point's per-instance statistics) and ``mix``, a budget between two
    consecutive points gets the mixture of the two rules; otherwise the straight line."""
    xs, ys, st = _sorted_points(avg_layers, _score(metric, higher_is_better), stats)
    out = np.full(len(grid), np.nan)
    if len(xs) == 0:
        return out
    inside = grid >= xs[0]
    between = np.interp(grid, xs, ys)  # constant beyond the last point
    if st is not None and mix is not None and len(xs) > 1:
        sign = _sign(higher_is_better)
        seg = np.searchsorted(xs, grid, side="right") - 1
        for j, (b, i) in enumerate(zip(grid, seg, strict=True)):
            if 0 <= i < len(xs) - 1 and xs[i] < b < xs[i + 1]:
                a = (xs[i + 1] - b) / (xs[i + 1] - xs[i])  # the share of the cheaper rule
                between[j] = sign * mix(st[i], st[i + 1], float(a))
    # The best point at or below each budget (a running maximum over sorted points).
    best_so_far = np.maximum.accumulate(ys)
    idx = np.searchsorted(xs, grid, side="right") - 1
    at_or_below = np.where(idx >= 0, best_so_far[np.clip(idx, 0, None)], -np.inf)
    out[inside] = np.maximum(between, at_or_below)[inside]
    return out


def envelope(curves: Sequence[np.ndarray]) -> np.ndarray:
    """The pointwise best of budget curves (NaN only where every curve is NaN)."""
    stacked = np.vstack([np.asarray(c, dtype=np.float64) for c in curves])
    with np.errstate(all="ignore"):
        best = np.nanmax(np.where(np.isnan(stacked), -np.inf, stacked), axis=0)
    return np.where(np.isneginf(best), np.nan, best)


def _tolerance(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return 1e-9 * (1.0 + (float(finite.max()) if finite.size else 0.0))


def dominance(learner: np.ndarray, baseline: np.ndarray, strict: bool = False) -> float:
    """Share of budgets where ``learner`` is defined and >= ``baseline`` (scores); with
    ``strict``, where it is above it by more than float rounding."""
    tol = _tolerance(np.concatenate([learner, baseline]))
    base = np.nan_to_num(baseline, nan=-np.inf)
    ok = learner > base + tol if strict else learner >= base - tol
    return float((np.isfinite(learner) & ok).mean())


def _area(values: np.ndarray, grid: np.ndarray) -> float:
    """Trapezoid rule (``np.trapezoid`` is NumPy 2 only)."""
    return float(np.sum((values[1:] + values[:-1]) * np.diff(grid)) / 2.0)


def oracle_gap_closed(
    learner: np.ndarray, baseline: np.ndarray, oracle: np.ndarray, grid: np.ndarray
) -> float:
    """Signed area learner-vs-baseline over oracle-vs-baseline (scores on ``grid``)."""
    defined = np.isfinite(baseline)
    gap_l = np.where(np.isfinite(learner) & defined, learner - baseline, 0.0)
    gap_o = np.where(np.isfinite(oracle) & defined, oracle - baseline, 0.0)
    denom = _area(gap_o, grid)
    if not denom > _tolerance(np.concatenate([oracle, baseline])) * (grid[-1] - grid[0]):
        return math.nan
    return _area(gap_l, grid) / denom


def layers_to_match(
    avg_layers: Sequence[float],
    metric: Sequence[float],
    target: float,
    higher_is_better: bool,
    stats: Sequence[Any] | None = None,
    mix: Mix | None = None,
) -> float | None:
    """The fewest average layers at which the curve through the points reaches ``target``.

    Walks the points in order of layers: the first point at least as good as the target,
    or the first crossing of the segment between two consecutive points (the mixture of
    the two rules with ``stats`` and ``mix``, found by bisection; else the straight line).
    """
    xs, ys, st = _sorted_points(avg_layers, _score(metric, higher_is_better), stats)
    goal = float(_score([target], higher_is_better)[0])
    tol = _tolerance(np.append(ys, goal))
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if y >= goal - tol:
            return float(x)
        if i + 1 < len(xs) and ys[i + 1] >= goal - tol:
            x1, y1 = xs[i + 1], ys[i + 1]
            if st is not None and mix is not None:
                return _mixture_crossing(st[i], st[i + 1], x, x1, goal, higher_is_better, mix)
            return float(x + (goal - y) / (y1 - y) * (x1 - x)) if y1 != y else float(x1)
    return None


def _mixture_crossing(
    sa: Any, sb: Any, xa: float, xb: float, goal: float, higher_is_better: bool, mix: Mix
) -> float:
    """The fewest layers on the mixture of rules A (at ``xa``, below the goal) and B (at
    ``xb``, reaching it) whose score reaches ``goal``: bisection on B's share."""
    sign = _sign(higher_is_better)
    lo, hi = 0.0, 1.0  # B's share: 0 misses the goal, 1 reaches it
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if sign * mix(sb, sa, mid) >= goal:
            hi = mid
        else:
            lo = mid
    return float((1 - hi) * xa + hi * xb)


Points = tuple  # (avg_layers, metric) or (avg_layers, metric, per-point statistics)
"""A curve's points: ``(avg_layers, metric)``, or with each point's per-instance statistics
as a third item (then its segments are mixtures, given a ``mix``)."""


def _curve(points: Points, grid: np.ndarray, higher_is_better: bool, mix: Mix | None) -> np.ndarray:  # fmt: skip
    stats = points[2] if len(points) > 2 else None
    return budget_curve(points[0], points[1], grid, higher_is_better, stats, mix)


def _match(points: Points, target: float, higher_is_better: bool, mix: Mix | None) -> float | None:
    stats = points[2] if len(points) > 2 else None
    return layers_to_match(points[0], points[1], target, higher_is_better, stats, mix)


def summarize(
    learner_points: Points,
    baselines: Sequence[Points],
    oracle_points: Points,
    num_layers: int,
    higher_is_better: bool,
    full_depth_metric: float,
    mix: Mix | None = None,
) -> dict[str, float | None]:
    """``dominance``, ``strict_dominance``, ``oracle_gap_closed`` and
    ``layers_to_match_full_depth`` of a learner. Points with per-instance statistics get
    mixture segments when ``mix`` is given (see the module doc)."""
    grid = budget_grid(num_layers)
    env = envelope([_curve(b, grid, higher_is_better, mix) for b in baselines])
    learner = _curve(learner_points, grid, higher_is_better, mix)
    oracle = _curve(oracle_points, grid, higher_is_better, mix)
    return {
        "dominance": dominance(learner, env),
        "strict_dominance": dominance(learner, env, strict=True),
        "oracle_gap_closed": oracle_gap_closed(learner, env, oracle, grid),
        "layers_to_match_full_depth": _match(
            learner_points, full_depth_metric, higher_is_better, mix
        ),  # fmt: skip
    }


def reference_layers_to_match(
    baselines: Sequence[Points],
    oracle_points: Points,
    higher_is_better: bool,
    full_depth_metric: float,
    mix: Mix | None = None,
) -> dict[str, float | None]:
    """``layers_to_match`` of what a learner is measured against, for reading its own.

    ``oracle``: the label-using oracle's frontier (where the metric follows the loss no
    stop policy can do better, so a target of fewer layers than this is out of reach);
    ``baselines``: the upper envelope of the label-free baselines (the first budget at
    which any of them reaches the target, which is the envelope's first crossing).
    """
    matches = [_match(b, full_depth_metric, higher_is_better, mix) for b in baselines]
    reached = [m for m in matches if m is not None]
    return {
        "oracle": _match(oracle_points, full_depth_metric, higher_is_better, mix),
        "baselines": min(reached) if reached else None,
    }


__all__ = [
    "GRID_POINTS",
    "budget_curve",
    "budget_grid",
    "dominance",
    "envelope",
    "layers_to_match",
    "oracle_gap_closed",
    "reference_layers_to_match",
    "summarize",
]

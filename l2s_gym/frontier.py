"""The accuracy-compute frontier: curves of metric against average layers, and their summary.

A *curve* is a list of points ``(avg_layers, metric)`` of one family of stop rules: a
learner trained at several layer prices, the fixed depths of a predictor, a heuristic's
threshold sweep, the label-using oracle at several prices. To compare curves at equal
compute, each is read as a *budget curve*

    f(b) = the best metric the family reaches with at most b layers on average,

interpolating linearly between its points (mixing two rules instance by instance reaches
any point between them) and keeping the best point at or below ``b``; ``f(b)`` is
undefined (NaN) below the family's fewest layers. On a grid of budgets over ``[1, T]``:

- the *envelope* is the pointwise best of the label-free baselines' budget curves (fixed
  depths and heuristics): the baseline a learned rule must beat;
- ``dominance``: the fraction of budgets where a learner's curve is defined and at least
  as good as the envelope;
- ``oracle_gap_closed``: the signed area between the learner's curve and the envelope
  (zero where the learner is undefined) divided by the area between the oracle's curve
  and the envelope: 1 means the learner captures all of the oracle's gain, 0 none,
  negative worse than the baselines; NaN when the oracle has no gain to capture;
- ``layers_to_match``: the fewest average layers at which the learner's curve reaches a
  target metric (e.g. the predictor's at full depth), or ``None``.

Everything here works on "scores", the metric with its sign flipped when lower is better,
so that larger is always better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

GRID_POINTS = 200
"""Budgets on the grid over ``[1, T]`` (the issue asks for at least 20)."""


def budget_grid(num_layers: int, points: int = GRID_POINTS) -> np.ndarray:
    """``points`` budgets evenly spaced over ``[1, T]``."""
    return np.linspace(1.0, float(num_layers), max(points, 2))


def _score(metric: Sequence[float] | np.ndarray, higher_is_better: bool) -> np.ndarray:
    y = np.asarray(metric, dtype=np.float64)
    return y if higher_is_better else -y


def _sorted_points(x: Sequence[float], y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points sorted by x; of several points at one x the best is kept; NaNs dropped."""
    xs = np.asarray(x, dtype=np.float64)
    keep = np.isfinite(xs) & np.isfinite(y)
    xs, ys = xs[keep], y[keep]
    order = np.lexsort((-ys, xs))
    xs, ys = xs[order], ys[order]
    first = np.ones(len(xs), dtype=bool)
    first[1:] = xs[1:] != xs[:-1]
    return xs[first], ys[first]


def budget_curve(
    avg_layers: Sequence[float],
    metric: Sequence[float],
    grid: np.ndarray,
    higher_is_better: bool,
) -> np.ndarray:
    """Scores ``f(b)`` on ``grid`` (see the module doc); NaN below the fewest layers."""
    xs, ys = _sorted_points(avg_layers, _score(metric, higher_is_better))
    out = np.full(len(grid), np.nan)
    if len(xs) == 0:
        return out
    inside = grid >= xs[0]
    interp = np.interp(grid, xs, ys)  # constant beyond the last point
    # The best point at or below each budget (a running maximum over sorted points).
    best_so_far = np.maximum.accumulate(ys)
    idx = np.searchsorted(xs, grid, side="right") - 1
    at_or_below = np.where(idx >= 0, best_so_far[np.clip(idx, 0, None)], -np.inf)
    out[inside] = np.maximum(interp, at_or_below)[inside]
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


def dominance(learner: np.ndarray, baseline: np.ndarray) -> float:
    """Share of budgets where ``learner`` is defined and >= ``baseline`` (scores)."""
    tol = _tolerance(np.concatenate([learner, baseline]))
    ok = np.isfinite(learner) & (learner >= np.nan_to_num(baseline, nan=-np.inf) - tol)
    return float(ok.mean())


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
) -> float | None:
    """The fewest average layers at which the curve through the points reaches ``target``.

    Walks the points in order of layers: the first point at least as good as the target,
    or the first crossing of the straight segment between two consecutive points.
    """
    xs, ys = _sorted_points(avg_layers, _score(metric, higher_is_better))
    goal = float(_score([target], higher_is_better)[0])
    tol = _tolerance(np.append(ys, goal))
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if y >= goal - tol:
            return float(x)
        if i + 1 < len(xs) and ys[i + 1] >= goal - tol:
            x1, y1 = xs[i + 1], ys[i + 1]
            return float(x + (goal - y) / (y1 - y) * (x1 - x)) if y1 != y else float(x1)
    return None


def summarize(
    learner_points: tuple[Sequence[float], Sequence[float]],
    baselines: Sequence[tuple[Sequence[float], Sequence[float]]],
    oracle_points: tuple[Sequence[float], Sequence[float]],
    num_layers: int,
    higher_is_better: bool,
    full_depth_metric: float,
) -> dict[str, float | None]:
    """``dominance``, ``oracle_gap_closed`` and ``layers_to_match_full_depth`` of a learner."""
    grid = budget_grid(num_layers)
    env = envelope([budget_curve(x, y, grid, higher_is_better) for x, y in baselines])
    learner = budget_curve(*learner_points, grid, higher_is_better)
    oracle = budget_curve(*oracle_points, grid, higher_is_better)
    return {
        "dominance": dominance(learner, env),
        "oracle_gap_closed": oracle_gap_closed(learner, env, oracle, grid),
        "layers_to_match_full_depth": layers_to_match(
            *learner_points, full_depth_metric, higher_is_better
        ),
    }


def reference_layers_to_match(
    baselines: Sequence[tuple[Sequence[float], Sequence[float]]],
    oracle_points: tuple[Sequence[float], Sequence[float]],
    higher_is_better: bool,
    full_depth_metric: float,
) -> dict[str, float | None]:
    """``layers_to_match`` of what a learner is measured against, for reading its own.

    ``oracle``: the label-using oracle's frontier (no stop policy can do better, so a
    target of fewer layers than this is out of reach); ``baselines``: the upper envelope
    of the label-free baselines (the first budget at which any of them reaches the
    target, which is the envelope's first crossing).
    """
    matches = [layers_to_match(x, y, full_depth_metric, higher_is_better) for x, y in baselines]
    reached = [m for m in matches if m is not None]
    return {
        "oracle": layers_to_match(*oracle_points, full_depth_metric, higher_is_better),
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

"""The typed results of a run: what ``l2s_gym.results`` computes and ``l2s_gym.report`` reads.

``results.json`` is written from these (``to_json``): a field that is ``None`` is left out,
and a few fields carry the JSON name they always had (``Curve.lambdas`` is ``"lambda"``).

- ``Row``: one line of the comparison table (a fixed depth, a heuristic, the oracle, a
  learner), with its metric, average layers and **objective** (the test mean of
  ``l_t + lambda C_t`` at its stops), each with a 95% interval;
- ``Curve``: one family of stop rules on the accuracy-compute frontier;
- ``PairedDifference``: a row against the primary learner, paired over test instances;
- ``FrontierSummary``: dominance, oracle gap closed and layers to match, per learner;
- ``TimeToTarget``: when a learner first reached the best RL learner's final figure;
- ``Health``: whether a learner's policy moved, and if it collapsed;
- ``SeedResult``: all of the above for one seed; ``RunResults``: over seeds, the run's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

Interval = list[float] | None


def to_json(obj: Any) -> Any:
    """Plain JSON data from a result (dataclasses, lists, dicts, numbers)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if (
                value is None
                or f.metadata.get("skip")
                or f.metadata.get("skip_empty")
                and not value
            ):
                continue
            out[f.metadata.get("json", f.name)] = to_json(value)
        return out
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    return obj


def _empty_list() -> Any:
    return field(default_factory=list, metadata={"skip_empty": True})


@dataclass
class Point:
    """A stop rule's metric and average layers (overall and per group)."""

    metric: float
    avg_layers: float
    groups: dict[str, float] = field(default_factory=dict)


@dataclass
class SeedRow:
    """One seed's figures of a row (in ``Row.per_seed`` over seeds)."""

    seed: int
    metric: float
    avg_layers: float
    objective: float
    method: str | None = None
    """Set where this seed's row is named differently (a depth chosen per seed)."""


@dataclass
class Row:
    """One row of the comparison table."""

    id: str
    method: str
    kind: str
    """``classical``, ``fixed``, ``oracle``, ``heuristic`` or ``learner``."""
    metric: float
    avg_layers: float
    objective: float
    """Mean of ``l_t + lambda C_t`` at the row's stops (``lambda``: the table's price)."""
    ci95: Interval
    objective_ci95: Interval
    groups: dict[str, float] = field(default_factory=dict)
    histogram: list[int] | None = None
    ci_over: str = "test instances"
    readout: str | None = None
    stochastic: Point | None = None
    paper_rule: Point | None = None
    learner: str | None = None
    depth: int | None = None
    training: str | None = None
    threshold: float | None = None
    train_wall_time_s: float | None = None
    layer_evals: float | None = None
    best_val_metric: float | None = None
    health: str | None = None
    """For a learner: ``ok`` or what went wrong (``Health.status``)."""
    per_seed: list[SeedRow] = _empty_list()


@dataclass
class Curve:
    """A family of stop rules on the frontier: points ``(avg_layers, metric)``."""

    kind: str
    """``fixed``, ``heuristic``, ``oracle``, ``learned`` (a learner over prices) or ``sweep``
    (one trained policy, its read-out swept)."""
    param: list[float]
    avg_layers: list[float]
    metric: list[float]
    ci_low: list[float | None]
    ci_high: list[float | None]
    learner: str | None = None
    price: float | None = None
    cost: list[float] | None = None
    lambdas: list[float] | None = field(default=None, metadata={"json": "lambda"})
    objective: list[float] | None = None
    """Learned curves: each point's objective at its own price ``lambda``."""
    band_over: str | None = None
    stats: list[Any] | None = field(default=None, repr=False, metadata={"skip": True})
    """Each point's per-instance metric statistics (one seed's curves only; not written to
    ``results.json``): the frontier maths mixes two points' rules with them."""
    objective_values: list[Any] | None = field(default=None, repr=False, metadata={"skip": True})
    """Learned curves, one seed's: each point's per-instance ``l_stop + lambda C_stop`` (not
    written): the one policy is compared with the per-price policies with them."""


@dataclass
class PairedDifference:
    """A row minus the primary learner (reverse KL): metric and objective, paired."""

    method: str
    difference: float
    ci95: Interval
    objective_difference: float
    objective_ci95: Interval
    ci_over: str = "test instances (paired)"
    seed: int | None = None
    per_seed: list[PairedDifference] = _empty_list()


@dataclass
class FrontierSummary:
    """A learner's frontier summary (over seeds: the mean, a t interval, per-seed values)."""

    dominance: float | None
    oracle_gap_closed: float | None
    layers_to_match_full_depth: float | None
    strict_dominance: float | None = None
    """The share of budgets where the learner is strictly better than every baseline
    (``dominance`` counts ties)."""
    dominance_ci95: Interval = None
    oracle_gap_closed_ci95: Interval = None
    layers_to_match_full_depth_ci95: Interval = None
    strict_dominance_ci95: Interval = None
    dominance_per_seed: list[float | None] | None = None
    oracle_gap_closed_per_seed: list[float | None] | None = None
    layers_to_match_full_depth_per_seed: list[float | None] | None = None
    strict_dominance_per_seed: list[float | None] | None = None


@dataclass
class LayersToMatch:
    """A reference's layers to match full depth over seeds (``None``: some seed never)."""

    layers_to_match_full_depth: float | None
    layers_to_match_full_depth_ci95: Interval = None
    layers_to_match_full_depth_per_seed: list[float | None] | None = None


@dataclass
class TimeToTarget:
    """When a learner first reached the target: the best RL learner's final validation
    metric (at no layer price) or objective (with one)."""

    target: float | None
    target_learner: str
    criterion: str
    """``metric`` or ``objective``."""
    wall_time_s: float | None
    layer_evals: float | None
    final_wall_time_s: float | None
    final_layer_evals: float | None
    reached: str | None = None
    seed: int | None = None
    per_seed: list[TimeToTarget] = _empty_list()


@dataclass
class Health:
    """Whether a stage-2 trial's policy left its initial behaviour (on validation)."""

    key: str
    learner: str
    cost: float
    status: str
    """``ok``, ``untrained`` (the kept checkpoint is the initial policy), ``never stops`` or
    ``always stops`` (while the oracle's depth differs)."""
    message: str
    val_avg_layers: float | None = None
    oracle_val_avg_layers: float | None = None
    seed: int | None = None


@dataclass
class ThresholdCurve:
    """A heuristic's threshold sweep on the test set (for the metric-vs-layers plot)."""

    label: str
    threshold: list[float]
    avg_layers: list[float]
    metric: list[float]


LearningCurve = list[dict[str, float | str]]
"""A learner's validation points (``l2s_gym.learner.Validator``): ``step``, ``layer_evals``,
``wall_time_s``, ``val_objective``, ``val_metric``, ``val_avg_layers``, ..."""


@dataclass
class SeedResult:
    """Everything one seed's trials give, scored on one split."""

    seed: int
    group_names: list[str]
    num_layers: int
    predictor: str
    test_size: int
    gain_per_layer: float
    compare_lambda: float
    rows: list[Row]
    paired_differences: dict[str, PairedDifference]
    heuristic_curves: dict[str, ThresholdCurve]
    depth_curves: dict[str, list[float]]
    frontiers: dict[str, Curve]
    frontier_summary: dict[str, FrontierSummary]
    frontier_sweep_summary: dict[str, FrontierSummary]
    frontier_reference: dict[str, float | None]
    full_depth_metric: float
    learning_curves: dict[str, LearningCurve]
    time_to_target: dict[str, TimeToTarget]
    health: list[Health] = field(default_factory=list)
    metric_follows_loss: bool = False
    one_policy_paired: dict[str, dict[str, PairedDifference]] = field(
        default_factory=dict, metadata={"skip_empty": True}
    )
    """Per learner with a one policy, per grid price (``format_cost``): the one policy minus
    the learner's per-price policy at that price, paired over the test instances."""


@dataclass
class FailedTrial:
    key: str
    status: str
    error: str
    attempts: int = 0
    trial: dict[str, Any] | None = None


@dataclass
class RunResults:
    """A run's results over its seeds: what ``results.json`` and ``results.md`` hold."""

    experiment: str
    metric: str
    higher_is_better: bool
    rows: list[Row] = field(default_factory=list)
    mode: str = "compare"
    eval_split: str = "test"
    task: str = ""
    num_layers: int = 0
    device: str = ""
    test_size: int = 0
    group_title: str = "group"
    group_names: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    cost_scale: str = "loss"
    compare_cost: float = 0.0
    compare_lambda: float = 0.0
    """The compare price in units of the loss (``compare_cost`` times the gain per layer
    where ``cost_scale`` is ``gain``; the first seed's)."""
    paired_differences: dict[str, PairedDifference] = field(default_factory=dict)
    time_to_target: dict[str, TimeToTarget] = field(default_factory=dict)
    frontiers: dict[str, Curve] = field(default_factory=dict)
    frontier_summary: dict[str, FrontierSummary] = field(default_factory=dict)
    frontier_sweep_summary: dict[str, FrontierSummary] = field(default_factory=dict)
    frontier_reference: dict[str, LayersToMatch] = field(default_factory=dict)
    one_policy_paired: dict[str, dict[str, PairedDifference]] = field(
        default_factory=dict, metadata={"skip_empty": True}
    )
    """``SeedResult.one_policy_paired`` over seeds (mean, t interval; ``per_seed``)."""
    full_depth_metric: float | None = None
    depth_curves: dict[str, list[float]] = field(default_factory=dict)
    heuristic_curves: dict[str, ThresholdCurve] = field(default_factory=dict)
    learning_curves: dict[str, LearningCurve] = field(default_factory=dict)
    health: list[Health] = field(default_factory=list)
    metric_follows_loss: bool = False
    """Whether, on every test instance, the layer of least loss is also the layer of best
    metric (then the oracle bounds the metric at no price, not only the objective)."""
    per_seed: list[SeedResult] = field(default_factory=list)
    failed: list[FailedTrial] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return to_json(self)


__all__ = [
    "Curve",
    "FailedTrial",
    "FrontierSummary",
    "Health",
    "LayersToMatch",
    "PairedDifference",
    "Point",
    "Row",
    "RunResults",
    "SeedResult",
    "SeedRow",
    "ThresholdCurve",
    "TimeToTarget",
    "to_json",
]

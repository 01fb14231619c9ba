"""From finished trials to results: rows, frontiers, intervals, seeds, time to target.

The one evaluation of a run (``evaluate_run``): every row and every curve is scored on
the seeded test set through ``l2s_gym.evaluation``; every choice (a fixed depth, a
heuristic's threshold, a learner's read-out and checkpoint) was made on the validation
set before. One seed is scored by small steps (``evaluate_seed``): the baselines' rows,
the learners' rows and frontier points, the paired differences, the frontier curves and
their summaries, the time to target. The results are typed (``l2s_gym.result_types``).

Every row carries the metric and the **objective**, ``mean_i l_{stop_i} + lambda
C_{stop_i}`` at the table's price: with a price per layer the objective is what the
learners, the oracle and the validation choices optimise, and the metric alone would
rank a rule that never stops first. Intervals:

- over test instances: a bootstrap of the task's metric, and of the objective's mean (the
  same resamples for every row of a seed, so differences between rows are paired);
- over seeds (``--seeds``): a t interval of the per-seed values (their mean is what the
  table shows). With one seed, rows carry the test-instance interval.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats as scipy_stats
from torch import Tensor

from l2s_gym import frontier as fr
from l2s_gym import registry
from l2s_gym.build import make_policy
from l2s_gym.config import ExperimentConfig
from l2s_gym.evaluation import (
    choose_readout,
    depth_curve,
    evaluate_stop_logits,
    is_better,
    metric_at,
    metric_follows_loss,
    stop_logits,
    stop_objective,
    stop_summary,
    threshold_sweep,
)
from l2s_gym.learner import health_verdict
from l2s_gym.predictor import LayeredPredictor, Trace
from l2s_gym.result_types import (
    Curve,
    FailedTrial,
    FrontierSummary,
    Health,
    LayersToMatch,
    PairedDifference,
    Point,
    Row,
    RunResults,
    SeedResult,
    SeedRow,
    ThresholdCurve,
    TimeToTarget,
)
from l2s_gym.risk import calibrate_risk, default_risk
from l2s_gym.rules import (
    THRESHOLD_RULES,
    ReadoutRule,
    fixed_depth_stop,
    oracle_stop,
    quantile_thresholds,
    threshold_stop,
)
from l2s_gym.runs import load_policy
from l2s_gym.stopping import cost_adjusted_losses, cumulative_costs, gain_per_layer
from l2s_gym.task import Task
from l2s_gym.trials import (
    PLAN_KEYS,
    RUNTIME_KEYS,
    Trial,
    TrialOutcome,
    format_cost,
    load_stop_model,
    load_traces,
    trial_config,
)

IGNORED = PLAN_KEYS + RUNTIME_KEYS
"""Config keys a run's checkpoints may differ in from the run's config (they select trials)."""
BOOTSTRAP = 500
"""Bootstrap resamples of the test set for every interval over test instances."""
ORACLE_PRICES = [0.0, *np.geomspace(1e-3, 1e4, 71).tolist()]
"""The oracle frontier's layer prices, in units of the stop model's gain per layer."""
HEURISTIC_POINTS = 24
"""Thresholds in a heuristic's frontier sweep (at quantiles of the observed values)."""
SWEEP_QUANTILES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
"""Read-out quantiles ``q`` of one trained policy's sweep (a frontier at no training cost):
the quantile rule at each, on the policy trained at the compare price (a frontier's lowest)."""
ORACLE_CURVE = "oracle (label-using)"


def t_quantile(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom."""
    if dof <= 0:
        return math.nan
    return float(scipy_stats.t.ppf(0.975, dof))


def seed_interval(values: list[float | None]) -> list[float] | None:
    """A 95% t interval of the mean of per-seed ``values`` (``None`` for fewer than two)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if len(v) < 2:
        return None
    mean, sd = float(np.mean(v)), float(np.std(v, ddof=1))
    half = t_quantile(len(v) - 1) * sd / math.sqrt(len(v))
    return [mean - half, mean + half]


def _mean(values: list[float | None]) -> float | None:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return float(np.mean(v)) if v else None


class Bootstrap:
    """Paired bootstrap over one seed's test instances (the same resamples for every row)."""

    def __init__(self, task: Task, n: int, seed: int, resamples: int = BOOTSTRAP) -> None:
        gen = torch.Generator().manual_seed(7919 + seed)
        self.task = task
        self.idx = torch.randint(n, (resamples, n), generator=gen)

    def values(self, stats: Tensor) -> np.ndarray:
        s = stats.detach().cpu()
        return np.array([self.task.aggregate(s[i]) for i in self.idx])

    def means(self, values: Tensor) -> np.ndarray:
        return values.detach().cpu().double()[self.idx].mean(dim=1).numpy()

    def interval(self, stats: Tensor) -> list[float]:
        return _percentiles(self.values(stats))

    def difference(self, a: Tensor, b: Tensor) -> list[float]:
        """95% interval of ``metric(a) - metric(b)`` (paired: same instances)."""
        return _percentiles(self.values(a) - self.values(b))

    def mean_interval(self, values: Tensor) -> list[float]:
        """95% interval of the mean of per-instance ``values`` (the objective)."""
        return _percentiles(self.means(values))

    def mean_difference(self, a: Tensor, b: Tensor) -> list[float]:
        return _percentiles(self.means(a) - self.means(b))


def _percentiles(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _stats_at(trace: Trace, stop: Tensor) -> Tensor:
    return trace.metric_stats.gather(1, stop.long().unsqueeze(1)).squeeze(1)


def _pick_depth(task: Task, val: Trace, cost: float, cum: Tensor) -> tuple[int, float]:
    """The fixed depth chosen on validation: best metric at no cost, least objective else."""
    best_k, best_score = 1, -math.inf
    for k in range(1, val.num_layers + 1):
        stop = fixed_depth_stop(val, k)
        if cost:
            score = -stop_objective(val, stop, cost, cum)
        else:
            m = metric_at(task, val, stop)
            score = m if task.higher_is_better else -m
        if score > best_score:
            best_k, best_score = k, score
    return best_k, best_score


# --- one seed: the context every step shares -----------------------------------------------


@dataclass
class _Seed:
    """What every step of one seed's evaluation reads."""

    seed: int
    cfg: ExperimentConfig
    task: Task
    predictor: LayeredPredictor
    test: Trace
    val: Trace
    test_fixed: Trace
    val_fixed: Trace
    cum: Tensor
    unit: float
    lam: float
    """The compare price in units of the loss."""
    boot: Bootstrap
    stage1: dict
    rows: list[Row] = field(default_factory=list)
    stats: dict[str, Tensor] = field(default_factory=dict)
    """Per-instance metric statistics of each row, for paired differences."""
    objectives: dict[str, Tensor] = field(default_factory=dict)
    """Per-instance objective of each row."""

    @property
    def T(self) -> int:
        return self.test.num_layers

    @property
    def name(self) -> str:
        return self.predictor.display_name

    def objective_stats(self, trace: Trace, stop: Tensor) -> Tensor:
        adjusted = cost_adjusted_losses(trace.losses, self.lam, self.cum)
        return adjusted.gather(1, stop.long().unsqueeze(1)).squeeze(1).double()

    def add_row(self, row_id: str, method: str, kind: str, trace: Trace, stop: Tensor, **extra):  # noqa: ANN003, ANN201
        """Score a stop rule on ``trace`` and append its row."""
        summary = stop_summary(self.task, trace, stop)
        row = self._row(row_id, method, kind, trace, stop, summary, **extra)
        self.rows.append(row)
        return row

    def _row(self, row_id, method, kind, trace, stop, summary, **extra) -> Row:  # noqa: ANN001, ANN003
        stats = _stats_at(trace, stop)
        objective = self.objective_stats(trace, stop)
        self.stats[row_id], self.objectives[row_id] = stats, objective
        return Row(
            id=row_id,
            method=method,
            kind=kind,
            metric=summary["metric"],
            avg_layers=summary["avg_layers"],
            objective=float(objective.mean()),
            ci95=self.boot.interval(stats),
            objective_ci95=self.boot.mean_interval(objective),
            groups=summary["groups"],
            histogram=summary["histogram"],
            **extra,
        )


def _load_seed(run_dir: Path, cfg_dict: dict, seed: int, trials: list[Trial], compare_cost: float, split: str) -> _Seed:  # fmt: skip
    cfg = trial_config(cfg_dict, seed)
    task, predictor = load_stop_model(run_dir, cfg, seed, torch.device("cpu"))
    stage1_dir = run_dir / Trial("stage1", seed).key
    traces = load_traces(stage1_dir)
    v_stop = traces["oracle"]["val"]
    unit = gain_per_layer(v_stop)
    scale = trials[0].scale if trials else "loss"
    lam = compare_cost * (unit if scale == "gain" else 1.0)
    test = traces["oracle"][split]
    return _Seed(
        seed=seed,
        cfg=cfg,
        task=task,
        predictor=predictor,
        test=test,
        val=v_stop,
        test_fixed=traces["fixed"][split],
        val_fixed=traces["fixed"]["val"],
        cum=cumulative_costs(test.num_layers, predictor.layer_costs()),
        unit=unit,
        lam=lam,
        boot=Bootstrap(task, len(test), seed),
        stage1=_stage1_result(stage1_dir),
    )


# --- the steps ------------------------------------------------------------------------------


def baseline_rows(s: _Seed, split: str) -> dict[str, ThresholdCurve]:
    """Classical methods, the fixed depths, the oracle and the heuristics; returns the
    heuristics' test curves."""
    task, T, P = s.task, s.T, s.name
    for label, baseline in registry.classical_baselines(task, T):
        bs = s.cfg.compare.eval_batch_size
        tr = baseline.to("cpu").trace_eval(task.eval_set(split), task, bs)
        s.add_row(f"classical:{label}", label, "classical", tr, fixed_depth_stop(tr, baseline.num_layers))  # fmt: skip
    s1 = s.stage1
    trained = _trained(s)
    s.add_row("fixed_T", f"{P} (T={T})", "fixed", s.test_fixed, fixed_depth_stop(s.test_fixed, T),
              train_wall_time_s=s1["fixed"]["wall_time_s"], layer_evals=s1["fixed"]["layer_evals"])  # fmt: skip
    # The strongest honest fixed-depth rival: the best (model, depth) on validation.
    k_fixed, score_fixed = _pick_depth(task, s.val_fixed, s.lam, s.cum)
    k_stop, score_stop = _pick_depth(task, s.val, s.lam, s.cum)
    if score_stop > score_fixed:
        which, k, trace = "oracle", k_stop, s.test
    else:
        which, k, trace = "fixed-depth", k_fixed, s.test_fixed
    training = f"{which} training" if trained else "untrained"
    s.add_row("best_fixed", f"{P} best fixed depth (k={k}, {training}; chosen on validation)",
              "fixed", trace, fixed_depth_stop(trace, k), depth=k, training=which)  # fmt: skip
    follows = s.lam == 0 and metric_follows_loss(task, s.test)
    bound = "the objective and the metric" if follows else "the objective"
    s.add_row("oracle", f"{P}-stop oracle (label-using bound on {bound})", "oracle", s.test,
              oracle_stop(s.test, s.lam, s.cum), train_wall_time_s=s1["oracle"]["wall_time_s"],
              layer_evals=s1["oracle"]["layer_evals"])  # fmt: skip
    curves: dict[str, ThresholdCurve] = {}
    for key in THRESHOLD_RULES:
        if key in s.test.extras:
            row, curve = threshold_sweep(task, s.val, s.test, key, cost=s.lam, cum_costs=s.cum)
            tau = row["threshold"]
            s.add_row(f"heuristic:{key}", row["method"], "heuristic", s.test,
                      threshold_stop(s.test, key, tau), threshold=tau)  # fmt: skip
            curves[key] = ThresholdCurve(**curve)
    return curves


@dataclass
class _Learned:
    """The learners' trials of one seed, scored: frontier points, curves, health."""

    points: dict[str, Curve] = field(default_factory=dict)
    sweep_logits: dict[str, Tensor] = field(default_factory=dict)
    curves: dict[str, list] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    health: list[Health] = field(default_factory=list)


def _load_policy(s: _Seed, folder: Path, price_input: bool = False):  # noqa: ANN202
    policy = make_policy(s.cfg, s.predictor, price_input=price_input)
    load_policy(folder / "best.pt", policy, s.cfg, s.task, ignore=IGNORED, warn=lambda _: None)
    return policy


def learner_rows(s: _Seed, run_dir: Path, trials: list[Trial], compare_cost: float) -> _Learned:
    """Every learner at every cost: a test row at the compare price, frontier points, the
    validation curves and the health of each trial."""
    out = _Learned()
    for trial in trials:
        result = _trial_result(run_dir / trial.key)
        if result is None:
            continue
        out.results[trial.key] = result
        rule = ReadoutRule.from_dict(result["readout"])
        policy = _load_policy(s, run_dir / trial.key)
        logits = stop_logits(policy, s.test)
        summary = evaluate_stop_logits(s.task, s.test, logits, seed=s.seed, rule=rule)
        stop = rule.stop(logits)
        pts = out.points.setdefault(trial.learner, _empty_learned_curve(trial.learner))
        _add_point(s, pts, trial.cost, result["lambda"], stop, summary)
        out.curves[f"{trial.learner}@{format_cost(trial.cost)}"] = result["curve"]
        health = _health_of(trial, result, s.T)
        if health is not None:
            out.health.append(health)
        if trial.cost == compare_cost:
            out.sweep_logits[trial.learner] = logits
            _learner_row(s, trial, result, summary, stop, health)
            if trial.learner == "reverse_kl":
                _risk_row(s, stop_logits(policy, s.val), logits)
    return out


ONE_POLICY_SUFFIX = " (one policy)"
"""A price-conditioned policy's key in ``frontier_summary``: ``"<learner> (one policy)"``."""


def one_policy_key(learner: str) -> str:
    return learner + ONE_POLICY_SUFFIX


def one_policy_curve_name(learner: str) -> str:
    """The frontier curve of ``learner``'s price-conditioned policy (``--one-policy``): not
    to be confused with ``sweep_curve_name``'s price-0 policy whose read-out is swept."""
    label = registry.LEARNER_LABELS.get(learner, learner)
    return f"{label}, one price-conditioned policy for every price"


def one_policy_points(s: _Seed, run_dir: Path, trial: Trial, out: _Learned) -> None:
    """A price-conditioned trial's frontier points: at every price of the run's grid
    (``frontier.costs``) its dial set to that price and its read-out chosen on the
    validation trace at that price (as for a per-price policy), then scored on ``s.test``."""
    result = _trial_result(run_dir / trial.key)
    if result is None:
        return
    out.results[trial.key] = result
    policy = _load_policy(s, run_dir / trial.key, price_input=True)
    scale = 1.0 if trial.scale == "loss" else s.unit
    key = one_policy_key(trial.learner)
    pts = out.points.setdefault(key, _empty_learned_curve(key))
    for cost in s.cfg.frontier.costs:
        lam = cost * scale
        policy.set_price(lam)
        rule, _ = choose_readout(s.val, stop_logits(policy, s.val), lam, s.cum)
        logits = stop_logits(policy, s.test)
        summary = evaluate_stop_logits(s.task, s.test, logits, seed=s.seed, rule=rule)
        _add_point(s, pts, cost, lam, rule.stop(logits), summary)
    health = _health_of(trial, result, s.T)
    if health is not None:
        out.health.append(replace(health, learner=key))


def _add_point(s: _Seed, pts: Curve, cost: float, lam: float, stop: Tensor, summary: dict) -> Tensor:  # fmt: skip
    """Append one price's point to a learned curve; returns its per-instance statistics."""
    stats = _stats_at(s.test, stop)
    lo, hi = s.boot.interval(stats)
    adjusted = cost_adjusted_losses(s.test.losses, lam, s.cum)
    objective = adjusted.gather(1, stop.unsqueeze(1)).squeeze(1)
    pts.stats.append(stats)  # type: ignore[union-attr]
    for target, value in (
        (pts.cost, cost), (pts.lambdas, lam),
        (pts.avg_layers, summary["avg_layers"]), (pts.metric, summary["metric"]),
        (pts.ci_low, lo), (pts.ci_high, hi),
        (pts.objective, float(objective.double().mean())),
        (pts.objective_values, objective),
    ):  # fmt: skip
        target.append(value)  # type: ignore[union-attr]
    return stats


def _risk_row(s: _Seed, val_logits: Tensor, logits: Tensor) -> None:
    """The primary learner's policy read out by the risk-calibrated rule (``l2s_gym.risk``),
    certified on the validation trace at the task's stated risk."""
    stated = default_risk(s.task)
    cal = calibrate_risk(s.val, val_logits, s.task, stated.epsilon, stated.delta, loss=stated.loss)
    s.add_row("risk:reverse_kl", f"{s.name}-stop, reverse-KL policy, {cal.label}", "calibrated",
              s.test, cal.rule.stop(logits), learner="reverse_kl", readout=cal.rule.label)  # fmt: skip


def _empty_learned_curve(learner: str) -> Curve:
    return Curve(kind="learned", param=[], avg_layers=[], metric=[], ci_low=[], ci_high=[],
                 learner=learner, cost=[], lambdas=[], objective=[], stats=[],
                 objective_values=[])  # fmt: skip


def _learner_row(s: _Seed, trial: Trial, result: dict, summary: dict, stop: Tensor, health) -> None:  # noqa: ANN001
    label = result.get("label", registry.LEARNER_LABELS.get(trial.learner, trial.learner))
    row_id = f"learner:{trial.learner}"
    row = s._row(
        row_id, f"{s.name}-stop ({label})", "learner", s.test, stop, summary,
        learner=trial.learner, readout=summary["readout"],
        stochastic=Point(**summary["stochastic"]), paper_rule=Point(**summary["paper_rule"]),
        train_wall_time_s=result["wall_time_s"], layer_evals=result["layer_evals"],
        best_val_metric=result["extra"].get("best_val_metric"),
        health=None if health is None else health.status,
    )  # fmt: skip
    s.rows.append(row)


def _health_of(trial: Trial, result: dict, num_layers: int) -> Health | None:
    """A trial's health, its verdict given by today's rule from what the trial measured (a
    trial saved before ``stayed`` was recorded stayed where it was flagged untrained)."""
    data = dict(result.get("health") or {})
    if not data:
        return None
    stayed = bool(data.pop("stayed", data.get("status") == "untrained"))
    layers, oracle = data.get("val_avg_layers"), data.get("oracle_val_avg_layers")
    if oracle is not None:
        data["status"], data["message"] = health_verdict(stayed, layers, oracle, num_layers)
    return Health(key=trial.key, learner=trial.learner, cost=trial.cost, seed=trial.seed, **data)


def paired_differences(s: _Seed) -> dict[str, PairedDifference]:
    """Every row against the primary learner (same test instances, same resamples)."""
    ref_id = "learner:reverse_kl"
    ref = s.stats.get(ref_id)
    if ref is None:
        return {}
    ref_metric, ref_obj = s.task.aggregate(ref), s.objectives[ref_id]
    out = {}
    for row in s.rows:
        if row.id not in s.stats or row.id == ref_id or row.kind == "classical":
            continue
        stats, obj = s.stats[row.id], s.objectives[row.id]
        out[row.id] = PairedDifference(
            method=row.method,
            difference=row.metric - ref_metric,
            ci95=s.boot.difference(stats, ref),
            objective_difference=float(obj.mean() - ref_obj.mean()),
            objective_ci95=s.boot.mean_difference(obj, ref_obj),
            seed=s.seed,
        )
    return out


def one_policy_paired(s: _Seed, learned: _Learned) -> dict[str, dict[str, PairedDifference]]:
    """Each one policy against its learner's per-price policies, price by price: its metric
    and objective (``l_stop + lambda C_stop``) minus theirs on the same test instances,
    with paired bootstrap intervals (``s.boot``: the same resamples for every price)."""
    out: dict[str, dict[str, PairedDifference]] = {}
    for key, one in learned.points.items():
        learner = key.removesuffix(ONE_POLICY_SUFFIX)
        per_price = learned.points.get(learner)
        if key == learner or per_price is None:
            continue
        at = {c: i for i, c in enumerate(per_price.cost or [])}
        rows = {}
        for i, cost in enumerate(one.cost or []):
            j = at.get(cost)
            if j is None:
                continue
            a, b = one.objective_values[i], per_price.objective_values[j]  # type: ignore[index]
            rows[format_cost(cost)] = PairedDifference(
                method=f"{one_policy_curve_name(learner)} - per-price policy, price {format_cost(cost)}",  # fmt: skip
                difference=one.metric[i] - per_price.metric[j],
                ci95=s.boot.difference(one.stats[i], per_price.stats[j]),  # type: ignore[index]
                objective_difference=float(a.double().mean() - b.double().mean()),
                objective_ci95=s.boot.mean_difference(a, b),
                seed=s.seed,
            )
        out[learner] = rows
    return out


def _points(s: _Seed, trace: Trace, stops: list[Tensor], kind: str, param: list) -> Curve:
    curve = Curve(kind=kind, param=list(param), avg_layers=[], metric=[], ci_low=[], ci_high=[])
    curve.stats = []
    for stop in stops:
        stats = _stats_at(trace, stop)
        lo, hi = s.boot.interval(stats)
        curve.avg_layers.append(float((stop.double() + 1).mean()))
        curve.metric.append(s.task.aggregate(stats))
        curve.ci_low.append(lo)
        curve.ci_high.append(hi)
        curve.stats.append(stats)
    return curve


def _trained(s: _Seed) -> bool:
    """Whether stage 1 trained the predictor (false for one with nothing to train, where
    the oracle-trained and fixed-depth-trained models are the same untrained one)."""
    return bool(s.stage1.get("oracle", {}).get("trained", True))


def mixture(task: Task) -> fr.Mix:
    """The task's metric of running one rule on a share ``a`` of the instances and another
    on the rest: its aggregate of ``a stats_a + (1 - a) stats_b`` (exact in expectation for
    an aggregate of a mean: a mean, a dB of a mean, an accuracy)."""

    def mix(stats_a: Tensor, stats_b: Tensor, a: float) -> float:
        return task.aggregate(a * stats_a.double() + (1 - a) * stats_b.double())

    return mix


def frontier_curves(s: _Seed, learned: _Learned, frontier_mode: bool, compare_cost: float) -> dict[str, Curve]:  # fmt: skip
    """The frontier: every label-free baseline, the oracle, every learner, the sweeps."""
    T, P = s.T, s.name
    every_depth = _points(
        s, s.test, [fixed_depth_stop(s.test, k) for k in range(1, T + 1)], "fixed",
        list(range(1, T + 1)),
    )  # fmt: skip
    if not _trained(s):  # nothing to train (a hand-written solver): one model, untrained
        frontiers = {"fixed depth (untrained model)": every_depth}
    else:
        frontiers = {
            "fixed depth (oracle-trained)": every_depth,
            f"{P} (T={T}), fixed-depth training": _points(
                s, s.test_fixed, [fixed_depth_stop(s.test_fixed, T)], "fixed", [T]
            ),
        }
    for key in THRESHOLD_RULES:
        if key in s.test.extras:
            # Points named by their validation quantile level, not by the threshold's value
            # (which differs per seed), so that the seeds' curves pair point by point.
            levels, taus = zip(*quantile_thresholds(s.val, key, HEURISTIC_POINTS), strict=True)
            stops = [threshold_stop(s.test, key, tau) for tau in taus]
            frontiers[THRESHOLD_RULES[key][0]] = _points(s, s.test, stops, "heuristic", levels)
    prices = [p * s.unit for p in ORACLE_PRICES]
    stops = [oracle_stop(s.test, p, s.cum) for p in prices]
    frontiers[ORACLE_CURVE] = _points(s, s.test, stops, "oracle", ORACLE_PRICES)
    for name, pts in learned.points.items():
        if name.endswith(ONE_POLICY_SUFFIX):
            label = one_policy_curve_name(name.removesuffix(ONE_POLICY_SUFFIX))
        else:
            label = registry.LEARNER_LABELS.get(name, name)
        frontiers[label] = replace(pts, param=list(pts.cost))
    for name, logits in learned.sweep_logits.items() if frontier_mode else ():
        stops = [ReadoutRule("quantile", q).stop(logits) for q in SWEEP_QUANTILES]
        curve = _points(s, s.test, stops, "sweep", list(SWEEP_QUANTILES))
        curve.learner, curve.price = name, compare_cost
        frontiers[sweep_curve_name(name)] = curve
    return frontiers


def sweep_curve_name(learner: str) -> str:
    return f"{registry.LEARNER_LABELS.get(learner, learner)}, one policy, read-out swept"


def frontier_summaries(s: _Seed, frontiers: dict[str, Curve], full_depth: float) -> tuple[dict[str, FrontierSummary], dict[str, FrontierSummary], dict[str, float | None]]:  # fmt: skip
    """Each learner's and each sweep's summary against the baselines, and the references."""
    hib, mix = s.task.higher_is_better, mixture(s.task)

    def points(curve: Curve) -> fr.Points:
        return (curve.avg_layers, curve.metric, curve.stats)

    baselines = [points(f) for f in frontiers.values() if f.kind in ("fixed", "heuristic")]
    oracle = points(frontiers[ORACLE_CURVE])

    def summarize(curve: Curve) -> FrontierSummary:
        figures = fr.summarize(points(curve), baselines, oracle, s.T, hib, full_depth, mix)
        return FrontierSummary(**figures)

    learned = {f.learner: summarize(f) for f in frontiers.values() if f.kind == "learned"}
    sweeps = {f.learner: summarize(f) for f in frontiers.values() if f.kind == "sweep"}
    reference = fr.reference_layers_to_match(baselines, oracle, hib, full_depth, mix)
    return learned, sweeps, reference  # type: ignore[return-value]


def evaluate_seed(
    run_dir: Path,
    cfg_dict: dict,
    seed: int,
    trials: list[Trial],
    compare_cost: float,
    split: str = "test",
) -> SeedResult:
    """Rows (at ``compare_cost``), frontier curves and summaries of one seed's trials.

    ``split="val"`` scores everything on the validation set instead of the test set: for
    choosing settings without looking at test numbers (the choices made on validation
    are then scored on the same data, so those numbers are optimistic).
    """
    one_policy = [t for t in trials if t.one_policy]
    trials = [t for t in trials if not t.one_policy]
    s = _load_seed(run_dir, cfg_dict, seed, trials, compare_cost, split)
    heuristic_curves = baseline_rows(s, split)
    learned = learner_rows(s, run_dir, trials, compare_cost)
    frontier_mode = len({t.cost for t in trials}) > 1
    for trial in one_policy if frontier_mode else ():
        one_policy_points(s, run_dir, trial, learned)
    frontiers = frontier_curves(s, learned, frontier_mode, compare_cost)
    full_depth = max((r.metric for r in s.rows if r.id == "fixed_T"), key=lambda m: m if s.task.higher_is_better else -m)  # fmt: skip
    stop_at_T = depth_curve(s.task, s.test)[-1]
    if is_better(s.task, stop_at_T, full_depth):
        full_depth = stop_at_T
    summary, sweeps, reference = ({}, {}, {})
    if frontier_mode:
        summary, sweeps, reference = frontier_summaries(s, frontiers, full_depth)
    return SeedResult(
        seed=seed,
        group_names=list(s.task.group_names),
        num_layers=s.T,
        predictor=s.name,
        test_size=len(s.test),
        gain_per_layer=s.unit,
        compare_lambda=s.lam,
        rows=s.rows,
        paired_differences=paired_differences(s),
        heuristic_curves=heuristic_curves,
        depth_curves=(
            {
                f"{s.name}, fixed-depth training": depth_curve(s.task, s.test_fixed),
                f"{s.name}, oracle training (truncated)": depth_curve(s.task, s.test),
            }
            if _trained(s)
            else {f"{s.name}, untrained (truncated)": depth_curve(s.task, s.test)}
        ),
        frontiers=frontiers,
        frontier_summary=summary,
        frontier_sweep_summary=sweeps,
        frontier_reference=reference,
        full_depth_metric=full_depth,
        learning_curves=learned.curves,
        time_to_target=time_to_target(s.task, learned.results, trials, compare_cost, s.lam),
        health=learned.health,
        metric_follows_loss=metric_follows_loss(s.task, s.test),
        one_policy_paired=one_policy_paired(s, learned),
    )


def _trial_result(folder: Path) -> dict | None:
    path = folder / "result.json"
    if not (folder / "done").is_file() or not path.is_file():
        return None
    return json.loads(path.read_text())


def _stage1_result(folder: Path) -> dict:
    result = _trial_result(folder)
    if result is None:
        raise FileNotFoundError(f"stage-1 trial in {folder} did not finish")
    return result


def time_to_target(
    task: Task, results: dict[str, dict], trials: list[Trial], cost: float, lam: float = 0.0
) -> dict[str, TimeToTarget]:
    """For every learner at ``cost``: when it first reached the best RL learner's final
    validation figure (wall time and layer evaluations), ``None`` when it never did.

    The figure is the metric at no layer price (``lam == 0``) and the objective with one:
    with a price, a rule that never stops has the best metric from its first point on."""
    at_cost = [t for t in trials if t.cost == cost and t.key in results]
    by_objective = lam != 0
    key, point_key = ("best_val_objective", "val_objective") if by_objective else ("best_val_metric", "val_metric")  # fmt: skip

    def better_or_equal(a: float, b: float) -> bool:
        return a <= b if by_objective else (a == b or is_better(task, a, b))

    finals = {
        t.learner: results[t.key]["extra"].get(key)
        for t in at_cost
        if registry.LEARNER_KINDS.get(t.learner, "rl") == "rl"
    }
    finals = {k: v for k, v in finals.items() if v is not None and math.isfinite(v)}
    if not finals:
        return {}
    best_rl = next(k for k in finals if all(better_or_equal(finals[k], v) for v in finals.values()))
    target = finals[best_rl]
    out = {}
    for t in at_cost:
        res = results[t.key]
        hit = next((p for p in res["curve"] if better_or_equal(p[point_key], target)), None)
        out[t.learner] = TimeToTarget(
            target=target,
            target_learner=best_rl,
            criterion="objective" if by_objective else "metric",
            wall_time_s=None if hit is None else hit["wall_time_s"],
            layer_evals=None if hit is None else int(hit["layer_evals"]),
            final_wall_time_s=res["wall_time_s"],
            final_layer_evals=res["layer_evals"],
        )
    return out


# --- over seeds ---------------------------------------------------------------------------


def _aggregate_rows(per_seed: list[SeedResult]) -> list[Row]:
    """Rows over seeds: the mean of each number, the seeds' t interval (or, with one seed,
    the test-instance interval), and the per-seed values."""
    by_id: dict[str, list[tuple[int, Row]]] = {}
    for res in per_seed:
        for row in res.rows:
            by_id.setdefault(row.id, []).append((res.seed, row))
    out = []
    for rs in by_id.values():
        first = rs[0][1]
        rows = [r for _, r in rs]
        row = replace(first)
        if len(per_seed) > 1:
            row = _mean_row(first, rows, len(rs))
        row.per_seed = [
            SeedRow(
                seed,
                r.metric,
                r.avg_layers,
                r.objective,
                None if r.method == first.method else r.method,
            )  # fmt: skip
            for seed, r in rs
        ]
        out.append(row)
    return out


def _mean_row(first: Row, rows: list[Row], n: int) -> Row:
    def mean_point(points: list[Point | None]) -> Point | None:
        if any(p is None for p in points):
            return None
        return Point(_mean([p.metric for p in points]), _mean([p.avg_layers for p in points]), {})  # type: ignore[union-attr,arg-type]

    method = first.method
    if first.kind in ("fixed", "heuristic") and first.id != "fixed_T":
        method = method.split(" (k=")[0].split(", tau=")[0] + " (chosen on validation, per seed)"
    metrics, objectives = [r.metric for r in rows], [r.objective for r in rows]
    return replace(
        first,
        method=method,
        metric=_mean(metrics),
        ci95=seed_interval(metrics),
        objective=_mean(objectives),
        objective_ci95=seed_interval(objectives),
        ci_over=f"{n} seeds",
        avg_layers=_mean([r.avg_layers for r in rows]),
        groups={g: _mean([r.groups.get(g) for r in rows]) for g in first.groups},
        stochastic=mean_point([r.stochastic for r in rows]) if first.stochastic else None,
        paper_rule=mean_point([r.paper_rule for r in rows]) if first.paper_rule else None,
        train_wall_time_s=_mean([r.train_wall_time_s for r in rows])
        if first.train_wall_time_s is not None
        else None,  # fmt: skip
        layer_evals=_mean([r.layer_evals for r in rows]) if first.layer_evals is not None else None,
        histogram=None,
    )


def _aggregate_frontiers(per_seed: list[SeedResult]) -> dict[str, Curve]:
    """Curves over seeds, point by point. Points are paired by their price (a learner's
    curve) or their parameter (a depth, a threshold, a quantile), never by position: a
    stage-2 trial that failed in one seed leaves that seed's other points where they are,
    and a point missing from some seed is left out of the mean curve."""
    out: dict[str, Curve] = {}
    for name in per_seed[0].frontiers:
        curves = [res.frontiers[name] for res in per_seed if name in res.frontiers]
        index = [{k: i for i, k in enumerate(_point_keys(c))} for c in curves]
        first = curves[0]
        keys = [k for k in _point_keys(first) if all(k in ix for ix in index)]

        def over(field: str, curves=curves, index=index, keys=keys) -> list[list]:
            return [
                [getattr(c, field)[ix[k]] for c, ix in zip(curves, index, strict=True)]
                for k in keys
            ]

        at_first = [index[0][k] for k in keys]
        agg = Curve(
            kind=first.kind,
            param=[first.param[i] for i in at_first],
            avg_layers=[_mean(v) for v in over("avg_layers")],
            metric=[_mean(v) for v in over("metric")],
            ci_low=[first.ci_low[i] for i in at_first],
            ci_high=[first.ci_high[i] for i in at_first],
            learner=first.learner,
            price=first.price,
            cost=None if first.cost is None else [first.cost[i] for i in at_first],
            band_over="test instances",
        )
        if first.objective is not None:
            agg.objective = [_mean(v) for v in over("objective")]
        if len(curves) > 1:
            ivs = [seed_interval(v) for v in over("metric")]
            agg.ci_low = [iv[0] if iv else None for iv in ivs]
            agg.ci_high = [iv[1] if iv else None for iv in ivs]
            agg.band_over = f"{len(curves)} seeds"
        out[name] = agg
    return out


def _point_keys(c: Curve) -> list[float]:
    """What names a curve's points across seeds: a learner's prices, else the parameters."""
    return list(c.cost if c.cost is not None else c.param)


def _over_seeds(vals: list[float | None], all_or_none: bool) -> tuple[float | None, list[float] | None]:  # fmt: skip
    """The mean of the finite values over seeds (``None`` when ``all_or_none`` and some seed
    has none, e.g. a curve that never matched), and a t interval only when every seed has
    a finite value."""
    finite = [x for x in vals if x is not None and math.isfinite(x)]
    complete = len(finite) == len(vals)
    mean = None if all_or_none and not complete else _mean(finite)
    return mean, seed_interval(finite) if complete else None


SUMMARY_KEYS = ("dominance", "strict_dominance", "oracle_gap_closed", "layers_to_match_full_depth")


def _aggregate_summary(per_seed: list[SeedResult], sweep: bool = False) -> dict[str, FrontierSummary]:  # fmt: skip
    out: dict[str, FrontierSummary] = {}
    first = per_seed[0].frontier_sweep_summary if sweep else per_seed[0].frontier_summary
    for name in first:
        kwargs = {}
        for key in SUMMARY_KEYS:
            vals = []
            for res in per_seed:
                table = res.frontier_sweep_summary if sweep else res.frontier_summary
                vals.append(getattr(table[name], key) if name in table else None)
            kwargs[key], kwargs[f"{key}_ci95"] = _over_seeds(vals, key == "layers_to_match_full_depth")  # fmt: skip
            kwargs[f"{key}_per_seed"] = vals
        out[name] = FrontierSummary(**kwargs)
    return out


def _aggregate_reference(per_seed: list[SeedResult]) -> dict[str, LayersToMatch]:
    """The layers to match full depth of the oracle and of the label-free baselines, as
    ``_aggregate_summary`` gives a learner's (``None`` if some seed never matches)."""
    out = {}
    for name in per_seed[0].frontier_reference or {}:
        vals = [res.frontier_reference.get(name) for res in per_seed]
        mean, ci = _over_seeds(vals, True)
        out[name] = LayersToMatch(mean, ci, vals)
    return out


def _aggregate_paired(per_seed: list[SeedResult]) -> dict[str, PairedDifference]:
    grouped: dict[str, list[PairedDifference]] = {}
    for res in per_seed:
        for row_id, d in res.paired_differences.items():
            grouped.setdefault(row_id, []).append(d)
    out = {}
    for row_id, ds in grouped.items():
        diffs = [d.difference for d in ds]
        objs = [d.objective_difference for d in ds]
        many = len(ds) > 1
        out[row_id] = PairedDifference(
            method=ds[0].method,
            difference=_mean(diffs),  # type: ignore[arg-type]
            ci95=seed_interval(diffs) if many else ds[0].ci95,
            objective_difference=_mean(objs),  # type: ignore[arg-type]
            objective_ci95=seed_interval(objs) if many else ds[0].objective_ci95,
            ci_over=f"{len(ds)} seeds" if many else "test instances (paired)",
            per_seed=[replace(d, method="", ci_over="") for d in ds],
        )
    return out


def _aggregate_one_policy_paired(per_seed: list[SeedResult]) -> dict[str, dict[str, PairedDifference]]:  # fmt: skip
    """``one_policy_paired`` over seeds, as ``_aggregate_paired`` (a price some seed lacks
    is left out)."""
    out: dict[str, dict[str, PairedDifference]] = {}
    for learner in per_seed[0].one_policy_paired:
        tables = [res.one_policy_paired.get(learner, {}) for res in per_seed]
        prices = [c for c in tables[0] if all(c in t for t in tables)]
        out[learner] = {}
        for cost in prices:
            ds = [t[cost] for t in tables]
            diffs, objs = [d.difference for d in ds], [d.objective_difference for d in ds]
            many = len(ds) > 1
            out[learner][cost] = PairedDifference(
                method=ds[0].method,
                difference=_mean(diffs),  # type: ignore[arg-type]
                ci95=seed_interval(diffs) if many else ds[0].ci95,
                objective_difference=_mean(objs),  # type: ignore[arg-type]
                objective_ci95=seed_interval(objs) if many else ds[0].objective_ci95,
                ci_over=f"{len(ds)} seeds" if many else "test instances (paired)",
                per_seed=[replace(d, method="", ci_over="") for d in ds],
            )
    return out


def _aggregate_time_to_target(per_seed: list[SeedResult]) -> dict[str, TimeToTarget]:
    grouped: dict[str, list[TimeToTarget]] = {}
    for res in per_seed:
        for name, t in res.time_to_target.items():
            grouped.setdefault(name, []).append(replace(t, seed=res.seed))
    out = {}
    for name, ps in grouped.items():
        reached = [p for p in ps if p.wall_time_s is not None]
        all_reached = len(reached) == len(ps)
        out[name] = TimeToTarget(
            target=_mean([p.target for p in ps]),
            target_learner=ps[0].target_learner,
            criterion=ps[0].criterion,
            wall_time_s=_mean([p.wall_time_s for p in ps]) if all_reached else None,
            layer_evals=_mean([p.layer_evals for p in ps]) if all_reached else None,
            final_wall_time_s=_mean([p.final_wall_time_s for p in ps]),
            final_layer_evals=_mean([p.final_layer_evals for p in ps]),
            reached=f"{len(reached)}/{len(ps)} seeds",
            per_seed=ps,
        )
    return out


def evaluate_run(
    run_dir: Path,
    cfg: ExperimentConfig,
    plan: list[Trial],
    outcomes: list[TrialOutcome],
    mode: str,
    compare_cost: float,
    split: str = "test",
) -> RunResults:
    """Evaluate every finished trial of a run: per seed, then over seeds (see
    ``evaluate_seed`` for ``split``)."""
    cfg_dict = cfg.to_dict()
    done = {o.trial for o in outcomes if o.status in ("done", "reused")}
    seeds = [t.seed for t in plan if t.kind == "stage1" and t in done]
    per_seed = []
    for seed in seeds:
        trials = [t for t in plan if t.kind == "stage2" and t.seed == seed and t in done]
        per_seed.append(evaluate_seed(run_dir, cfg_dict, seed, trials, compare_cost, split))
    entry = registry.TASKS[cfg.task.name].cls
    failed = [
        FailedTrial(o.trial.key, o.status, o.error, o.attempts, o.trial.to_dict())
        for o in outcomes
        if o.status in ("failed", "skipped")
    ]
    results = RunResults(
        experiment=cfg.experiment,
        metric=entry.metric_name,
        higher_is_better=entry.higher_is_better,
        mode=mode,
        eval_split=split,
        task=cfg.task.name,
        device=str(cfg.device),
        group_title=entry.group_title,
        seeds=seeds,
        costs=sorted({t.cost for t in plan if t.kind == "stage2" and not t.one_policy}),
        cost_scale=next((t.scale for t in plan if t.kind == "stage2"), "loss"),
        compare_cost=compare_cost,
        failed=failed,
    )
    if per_seed:
        _fill_over_seeds(results, per_seed, compare_cost)
    return results


def _fill_over_seeds(results: RunResults, per_seed: list[SeedResult], compare_cost: float) -> None:
    first = per_seed[0]
    results.num_layers = first.num_layers
    results.test_size = first.test_size
    results.group_names = first.group_names
    results.compare_lambda = first.compare_lambda
    results.rows = _aggregate_rows(per_seed)
    results.paired_differences = _aggregate_paired(per_seed)
    results.time_to_target = _aggregate_time_to_target(per_seed)
    results.frontiers = _aggregate_frontiers(per_seed)
    results.frontier_summary = _aggregate_summary(per_seed)
    results.frontier_sweep_summary = _aggregate_summary(per_seed, sweep=True)
    results.frontier_reference = _aggregate_reference(per_seed)
    results.one_policy_paired = _aggregate_one_policy_paired(per_seed)
    results.full_depth_metric = _mean([res.full_depth_metric for res in per_seed])
    results.depth_curves = first.depth_curves
    results.heuristic_curves = first.heuristic_curves
    results.learning_curves = {
        registry.LEARNER_LABELS.get(k.split("@")[0], k): v
        for k, v in first.learning_curves.items()
        if k.endswith("@" + format_cost(compare_cost))
    }
    results.health = [h for res in per_seed for h in res.health]
    results.metric_follows_loss = all(res.metric_follows_loss for res in per_seed)
    results.per_seed = per_seed


__all__ = [
    "Bootstrap",
    "evaluate_run",
    "evaluate_seed",
    "seed_interval",
    "t_quantile",
    "time_to_target",
]

"""From finished trials to results: rows, frontiers, intervals, seeds, time to target.

The one evaluation of a run (``evaluate_run``): every row and every curve is scored on
the seeded test set through ``l2s_gym.evaluation``; every choice (a fixed depth, a
heuristic's threshold, a learner's read-out and checkpoint) was made on the validation
set before. Intervals:

- over test instances: a bootstrap of the task's metric (the same resamples for every
  row of a seed, so differences between rows are paired);
- over seeds (``--seeds``): a t interval of the per-seed values (their mean is what the
  table shows). With one seed, rows carry the test-instance interval.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from l2s_gym import frontier as fr
from l2s_gym import registry
from l2s_gym.build import make_policy
from l2s_gym.config import ExperimentConfig
from l2s_gym.evaluation import (
    depth_curve,
    evaluate_stop_logits,
    is_better,
    metric_at,
    stop_logits,
    stop_objective,
    stop_summary,
    threshold_sweep,
)
from l2s_gym.predictor import Trace
from l2s_gym.rules import (
    THRESHOLD_RULES,
    ReadoutRule,
    default_thresholds,
    fixed_depth_stop,
    oracle_stop,
    threshold_stop,
)
from l2s_gym.runs import load_checkpoint, load_state
from l2s_gym.stopping import cumulative_costs
from l2s_gym.task import Task
from l2s_gym.trials import (
    PLAN_KEYS,
    RUNTIME_KEYS,
    Trial,
    TrialOutcome,
    format_cost,
    gain_per_layer,
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
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


def t_quantile(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (1.96 beyond 30)."""
    if dof <= 0:
        return math.nan
    for k in sorted(T_975):
        if dof <= k:
            return T_975[k]
    return 1.96


def seed_interval(values: list[float]) -> list[float] | None:
    """A 95% t interval of the mean of per-seed ``values`` (``None`` for fewer than two)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if len(v) < 2:
        return None
    mean, sd = float(np.mean(v)), float(np.std(v, ddof=1))
    half = t_quantile(len(v) - 1) * sd / math.sqrt(len(v))
    return [mean - half, mean + half]


def _mean(values: list[Any]) -> float | None:
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

    def interval(self, stats: Tensor) -> list[float]:
        lo, hi = np.percentile(self.values(stats), [2.5, 97.5])
        return [float(lo), float(hi)]

    def difference(self, a: Tensor, b: Tensor) -> list[float]:
        """95% interval of ``metric(a) - metric(b)`` (paired: same instances)."""
        lo, hi = np.percentile(self.values(a) - self.values(b), [2.5, 97.5])
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


def _points(task: Task, trace: Trace, stops: list[Tensor], boot: Bootstrap) -> dict[str, list]:
    out: dict[str, list] = {"avg_layers": [], "metric": [], "ci_low": [], "ci_high": []}
    for stop in stops:
        stats = _stats_at(trace, stop)
        lo, hi = boot.interval(stats)
        out["avg_layers"].append(float((stop.double() + 1).mean()))
        out["metric"].append(task.aggregate(stats))
        out["ci_low"].append(lo)
        out["ci_high"].append(hi)
    return out


def evaluate_seed(
    run_dir: Path,
    cfg_dict: dict[str, Any],
    seed: int,
    trials: list[Trial],
    compare_cost: float,
    split: str = "test",
) -> dict[str, Any]:
    """Rows (at ``compare_cost``), frontier curves and summaries of one seed's trials.

    ``split="val"`` scores everything on the validation set instead of the test set: for
    choosing settings without looking at test numbers (the choices made on validation
    are then scored on the same data, so those numbers are optimistic).
    """
    cfg: ExperimentConfig = trial_config(cfg_dict, seed)
    device = torch.device("cpu")
    task, predictor = load_stop_model(run_dir, cfg, seed, device)
    stage1_dir = run_dir / Trial("stage1", seed).key
    traces = load_traces(stage1_dir)
    t_stop, v_stop = traces["oracle"][split], traces["oracle"]["val"]
    t_fixed, v_fixed = traces["fixed"][split], traces["fixed"]["val"]
    T, P = t_stop.num_layers, predictor.display_name
    cum = cumulative_costs(T, predictor.layer_costs())
    unit = gain_per_layer(v_stop)
    scale = trials[0].scale if trials else "loss"
    lam0 = compare_cost * (unit if scale == "gain" else 1.0)
    boot = Bootstrap(task, len(t_stop), seed)
    rows: list[dict[str, Any]] = []
    stats_of: dict[str, Tensor] = {}

    def add(row_id: str, method: str, kind: str, trace: Trace, stop: Tensor, **extra: Any) -> dict:
        summary = stop_summary(task, trace, stop)
        summary.pop("ci95", None)
        stats = _stats_at(trace, stop)
        stats_of[row_id] = stats
        row = {"id": row_id, "method": method, "kind": kind, **summary, **extra}
        row["ci95"] = boot.interval(stats)
        rows.append(row)
        return row

    # Classical methods at full depth (their test traces are cheap to recompute).
    for label, baseline in registry.classical_baselines(task, T):
        tr = baseline.to(device).trace_eval(task.eval_set(split), task, cfg.compare.eval_batch_size)
        add(f"classical:{label}", label, "classical", tr, fixed_depth_stop(tr, baseline.num_layers))

    s1 = _stage1_result(stage1_dir)
    add(
        "fixed_T",
        f"{P} (T={T})",
        "fixed",
        t_fixed,
        fixed_depth_stop(t_fixed, T),
        train_wall_time_s=s1["fixed"]["wall_time_s"],
        layer_evals=s1["fixed"]["layer_evals"],
    )
    # The strongest honest fixed-depth rival: the best (model, depth) on validation.
    k_fixed, score_fixed = _pick_depth(task, v_fixed, lam0, cum)
    k_stop, score_stop = _pick_depth(task, v_stop, lam0, cum)
    which, k, trace = (
        ("oracle", k_stop, t_stop)
        if score_stop > score_fixed
        else ("fixed-depth", k_fixed, t_fixed)
    )
    add(
        "best_fixed",
        f"{P} best fixed depth (k={k}, {which} training; chosen on validation)",
        "fixed",
        trace,
        fixed_depth_stop(trace, k),
        depth=k,
        training=which,
    )
    add(
        "oracle",
        f"{P}-stop oracle (label-using bound)",
        "oracle",
        t_stop,
        oracle_stop(t_stop, lam0, cum),
        train_wall_time_s=s1["oracle"]["wall_time_s"],
        layer_evals=s1["oracle"]["layer_evals"],
    )
    heuristic_curves: dict[str, dict[str, Any]] = {}
    for key in THRESHOLD_RULES:
        if key in t_stop.extras:
            row, curve = threshold_sweep(task, v_stop, t_stop, key, cost=lam0, cum_costs=cum)
            tau = row["threshold"]
            add(f"heuristic:{key}", row["method"], "heuristic", t_stop,
                threshold_stop(t_stop, key, tau), threshold=tau)  # fmt: skip
            heuristic_curves[key] = curve

    # Every learner at every cost: test rows, frontier points, learning curves.
    learner_points: dict[str, dict[str, list]] = {}
    sweep_logits: dict[str, Tensor] = {}  # the compare-price policy's stop logits, per learner
    curves: dict[str, list[dict[str, Any]]] = {}
    trial_results: dict[str, dict[str, Any]] = {}
    for trial in trials:
        folder = run_dir / trial.key
        result = _trial_result(folder)
        if result is None:
            continue
        trial_results[trial.key] = result
        policy = make_policy(cfg, predictor)
        path = folder / "best.pt"
        payload = load_checkpoint(
            path, "policy", cfg.to_dict(), task, ignore=IGNORED, warn=lambda _: None
        )
        load_state(policy, payload["state_dict"], path)
        policy.eval()
        rule = ReadoutRule.from_dict(result["readout"])
        label = result.get("label", registry.LEARNER_LABELS.get(trial.learner, trial.learner))
        logits = stop_logits(policy, t_stop)
        summary = evaluate_stop_logits(task, t_stop, logits, seed=seed, rule=rule)
        summary.pop("ci95", None)
        stop = rule.stop(logits)
        stats = _stats_at(t_stop, stop)
        pts = learner_points.setdefault(
            trial.learner,
            {
                "cost": [],
                "lambda": [],
                "avg_layers": [],
                "metric": [],
                "ci_low": [],
                "ci_high": [],
            },  # fmt: skip
        )
        lo, hi = boot.interval(stats)
        pts["cost"].append(trial.cost)
        pts["lambda"].append(result["lambda"])
        pts["avg_layers"].append(summary["avg_layers"])
        pts["metric"].append(summary["metric"])
        pts["ci_low"].append(lo)
        pts["ci_high"].append(hi)
        curves[f"{trial.learner}@{format_cost(trial.cost)}"] = result["curve"]
        if trial.cost == compare_cost:
            sweep_logits[trial.learner] = logits
            row_id = f"learner:{trial.learner}"
            stats_of[row_id] = stats
            rows.append(
                {
                    "id": row_id,
                    "method": f"{P}-stop ({label})",
                    "kind": "learner",
                    "learner": trial.learner,
                    **summary,
                    "ci95": [lo, hi],
                    "train_wall_time_s": result["wall_time_s"],
                    "layer_evals": result["layer_evals"],
                    "best_val_metric": result["extra"].get("best_val_metric"),
                }
            )

    # Paired differences against the primary learner (same test instances, same resamples).
    paired = {}
    ref = stats_of.get("learner:reverse_kl")
    if ref is not None:
        ref_metric = task.aggregate(ref)
        for row in rows:
            if (
                row["id"] in stats_of
                and row["id"] != "learner:reverse_kl"
                and row["kind"] != "classical"
            ):
                paired[row["id"]] = {
                    "method": row["method"],
                    "difference": row["metric"] - ref_metric,
                    "ci95": boot.difference(stats_of[row["id"]], ref),
                }

    # The frontier: every label-free baseline, the oracle, every learner.
    frontiers: dict[str, dict[str, Any]] = {}
    depth_stops = [fixed_depth_stop(t_stop, k) for k in range(1, T + 1)]
    frontiers["fixed depth (oracle-trained)"] = {
        "kind": "fixed", "param": list(range(1, T + 1)), **_points(task, t_stop, depth_stops, boot)
    }  # fmt: skip
    frontiers[f"{P} (T={T}), fixed-depth training"] = {
        "kind": "fixed", "param": [T], **_points(task, t_fixed, [fixed_depth_stop(t_fixed, T)], boot)
    }  # fmt: skip
    for key in heuristic_curves:
        taus = default_thresholds(v_stop, key, HEURISTIC_POINTS)
        frontiers[THRESHOLD_RULES[key][0]] = {
            "kind": "heuristic",
            "param": taus,
            **_points(task, t_stop, [threshold_stop(t_stop, key, tau) for tau in taus], boot),
        }
    prices = [p * unit for p in ORACLE_PRICES]
    frontiers["oracle (label-using)"] = {
        "kind": "oracle",
        "param": ORACLE_PRICES,
        **_points(task, t_stop, [oracle_stop(t_stop, p, cum) for p in prices], boot),
    }
    for name, pts in learner_points.items():
        label = registry.LEARNER_LABELS.get(name, name)
        frontiers[label] = {"kind": "learned", "learner": name, "param": pts["cost"], **pts}
    frontier_mode = len({t.cost for t in trials}) > 1
    sweep_names: dict[str, str] = {}
    for name, logits in sweep_logits.items() if frontier_mode else ():
        label = registry.LEARNER_LABELS.get(name, name)
        sweep_names[name] = f"{label}, one policy, read-out swept"
        stops = [ReadoutRule("quantile", q).stop(logits) for q in SWEEP_QUANTILES]
        frontiers[sweep_names[name]] = {
            "kind": "sweep", "learner": name, "param": list(SWEEP_QUANTILES),
            "price": compare_cost, **_points(task, t_stop, stops, boot),
        }  # fmt: skip

    baselines = [
        (f["avg_layers"], f["metric"])
        for f in frontiers.values()
        if f["kind"] in ("fixed", "heuristic")
    ]
    oracle_pts = (
        frontiers["oracle (label-using)"]["avg_layers"],
        frontiers["oracle (label-using)"]["metric"],
    )
    full_depth = max(
        (r["metric"] for r in rows if r["id"] == "fixed_T"),
        key=lambda m: m if task.higher_is_better else -m,
    )
    stop_at_T = depth_curve(task, t_stop)[-1]
    if is_better(task, stop_at_T, full_depth):
        full_depth = stop_at_T
    summary = {}
    sweep_summary = {}
    reference: dict[str, float | None] = {}
    if frontier_mode:
        for name, pts in learner_points.items():
            summary[name] = fr.summarize(
                (pts["avg_layers"], pts["metric"]), baselines, oracle_pts, T,
                task.higher_is_better, full_depth,
            )  # fmt: skip
        for name, curve_name in sweep_names.items():
            f = frontiers[curve_name]
            sweep_summary[name] = fr.summarize(
                (f["avg_layers"], f["metric"]), baselines, oracle_pts, T,
                task.higher_is_better, full_depth,
            )  # fmt: skip
        reference = fr.reference_layers_to_match(
            baselines, oracle_pts, task.higher_is_better, full_depth
        )

    return {
        "seed": seed,
        "group_names": list(task.group_names),
        "num_layers": T,
        "predictor": P,
        "test_size": len(t_stop),
        "gain_per_layer": unit,
        "compare_lambda": lam0,
        "rows": rows,
        "paired_differences": paired,
        "heuristic_curves": heuristic_curves,
        "depth_curves": {
            f"{P}, fixed-depth training": depth_curve(task, t_fixed),
            f"{P}, oracle training (truncated)": depth_curve(task, t_stop),
        },
        "frontiers": frontiers,
        "frontier_summary": summary,
        "frontier_sweep_summary": sweep_summary,
        "frontier_reference": reference,
        "full_depth_metric": full_depth,
        "learning_curves": curves,
        "time_to_target": time_to_target(task, trial_results, trials, compare_cost),
    }


def _trial_result(folder: Path) -> dict[str, Any] | None:
    import json

    path = folder / "result.json"
    if not (folder / "done").is_file() or not path.is_file():
        return None
    return json.loads(path.read_text())


def _stage1_result(folder: Path) -> dict[str, Any]:
    result = _trial_result(folder)
    if result is None:
        raise FileNotFoundError(f"stage-1 trial in {folder} did not finish")
    return result


def time_to_target(
    task: Task, results: dict[str, dict[str, Any]], trials: list[Trial], cost: float
) -> dict[str, dict[str, Any]]:
    """For every learner at ``cost``: when it first reached the best RL learner's final
    validation metric (wall time and layer evaluations), ``None`` when it never did."""
    at_cost = [t for t in trials if t.cost == cost and t.key in results]
    finals = {
        t.learner: results[t.key]["extra"].get("best_val_metric")
        for t in at_cost
        if registry.LEARNER_KINDS.get(t.learner, "rl") == "rl"
    }
    finals = {k: v for k, v in finals.items() if v is not None and math.isfinite(v)}
    if not finals:
        return {}
    best_rl = max(finals, key=lambda k: finals[k] if task.higher_is_better else -finals[k])
    target = finals[best_rl]
    out = {}
    for t in at_cost:
        hit = next(
            (
                p
                for p in results[t.key]["curve"]
                if p["val_metric"] == target or is_better(task, p["val_metric"], target)
            ),
            None,
        )
        out[t.learner] = {
            "target": target,
            "target_learner": best_rl,
            "wall_time_s": None if hit is None else hit["wall_time_s"],
            "layer_evals": None if hit is None else int(hit["layer_evals"]),
            "final_wall_time_s": results[t.key]["wall_time_s"],
            "final_layer_evals": results[t.key]["layer_evals"],
        }
    return out


def _aggregate_rows(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows over seeds: the mean of each number, the seeds' t interval (or, with one seed,
    the test-instance interval), and the per-seed values."""
    order: list[str] = []
    by_id: dict[str, list[dict[str, Any]]] = {}
    for res in per_seed:
        for row in res["rows"]:
            if row["id"] not in by_id:
                order.append(row["id"])
            by_id.setdefault(row["id"], []).append({**row, "seed": res["seed"]})
    out = []
    for row_id in order:
        rs = by_id[row_id]
        first = rs[0]
        row = {k: v for k, v in first.items() if k not in ("seed",)}
        if len(per_seed) > 1:
            metrics = [r["metric"] for r in rs]
            row["metric"] = _mean(metrics)
            row["ci95"] = seed_interval(metrics)
            row["ci_over"] = f"{len(rs)} seeds"
            row["avg_layers"] = _mean([r["avg_layers"] for r in rs])
            row["groups"] = {
                g: _mean([r["groups"].get(g) for r in rs]) for g in first.get("groups", {})
            }
            for key in ("stochastic", "paper_rule"):
                if key in first:
                    row[key] = {
                        "metric": _mean([r[key]["metric"] for r in rs]),
                        "avg_layers": _mean([r[key]["avg_layers"] for r in rs]),
                    }
            for key in ("train_wall_time_s", "layer_evals"):
                if key in first:
                    row[key] = _mean([r.get(key) for r in rs])
            if first["kind"] in ("fixed", "heuristic") and row_id != "fixed_T":
                row["method"] = first["method"].split(" (k=")[0].split(", tau=")[0] + (
                    " (chosen on validation, per seed)"
                )
            row.pop("histogram", None)
        else:
            row["ci_over"] = "test instances"
        row["per_seed"] = [
            {"seed": r["seed"], "metric": r["metric"], "avg_layers": r["avg_layers"],
             **({"method": r["method"]} if r["method"] != first["method"] else {})}
            for r in rs
        ]  # fmt: skip
        out.append(row)
    return out


def _aggregate_frontiers(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Curves over seeds, point by point (points share a parameter across seeds)."""
    out: dict[str, dict[str, Any]] = {}
    names = list(per_seed[0]["frontiers"])
    for name in names:
        curves = [res["frontiers"][name] for res in per_seed if name in res["frontiers"]]
        n = min(len(c["metric"]) for c in curves)
        first = curves[0]
        agg: dict[str, Any] = {"kind": first["kind"], "param": first["param"][:n]}
        for key in ("learner", "price"):
            if key in first:
                agg[key] = first[key]
        agg["avg_layers"] = [_mean([c["avg_layers"][i] for c in curves]) for i in range(n)]
        agg["metric"] = [_mean([c["metric"][i] for c in curves]) for i in range(n)]
        if len(curves) > 1:
            ivs = [seed_interval([c["metric"][i] for c in curves]) for i in range(n)]
            agg["ci_low"] = [iv[0] if iv else None for iv in ivs]
            agg["ci_high"] = [iv[1] if iv else None for iv in ivs]
            agg["band_over"] = f"{len(curves)} seeds"
        else:
            agg["ci_low"], agg["ci_high"] = first["ci_low"][:n], first["ci_high"][:n]
            agg["band_over"] = "test instances"
        out[name] = agg
    return out


def _over_seeds(vals: list[Any], key: str, all_or_none: bool) -> dict[str, Any]:
    """``key``, ``key_ci95`` and ``key_per_seed`` of one figure over seeds: the mean of the
    finite values (``None`` when ``all_or_none`` and some seed has none, e.g. a curve that
    never matched), and a t interval only when every seed has a finite value."""
    finite = [x for x in vals if x is not None and math.isfinite(x)]
    complete = len(finite) == len(vals)
    return {
        key: None if all_or_none and not complete else _mean(finite),
        f"{key}_ci95": seed_interval(finite) if complete else None,
        f"{key}_per_seed": vals,
    }


def _aggregate_summary(
    per_seed: list[dict[str, Any]], field: str = "frontier_summary"
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    learners = list(per_seed[0].get(field) or {})
    for name in learners:
        entry: dict[str, Any] = {}
        values = [(res.get(field) or {}).get(name, {}) for res in per_seed]
        for key in ("dominance", "oracle_gap_closed", "layers_to_match_full_depth"):
            vals = [v.get(key) for v in values]
            entry.update(_over_seeds(vals, key, key == "layers_to_match_full_depth"))
        out[name] = entry
    return out


def _aggregate_reference(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The layers to match full depth of the oracle and of the label-free baselines, as
    ``_aggregate_summary`` gives a learner's (``None`` if some seed never matches)."""
    key = "layers_to_match_full_depth"
    return {
        name: _over_seeds(
            [res.get("frontier_reference", {}).get(name) for res in per_seed], key, True
        )
        for name in per_seed[0].get("frontier_reference") or {}
    }


def _aggregate_paired(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for res in per_seed:
        for row_id, d in res["paired_differences"].items():
            out.setdefault(row_id, {"method": d["method"], "per_seed": []})["per_seed"].append(
                {"seed": res["seed"], "difference": d["difference"], "ci95": d["ci95"]}
            )
    for d in out.values():
        diffs = [p["difference"] for p in d["per_seed"]]
        d["difference"] = _mean(diffs)
        d["ci95"] = seed_interval(diffs) if len(diffs) > 1 else d["per_seed"][0]["ci95"]
        d["ci_over"] = f"{len(diffs)} seeds" if len(diffs) > 1 else "test instances (paired)"
    return out


def _aggregate_time_to_target(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for res in per_seed:
        for name, t in res["time_to_target"].items():
            out.setdefault(name, {"per_seed": []})["per_seed"].append({"seed": res["seed"], **t})
    for entry in out.values():
        ps = entry["per_seed"]
        reached = [p for p in ps if p["wall_time_s"] is not None]
        entry["target"] = _mean([p["target"] for p in ps])
        entry["reached"] = f"{len(reached)}/{len(ps)} seeds"
        all_reached = len(reached) == len(ps)
        entry["wall_time_s"] = _mean([p["wall_time_s"] for p in ps]) if all_reached else None
        entry["layer_evals"] = _mean([p["layer_evals"] for p in ps]) if all_reached else None
        entry["final_wall_time_s"] = _mean([p["final_wall_time_s"] for p in ps])
        entry["final_layer_evals"] = _mean([p["final_layer_evals"] for p in ps])
    return out


def evaluate_run(
    run_dir: Path,
    cfg: ExperimentConfig,
    plan: list[Trial],
    outcomes: list[TrialOutcome],
    mode: str,
    compare_cost: float,
    split: str = "test",
) -> dict[str, Any]:
    """Evaluate every finished trial of a run: per seed, then over seeds (see
    ``evaluate_seed`` for ``split``)."""
    cfg_dict = cfg.to_dict()
    done = {o.trial for o in outcomes if o.status in ("done", "reused")}
    seeds = [t.seed for t in plan if t.kind == "stage1" and t in done]
    per_seed = []
    for seed in seeds:
        trials = [t for t in plan if t.kind == "stage2" and t.seed == seed and t in done]
        per_seed.append(evaluate_seed(run_dir, cfg_dict, seed, trials, compare_cost, split))
    task_name = cfg.task.name
    failed = [o.to_dict() for o in outcomes if o.status in ("failed", "skipped")]
    if not per_seed:
        return {"experiment": cfg.experiment, "mode": mode, "failed": failed, "rows": []}
    first = per_seed[0]
    entry = registry.TASKS[task_name].cls
    results: dict[str, Any] = {
        "experiment": cfg.experiment,
        "mode": mode,
        "eval_split": split,
        "task": task_name,
        "metric": entry.metric_name,
        "higher_is_better": entry.higher_is_better,
        "num_layers": first["num_layers"],
        "device": str(cfg.device),
        "test_size": first["test_size"],
        "group_title": entry.group_title,
        "group_names": first["group_names"],
        "seeds": seeds,
        "costs": sorted({t.cost for t in plan if t.kind == "stage2"}),
        "cost_scale": next((t.scale for t in plan if t.kind == "stage2"), "loss"),
        "compare_cost": compare_cost,
        "rows": _aggregate_rows(per_seed),
        "paired_differences": _aggregate_paired(per_seed),
        "time_to_target": _aggregate_time_to_target(per_seed),
        "frontiers": _aggregate_frontiers(per_seed),
        "frontier_summary": _aggregate_summary(per_seed),
        "frontier_sweep_summary": _aggregate_summary(per_seed, "frontier_sweep_summary"),
        "frontier_reference": _aggregate_reference(per_seed),
        "full_depth_metric": _mean([res["full_depth_metric"] for res in per_seed]),
        "depth_curves": first["depth_curves"],
        "heuristic_curves": first["heuristic_curves"],
        "learning_curves": {
            registry.LEARNER_LABELS.get(k.split("@")[0], k): v
            for k, v in first["learning_curves"].items()
            if k.endswith("@" + format_cost(compare_cost))
        },
        "per_seed": per_seed,
        "failed": failed,
    }
    return results


__all__ = ["Bootstrap", "evaluate_run", "evaluate_seed", "seed_interval", "time_to_target"]

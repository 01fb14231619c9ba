"""``l2s compare``: the whole pipeline on one experiment, into one table and a set of plots.

Stage 1 trains two copies of the predictor from the same initialisation with the same
budget: one under the oracle (the stop model), one at fixed depth. Every learner named
in ``compare.learners`` then trains the same StopPolicy architecture on the frozen stop
model, and one evaluation path scores every row on the same seeded test set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from l2s_gym import registry
from l2s_gym.build import make_predictor, make_task, resolve_device
from l2s_gym.config import ExperimentConfig
from l2s_gym.evaluation import (
    best_fixed_depth,
    depth_curve,
    evaluate_stop_model,
    is_better,
    stop_summary,
    threshold_sweep,
)
from l2s_gym.learner import LearnerContext
from l2s_gym.report import plot_learning_curves, plot_metric_vs_layers, write_results
from l2s_gym.rules import THRESHOLD_RULES, fixed_depth_stop, oracle_stop
from l2s_gym.runs import summary_writer, write_config_snapshot, write_json
from l2s_gym.training import train_predictor


def _row(method: str, summary: dict[str, Any], kind: str, **extra: Any) -> dict[str, Any]:
    return {"method": method, "kind": kind, **summary, **extra}


def run_compare(
    cfg: ExperimentConfig, runs_root: str | Path = "runs", progress: bool = True, log=print
) -> Path:  # noqa: ANN001
    """Run the full comparison; return the experiment folder."""
    registry.load_plugins()
    device = resolve_device(cfg.device)
    exp = Path(runs_root) / cfg.experiment
    torch.manual_seed(cfg.seed)
    # The task first: a bad data folder fails here, before any run folder is written.
    task = make_task(cfg.task, cfg.seed, device)
    exp.mkdir(parents=True, exist_ok=True)
    snapshot = cfg.to_dict()
    write_config_snapshot(exp, snapshot)
    log(f"[l2s] {cfg.experiment}: task {cfg.task.name} on {device}")

    stop_model = make_predictor(cfg.predictor, task, seed=cfg.seed)
    fixed_model = make_predictor(cfg.predictor, task, seed=cfg.seed)
    T, P = stop_model.num_layers, stop_model.display_name
    s1 = cfg.stage1
    stage1_evals = s1.steps * s1.batch_size * T
    log(f"[l2s] stage 1: {P} under the oracle (beta={cfg.beta})")
    r_stop = train_predictor(
        stop_model,
        task,
        s1,
        "oracle",
        cfg.beta,
        exp / "predictor-oracle",
        cfg.seed,
        snapshot,
        progress,
    )
    log(f"[l2s] stage 1: {P} at fixed depth ({s1.fixed_depth_loss} loss)")
    r_fixed = train_predictor(
        fixed_model,
        task,
        s1,
        s1.fixed_depth_loss,
        cfg.beta,
        exp / "predictor-fixed",
        cfg.seed,
        snapshot,
        progress,
    )
    for p in (stop_model, fixed_model):
        p.requires_grad_(False)

    test, val = task.eval_set("test"), task.eval_set("val")
    bs = cfg.compare.eval_batch_size
    test_stop, val_stop = (
        stop_model.trace_eval(test, task, bs),
        stop_model.trace_eval(val, task, bs),
    )
    test_fixed, val_fixed = (
        fixed_model.trace_eval(test, task, bs),
        fixed_model.trace_eval(val, task, bs),
    )

    rows: list[dict[str, Any]] = []
    curves: dict[str, list[float]] = {}
    for label, baseline in registry.classical_baselines(task, T):
        baseline.to(device)
        tr = baseline.trace_eval(test, task, bs)
        rows.append(
            _row(
                label,
                stop_summary(task, tr, fixed_depth_stop(tr, baseline.num_layers)),
                "classical",
            )
        )
        curves[baseline.display_name] = depth_curve(task, tr)  # the deepest run of each wins
    rows.append(
        _row(
            f"{P} (T={T})",
            stop_summary(task, test_fixed, fixed_depth_stop(test_fixed, T)),
            "fixed",
            train_wall_time_s=r_fixed.wall_time_s,
            layer_evals=stage1_evals,
        )
    )
    curves[f"{P}, fixed-depth training"] = depth_curve(task, test_fixed)
    curves[f"{P}, oracle training (truncated)"] = depth_curve(task, test_stop)

    # The strongest honest fixed-depth rival: the best (model, depth) on validation.
    candidates = []
    for name, v_tr, t_tr in (
        ("fixed-depth", val_fixed, test_fixed),
        ("oracle", val_stop, test_stop),
    ):
        k = best_fixed_depth(task, v_tr)
        candidates.append((depth_curve(task, v_tr)[k - 1], name, k, t_tr))
    best = candidates[0]
    for c in candidates[1:]:
        if is_better(task, c[0], best[0]):
            best = c
    _, which, k, t_tr = best
    rows.append(
        _row(
            f"{P} best fixed depth (k={k}, {which} training)",
            stop_summary(task, t_tr, fixed_depth_stop(t_tr, k)),
            "fixed",
        )
    )
    rows.append(
        _row(
            f"{P}-stop oracle (label-using bound)",
            stop_summary(task, test_stop, oracle_stop(test_stop)),
            "oracle",
            train_wall_time_s=r_stop.wall_time_s,
            layer_evals=stage1_evals,
        )
    )

    heuristic_curves: dict[str, dict[str, Any]] = {}
    for key in THRESHOLD_RULES:
        if key in test_stop.extras:
            row, curve = threshold_sweep(task, val_stop, test_stop, key)
            rows.append(row)
            heuristic_curves[key] = curve

    learning_curves: dict[str, list[dict[str, float]]] = {}
    for name in cfg.compare.learners:
        label = registry.LEARNER_LABELS[name]
        log(f"[l2s] stage 2: {P}-stop ({label})")
        ctx = LearnerContext(cfg, task, stop_model, val_stop, exp / name, cfg.seed, progress)
        result = registry.LEARNERS[name](ctx)
        summary = evaluate_stop_model(
            task, test_stop, result.model, seed=cfg.seed, rule=result.readout
        )
        row = _row(
            f"{P}-stop ({label})",
            summary,
            "learner",
            learner=name,
            train_wall_time_s=result.wall_time_s,
            layer_evals=result.layer_evals,
        )
        rows.append(row)
        learning_curves[label] = result.curve
        write_json(exp / name / "results.json", {**row, "curve": result.curve, **result.extra})
        with summary_writer(exp / name / "tb") as w:
            w.add_scalar("test/metric", row["metric"], 0)
            w.add_scalar("test/avg_layers", row["avg_layers"], 0)

    results = {
        "experiment": cfg.experiment,
        "task": cfg.task.name,
        "metric": task.metric_name,
        "higher_is_better": task.higher_is_better,
        "num_layers": T,
        "device": str(device),
        "test_size": len(test),
        "group_title": task.group_title,
        "group_names": list(task.group_names),
        "rows": rows,
        "depth_curves": curves,
        "heuristic_curves": heuristic_curves,
        "learning_curves": learning_curves,
    }
    table = write_results(exp, results)
    plot_metric_vs_layers(exp, results)
    plot_learning_curves(exp, results)
    log("")
    log(table)
    return exp

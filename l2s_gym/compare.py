"""``l2s compare`` and ``l2s frontier``: one code path, a plan of trials, one evaluation.

    compare   = stage 1 per seed, then every learner at one layer price (``cost``)
    frontier  = the same at every price of ``frontier.costs``
    --seeds   = either, for several seeds, into one run folder

Stage 1 trains two copies of the predictor from the same initialisation with the same
budget: one under the oracle (the stop model), one at fixed depth. Every learner named
in ``compare.learners`` then trains the same StopPolicy architecture on the frozen stop
model (the same layer budget for each, ``compare.layer_budget``), and one evaluation
path (``l2s_gym.results``) scores every row and curve on the same seeded test set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from l2s_gym import plugins, registry
from l2s_gym.build import make_predictor, make_task, resolve_device
from l2s_gym.config import ConfigError, ExperimentConfig, check_layer_budget
from l2s_gym.report import (
    plot_frontier,
    plot_learning_curves,
    plot_metric_vs_layers,
    write_results,
    write_tensorboard_summary,
)
from l2s_gym.result_types import RunResults
from l2s_gym.results import evaluate_run
from l2s_gym.training import trainable
from l2s_gym.trials import LocalRunner, Trial, TrialOutcome, make_plan, prepare_run

Mode = Literal["compare", "frontier"]


def experiment_plan(cfg: ExperimentConfig, mode: Mode) -> tuple[list[Trial], float]:
    """The trials of a run, and the layer price its comparison table is read at."""
    if mode == "compare":
        return make_plan(cfg.run_seeds, cfg.compare.learners, [cfg.cost], "loss"), cfg.cost
    costs = list(cfg.frontier.costs)
    learners = cfg.frontier.learners or cfg.compare.learners
    one: list[str] = []
    if cfg.frontier.one_policy:
        one = [n for n in learners if n in registry.ONE_POLICY_LEARNERS]
        if not one:
            raise ConfigError(
                "frontier.one_policy (--one-policy): none of the frontier's learners "
                f"{learners} can train one price-conditioned policy; add one that can to "
                f"frontier.learners: {', '.join(sorted(registry.ONE_POLICY_LEARNERS))}"
            )
    plan = make_plan(cfg.run_seeds, learners, costs, cfg.frontier.cost_scale, one)
    return plan, min(costs)


def preflight(cfg: ExperimentConfig, device: torch.device, plan: list[Trial]) -> tuple[int, bool]:
    """Build the task and the predictor once before any folder is written (their own
    checks run; a bad value is one ``ConfigError`` line) and check what the layer budget
    must fund (``l2s_gym.config.check_layer_budget``). Returns the predictor's ``T`` and
    whether stage 1 will train it (``stage1.steps > 0`` and a trainable parameter)."""
    task = make_task(cfg.task, cfg.run_seeds[0], device)
    predictor = make_predictor(cfg.predictor, task, seed=cfg.run_seeds[0])
    num_layers = predictor.num_layers
    kinds = {registry.LEARNER_KINDS.get(t.learner) for t in plan if t.kind == "stage2"}
    check_layer_budget(cfg, num_layers, imitation="imitation" in kinds)
    return num_layers, cfg.stage1.steps > 0 and trainable(predictor)


def plan_line(plan: list[Trial]) -> str:
    """What the run will train, in one line: the learners, the prices, the trials (the
    learners default to ``compare.learners``, all five: a config that names none trains
    RL agents too, which take longest)."""
    stage2 = [t for t in plan if t.kind == "stage2"]
    per_price = [t for t in stage2 if not t.one_policy]
    learners = ", ".join(dict.fromkeys(t.learner for t in stage2))
    prices = len({t.cost for t in per_price})
    one = len(stage2) - len(per_price)
    seeds = len({t.seed for t in plan})
    what = f"{_n(len(per_price), 'stage-2 trial')} ({learners} at {_n(prices, 'price')})"
    if one:
        what += f" and {_n(one, 'one-policy trial')}"
    return f"{what} over {_n(seeds, 'seed')}; learners: frontier.learners, else compare.learners"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def run_experiment(
    cfg: ExperimentConfig,
    runs_root: str | Path = "runs",
    mode: Mode = "compare",
    progress: bool = True,
    resume: str | None = None,
    runner: Any = None,
    log: Callable[[str], None] = print,
    eval_split: str = "test",
) -> tuple[Path, RunResults]:
    """Run (or resume) a compare / frontier experiment; return its folder and results
    (``results.json`` holds ``results.to_json()``).

    ``runner``: anything with ``run(plan, run_dir, cfg_dict) -> list[TrialOutcome]``
    (default: ``LocalRunner``, in this process; ``l2s_gym.ray_backend.RayRunner``: Ray Tune).
    ``eval_split="val"`` scores the finished trials on the validation set (for choosing
    settings without test numbers; results.md and results.json say so).
    """
    plugins.load_plugins()
    device = resolve_device(cfg.device)  # fails before any folder is written
    plan, _ = experiment_plan(cfg, mode)
    num_layers, stage1_trains = preflight(cfg, device, plan)
    run_dir, cfg, cfg_dict = prepare_run(cfg, runs_root, resume)  # a resume keeps its seeds
    plan, compare_cost = experiment_plan(cfg, mode)
    seeds = ", ".join(map(str, cfg.run_seeds))
    log(f"[l2s] {cfg.experiment} ({mode}): task {cfg.task.name} on {device}; seeds {seeds}")
    log(f"[l2s] run folder {run_dir}")
    log(f"[l2s] {plan_line(plan)}")
    runner = runner or LocalRunner(
        progress=progress, log=log, num_layers=num_layers, stage1_trains=stage1_trains
    )
    outcomes: list[TrialOutcome] = runner.run(plan, run_dir, cfg_dict)
    results = evaluate_run(run_dir, cfg, plan, outcomes, mode, compare_cost, eval_split)
    results.device = str(device)
    results.trials = [o.to_dict() for o in outcomes]
    text = write_results(run_dir, results)
    plot_metric_vs_layers(run_dir, results)
    plot_frontier(run_dir, results)
    plot_learning_curves(run_dir, results)
    write_tensorboard_summary(run_dir, results)
    log("")
    log(text)
    return run_dir, results


def run_compare(
    cfg: ExperimentConfig,
    runs_root: str | Path = "runs",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """``l2s compare`` from Python: run it and return the run folder."""
    return run_experiment(cfg, runs_root, "compare", progress, log=log)[0]


__all__ = ["experiment_plan", "run_compare", "run_experiment"]

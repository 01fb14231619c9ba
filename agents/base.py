"""What every stop-policy learner shares: its inputs, its result, and one validation loop.

Every learner (imitation, REINFORCE, PPO, A2C) receives a ``LearnerContext`` and
returns a ``LearnerResult`` whose ``model`` maps trace features to stop logits, so
that the same evaluation code scores all of them. The ``Validator`` logs the same
TensorBoard tags for each learner, so TensorBoard overlays their runs:

- ``val/metric``, ``val/avg_layers``: the task metric and mean depth of the deterministic rule
- ``val/reverse_kl``: the exact ``KL(q_phi || q*)`` on the validation trace (the shared objective)
- ``val/expected_depth``: the expected number of layers under ``q_phi``
- ``charts/layer_evals``, ``charts/wall_time_s``: the cost so far
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l2s_gym.config import ExperimentConfig, annealed_beta
from l2s_gym.envs.batched import BatchedStopEnv
from l2s_gym.evaluation import StopModel, is_better, stop_logits, stop_summary
from l2s_gym.predictor import LayeredPredictor, Trace
from l2s_gym.runs import save_checkpoint, summary_writer
from l2s_gym.stopping import (
    deterministic_stop,
    entropy,
    expected_depth,
    oracle_log_q,
    reverse_kl,
    stop_log_q,
)
from l2s_gym.task import Task


@dataclass
class LearnerContext:
    """What a learner gets: the experiment, the task, the frozen predictor, a validation trace."""

    cfg: ExperimentConfig
    task: Task
    predictor: LayeredPredictor
    val_trace: Trace
    run_dir: Path
    seed: int = 0
    progress: bool = True


def make_rl_env(ctx: LearnerContext, stream: int) -> BatchedStopEnv:
    """The batched training environment an RL learner samples from, sized by ``ctx.cfg.rl``.

    ``stream`` picks the task's random stream (see ``Task.stream_seed``), apart from the
    streams of the validation and test sets and of the other learners.
    """
    rl = ctx.cfg.rl
    return BatchedStopEnv(
        ctx.predictor,
        ctx.task,
        rl.num_envs,
        beta=ctx.cfg.beta,
        reward=rl.reward,
        layer_cost=rl.layer_cost,
        seed=ctx.task.stream_seed(stream + ctx.seed),
    )


def anneal_env_beta(ctx: LearnerContext, env: BatchedStopEnv) -> float:
    """Set ``env.beta`` for the RL continuation (``cfg.rl.beta_anneal_from``) from the layers
    the env has computed so far; return it. With the default 1.0 it stays ``cfg.beta``."""
    rl = ctx.cfg.rl
    env.beta = annealed_beta(
        ctx.cfg.beta, rl.beta_anneal_from, rl.anneal_fraction, env.layer_evals / rl.layer_budget
    )
    return env.beta


@dataclass
class LearnerResult:
    """A trained stop rule and what it cost."""

    model: StopModel
    wall_time_s: float
    layer_evals: int
    curve: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Validator:
    """Scores a stop model on the validation trace, logs it, and keeps the best checkpoint.

    ``best.pt`` holds the state of ``module`` at the best validation metric so far; on a
    crash it is the last good model. ``restore_best`` loads it back at the end.
    """

    def __init__(self, ctx: LearnerContext, module: nn.Module, learner: str) -> None:
        self.ctx = ctx
        self.module = module
        self.learner = learner
        self.writer = summary_writer(ctx.run_dir / "tb")
        self.start = time.perf_counter()
        self.best_metric = math.nan
        self.best_step = -1
        self.best_kl = math.inf
        self.curve: list[dict[str, float]] = []
        self.best_path = ctx.run_dir / "best.pt"
        self.val_oracle = oracle_log_q(ctx.val_trace.losses, ctx.cfg.beta)

    @property
    def wall_time_s(self) -> float:
        return time.perf_counter() - self.start

    @torch.no_grad()
    def __call__(self, model: StopModel, step: int, layer_evals: int) -> float:
        trace = self.ctx.val_trace
        was_training = self.module.training
        self.module.eval()
        logits = stop_logits(model, trace)
        self.module.train(was_training)
        log_q = stop_log_q(logits)
        summary = stop_summary(self.ctx.task, trace, deterministic_stop(logits))
        point = {
            "step": float(step),
            "layer_evals": float(layer_evals),
            "wall_time_s": self.wall_time_s,
            "val_metric": summary["metric"],
            "val_avg_layers": summary["avg_layers"],
            "val_reverse_kl": float(reverse_kl(log_q, self.val_oracle).mean()),
            "val_expected_depth": float(expected_depth(log_q).mean()),
            "val_entropy": float(entropy(log_q).mean()),
        }
        self.curve.append(point)
        w = self.writer
        w.add_scalar("val/metric", point["val_metric"], step)
        w.add_scalar("val/avg_layers", point["val_avg_layers"], step)
        w.add_scalar("val/reverse_kl", point["val_reverse_kl"], step)
        w.add_scalar("val/expected_depth", point["val_expected_depth"], step)
        w.add_scalar("val/entropy", point["val_entropy"], step)
        w.add_scalar("charts/layer_evals", layer_evals, step)
        w.add_scalar("charts/wall_time_s", point["wall_time_s"], step)
        metric = point["val_metric"]
        # On a tied metric (coarse metrics such as accuracy, or rules that all stop at T)
        # the lower shared objective wins, so a trained policy is not discarded for the
        # untrained one merely because it scored no better.
        tied = metric == self.best_metric and point["val_reverse_kl"] < self.best_kl
        if (
            math.isnan(self.best_metric)
            or tied
            or is_better(self.ctx.task, metric, self.best_metric)
        ):
            self.best_kl = point["val_reverse_kl"]
            self.best_metric = metric
            self.best_step = step
            save_checkpoint(
                self.best_path,
                {
                    "kind": "policy",
                    "learner": self.learner,
                    "state_dict": self.module.state_dict(),
                    "step": step,
                    "val_metric": metric,
                    "config": self.ctx.cfg.to_dict(),
                },
            )
        return metric

    def restore_best(self) -> None:
        self.writer.close()
        if self.best_path.is_file():
            state = torch.load(self.best_path, map_location="cpu", weights_only=False)
            self.module.load_state_dict(state["state_dict"])
        self.module.eval()

    def finish(self, model: StopModel, layer_evals: int, **extra: Any) -> LearnerResult:
        """Restore the best checkpoint and report it: the common end of every learner."""
        self.restore_best()
        best = None if math.isnan(self.best_metric) else self.best_metric
        return LearnerResult(
            model=model,
            wall_time_s=self.wall_time_s,
            layer_evals=layer_evals,
            curve=self.curve,
            checkpoint=self.best_path,
            extra={"best_val_metric": best, "best_step": self.best_step, **extra},
        )

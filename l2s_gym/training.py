"""Stage 1, learning to predict: train a LayeredPredictor under the oracle (or a fixed depth)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from l2s_gym.config import Stage1Config, annealed_beta
from l2s_gym.evaluation import depth_curve, is_better, metric_at
from l2s_gym.predictor import LayeredPredictor
from l2s_gym.progress import bar as progress_bar
from l2s_gym.rules import oracle_stop
from l2s_gym.runs import (
    check_finite,
    load_predictor,
    save_checkpoint,
    summary_writer,
)
from l2s_gym.stopping import cost_adjusted_losses, cumulative_costs, oracle_stage_loss
from l2s_gym.task import Task

LossMode = Literal["oracle", "last", "mean"]


def stage1_loss(losses: Tensor, mode: LossMode, beta: float, last_weight: float = 0.0) -> Tensor:
    """Batch loss from per-sample per-layer losses ``(B, T)``.

    ``oracle``: the soft-min ``-beta logsumexp(-l/beta)`` (the paper's "mle" stage 1), plus
    ``last_weight`` times the last layer's loss (0: the paper's); ``last``: the last
    layer's loss (a fixed-depth model); ``mean``: the mean over layers.
    """
    if mode == "oracle":
        soft_min = oracle_stage_loss(losses, beta).mean()
        return soft_min + last_weight * losses[:, -1].mean() if last_weight else soft_min
    if mode == "last":
        return losses[:, -1].mean()
    if mode == "mean":
        return losses.mean()
    raise ValueError(f"unknown stage-1 loss {mode!r}; expected oracle, last or mean")


@dataclass
class Stage1Result:
    best_step: int
    best_val: float
    wall_time_s: float
    checkpoint: Path
    history: list[dict] = field(default_factory=list)
    trained: bool = True
    """False where nothing was trained (see ``trainable``; ``stage1.steps: 0``)."""


def trainable(predictor: LayeredPredictor) -> bool:
    """Whether ``predictor`` has any parameter that requires a gradient."""
    return any(p.requires_grad for p in predictor.parameters())


class _Stage1Run:
    """One predictor's stage 1: the loss, validation with the best checkpoint, the loop."""

    def __init__(
        self,
        predictor: LayeredPredictor,
        task: Task,
        cfg: Stage1Config,
        mode: LossMode,
        beta: float,
        run_dir: Path,
        config_snapshot: dict | None,
        cost: float,
    ) -> None:
        self.predictor, self.task, self.cfg, self.mode, self.beta = predictor, task, cfg, mode, beta
        self.config_snapshot, self.cost = config_snapshot, cost
        self.cum_costs = cumulative_costs(
            predictor.num_layers, predictor.layer_costs(), device=predictor.device
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = summary_writer(run_dir / "tb")
        self.val = task.eval_set("val")
        self.best_path, self.last_path = run_dir / "best.pt", run_dir / "last.pt"
        self.best_val, self.best_step = math.inf, -1
        self.history: list[dict] = []
        self.start = time.perf_counter()

    def batch_loss(self, losses: Tensor, temperature: float | None = None) -> Tensor:
        if self.mode == "oracle":
            losses = cost_adjusted_losses(losses, self.cost, self.cum_costs)
        beta = self.beta if temperature is None else temperature
        return stage1_loss(losses, self.mode, beta, self.cfg.last_layer_weight)

    def checkpoint(self, step: int, val_loss: float) -> dict:
        return {
            "kind": "predictor",
            "state_dict": self.predictor.state_dict(),
            "step": step,
            "val_loss": val_loss,
            "loss_mode": self.mode,
            "config": self.config_snapshot,
            "data_fingerprint": self.task.fingerprint(),
        }

    def validate(self, step: int) -> float:
        """Log the validation figures; checkpoint ``last.pt``, and ``best.pt`` on a new best."""
        task, predictor, w = self.task, self.predictor, self.writer
        predictor.eval()
        with torch.no_grad():
            trace = predictor.trace_eval(self.val, task)
            val_loss = float(self.batch_loss(trace.losses))
        predictor.train()
        curve = depth_curve(task, trace)
        for t, value in enumerate(curve):
            w.add_scalar(f"stage1/val_metric_layer_{t + 1:03d}", value, step)
        oracle_metric = metric_at(task, trace, oracle_stop(trace))
        w.add_scalar("stage1/val_loss", val_loss, step)
        w.add_scalar("stage1/val_metric_last", curve[-1], step)
        w.add_scalar("stage1/val_oracle_metric", oracle_metric, step)
        self.history.append(
            {
                "step": step,
                "val_loss": val_loss,
                "val_metric_last": curve[-1],
                "val_oracle_metric": oracle_metric,
                "wall_time_s": time.perf_counter() - self.start,
            }
        )
        if not math.isfinite(val_loss):
            return val_loss
        save_checkpoint(self.last_path, self.checkpoint(step, val_loss))
        if val_loss < self.best_val:
            self.best_val, self.best_step = val_loss, step
            save_checkpoint(self.best_path, self.checkpoint(step, val_loss))
        return val_loss

    def result(self, trained: bool = True) -> Stage1Result:
        wall = time.perf_counter() - self.start
        step = self.best_step if trained else 0
        return Stage1Result(step, self.best_val, wall, self.best_path, self.history, trained)

    def train(self, seed: int, progress: bool) -> None:
        """Adam on fresh batches, validating every ``val_every`` steps and at the end."""
        cfg, predictor, mode, beta = self.cfg, self.predictor, self.mode, self.beta
        gen = self.task.generator(10_000 + seed)
        optimizer = torch.optim.Adam(predictor.parameters(), lr=cfg.lr)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps, eta_min=0.01 * cfg.lr)
            if cfg.lr_schedule == "cosine"
            else None
        )
        bar = progress_bar(cfg.steps, f"stage 1 ({mode})", progress)
        for step in range(1, cfg.steps + 1):
            trace = predictor.trace(self.task.train_batch(cfg.batch_size, gen), self.task, with_features=False)  # fmt: skip
            temperature = annealed_beta(
                beta, cfg.beta_anneal_from, cfg.anneal_fraction, (step - 1) / cfg.steps
            )
            if mode == "oracle" and temperature != beta:  # the other losses have no temperature
                self.writer.add_scalar("stage1/beta", temperature, step)
            loss = self.batch_loss(trace.losses, temperature)
            kept = self.best_path if self.best_step >= 0 else self.last_path
            check_finite(loss, f"stage 1 ({mode})", f"step {step}", kept, self.writer, bar,
                         module=predictor)  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(predictor.parameters(), cfg.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            self.writer.add_scalar("stage1/loss", loss.item(), step)
            bar.update(1)
            if step % cfg.val_every == 0 or step == cfg.steps:
                v = self.validate(step)
                bar.set_postfix(val=f"{v:.4g}", best=f"{self.best_val:.4g}")
        bar.close()


def train_predictor(
    predictor: LayeredPredictor,
    task: Task,
    cfg: Stage1Config,
    mode: LossMode,
    beta: float,
    run_dir: Path,
    seed: int = 0,
    config_snapshot: dict | None = None,
    progress: bool = True,
    cost: float = 0.0,
) -> Stage1Result:
    """Train ``predictor`` with Adam on fresh batches; keep the best validation checkpoint.

    The validation criterion is the training loss itself on the validation set, so the
    oracle-trained model is kept where its soft-min is lowest and the fixed-depth model
    where its last layer (or layer mean) is. TensorBoard tags: ``stage1/loss``,
    ``stage1/val_loss``, ``stage1/val_metric_layer_<t>`` and ``stage1/val_oracle_metric``.
    On a NaN or inf loss the run stops with ``TrainingDiverged``; ``best.pt`` and
    ``last.pt`` from the last validation remain. ``cost`` (``lambda``) prices the layers
    of the ``oracle`` loss: the soft-min is then taken over ``l_t + lambda C_t``.
    ``cfg.beta_anneal_from`` > 1 starts the oracle's temperature that many times higher
    (falling to ``beta``; TensorBoard ``stage1/beta``); validation always uses ``beta``.
    ``cfg.last_layer_weight`` adds that multiple of the last layer's loss to the oracle
    loss (training and validation alike). A predictor with nothing to train (``trainable``)
    or ``cfg.steps == 0`` is validated and checkpointed at step 0 and returned as built
    (``Stage1Result.trained`` is then false).
    """
    run = _Stage1Run(predictor, task, cfg, mode, beta, run_dir, config_snapshot, cost)
    predictor.train()
    run.validate(0)
    if not trainable(predictor) or cfg.steps == 0:
        # Nothing to train: the model as built is the model, checkpointed at step 0.
        run.writer.close()
        predictor.eval()
        return run.result(trained=False)
    run.train(seed, progress)
    run.writer.close()
    # Continue from the best weights: that is the model the later stages use.
    load_predictor(run.best_path, predictor, freeze=False)
    predictor.eval()
    return run.result()


__all__ = ["stage1_loss", "train_predictor", "trainable", "Stage1Result", "is_better"]

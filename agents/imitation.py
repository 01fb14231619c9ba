"""Stage 2, learning to stop: fit the StopPolicy to the oracle by an exact KL over all T.

The primary learner minimises the reverse KL ``KL(q_phi || q*)``; the forward KL
``KL(q* || q_phi)`` (the official run scripts' choice) is offered under its true name.
Each step draws a fresh batch, runs the frozen predictor once over all T layers (the
trace gives every ``x_t``), and takes the exact KL, so the gradient has no sampling noise.
TensorBoard: ``losses/kl``, ``losses/entropy``, ``charts/expected_depth`` plus the
validation tags shared by every learner (see ``l2s_gym.learner``).
"""

from __future__ import annotations

from typing import Literal

import torch
from tqdm.auto import tqdm

from l2s_gym.build import make_policy
from l2s_gym.config import ImitationConfig, annealed_beta
from l2s_gym.learner import LearnerContext, LearnerResult, Validator
from l2s_gym.registry import register_learner
from l2s_gym.runs import check_finite
from l2s_gym.stopping import (
    entropy,
    expected_depth,
    forward_kl,
    oracle_log_q,
    reverse_kl,
    stop_log_q,
)

Direction = Literal["reverse", "forward"]


def target_beta(icfg: ImitationConfig, beta: float, step: int) -> float:
    """The KL target's temperature at ``step`` (see ``ImitationConfig.beta_anneal_from``)."""
    return annealed_beta(
        beta, icfg.beta_anneal_from, icfg.anneal_fraction, (step - 1) / max(1, icfg.steps)
    )


def train_imitation(ctx: LearnerContext, direction: Direction = "reverse") -> LearnerResult:
    """Train a StopPolicy to imitate the oracle ``q*`` of the frozen ``ctx.predictor``."""
    cfg, task, predictor = ctx.cfg, ctx.task, ctx.predictor
    icfg, beta = cfg.imitation, cfg.beta
    kl_fn = reverse_kl if direction == "reverse" else forward_kl
    policy = make_policy(cfg, predictor, seed=cfg.seed + 1)
    optimizer = torch.optim.Adam(policy.parameters(), lr=icfg.lr)
    gen = task.generator(20_000 + ctx.seed)
    validator = Validator(ctx, policy, f"{direction}_kl")
    predictor.eval()
    layer_evals = 0
    validator(policy, 0, layer_evals)
    bar = tqdm(
        range(1, icfg.steps + 1),
        desc=f"imitation ({direction} KL)",
        disable=not ctx.progress,
        leave=False,
        dynamic_ncols=True,
    )
    for step in bar:
        batch = task.train_batch(icfg.batch_size, gen)
        with torch.no_grad():
            trace = predictor.trace(batch, task)
        layer_evals += len(batch) * predictor.num_layers
        target = oracle_log_q(ctx.objective_losses(trace.losses), target_beta(icfg, beta, step))
        log_q = stop_log_q(policy.trace_logits(trace.features))
        loss = kl_fn(log_q, target).mean()
        check_finite(
            loss,
            f"imitation ({direction} KL)",
            f"step {step}",
            validator.best_path,
            validator.writer,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        w = validator.writer
        w.add_scalar("losses/kl", loss.item(), step)
        w.add_scalar("charts/target_beta", target_beta(icfg, beta, step), step)
        with torch.no_grad():
            w.add_scalar("losses/entropy", float(entropy(log_q).mean()), step)
            w.add_scalar("charts/expected_depth", float(expected_depth(log_q).mean()), step)
        if step % icfg.val_every == 0 or step == icfg.steps:
            metric = validator(policy, step, layer_evals)
            bar.set_postfix(val=f"{metric:.4g}", best=f"{validator.best_metric:.4g}")
    return validator.finish(policy, layer_evals)


@register_learner("reverse_kl", "reverse KL")
def reverse_kl_learner(ctx: LearnerContext) -> LearnerResult:
    """The primary learner: exact reverse KL ``KL(q_phi || q*)``."""
    return train_imitation(ctx, "reverse")


@register_learner("forward_kl", "forward KL")
def forward_kl_learner(ctx: LearnerContext) -> LearnerResult:
    """Exact forward KL ``KL(q* || q_phi)``, as in the official run scripts."""
    return train_imitation(ctx, "forward")

"""The learner contract: what every stop-policy learner gets, returns, and how it is validated.

Every learner (imitation, REINFORCE, PPO, A2C, or one a user registers with
``l2s_gym.registry.register_learner``) receives a ``LearnerContext`` and returns a
``LearnerResult`` whose ``model`` maps trace features to stop logits, so that the same
evaluation code scores all of them. The learners themselves live in ``l2s_gym.agents``
(the top-level ``agents/`` folder); they depend on this module, never the reverse.

The ``Validator`` logs the same TensorBoard tags for each learner, so TensorBoard
overlays their runs:

- ``val/objective``: ``mean l_stop + lambda C_stop`` on the validation trace under the
  read-out rule chosen there (the checkpoint criterion; see ``choose_readout``);
- ``val/metric``, ``val/avg_layers``: the task metric and mean depth under that rule;
- ``val/reverse_kl``: the exact ``KL(q_phi || q*_lambda)`` (the shared training objective);
- ``val/expected_depth``, ``val/entropy``: of ``q_phi``;
- ``charts/layer_evals``, ``charts/wall_time_s``: the cost so far;
- ``val_by_layer_evals/metric`` and ``/objective``: the same, with the layer-evaluation
  count as the step, so that learners overlay on a common compute axis (TensorBoard's
  "relative" horizontal axis gives the wall-time view).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from l2s_gym.config import ExperimentConfig, annealed_beta
from l2s_gym.envs.batched import BatchedStopEnv, balanced_price_weights
from l2s_gym.evaluation import (
    StopModel,
    choose_readout,
    stop_logits,
    stop_objective,
    stop_summary,
)
from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor, Trace
from l2s_gym.rules import PAPER_RULE, ReadoutRule
from l2s_gym.runs import (
    flatten_config,
    is_under,
    load_checkpoint,
    load_state,
    save_checkpoint,
    summary_writer,
)
from l2s_gym.stopping import (
    cost_adjusted_losses,
    cumulative_costs,
    entropy,
    expected_depth,
    oracle_log_q,
    reverse_kl,
    stop_log_q,
)
from l2s_gym.task import Task


@dataclass
class LearnerContext:
    """What a learner gets: the experiment, the task, the frozen predictor, a validation trace.

    Attributes:
        cfg: the validated experiment config.
        task: the task (data streams, per-sample loss, metric).
        predictor: the frozen stage-1 predictor.
        val_trace: its trace on the validation set (features, losses, groups).
        run_dir: the learner's own folder (checkpoints, ``tb/``).
        seed: the seed of this run; learners derive their random streams from it.
        progress: show progress bars.
        cost: ``lambda``, the price of a layer in units of the loss (0: the paper's objective).
        prices: for a price-conditioned policy (``l2s frontier --one-policy``), the grid of
            prices ``lambda`` (loss units) it trains over; ``None``: one price, ``cost``.
        price_unit: the gain per layer on validation, the unit of the policy's price code.
    """

    cfg: ExperimentConfig
    task: Task
    predictor: LayeredPredictor
    val_trace: Trace
    run_dir: Path
    seed: int = 0
    progress: bool = True
    cost: float = 0.0
    prices: list[float] | None = None
    price_unit: float = 1.0

    @property
    def layer_budget(self) -> int:
        """Layer evaluations this learner may spend (``compare.layer_budget``)."""
        return int(self.cfg.compare.layer_budget)

    @property
    def cum_costs(self) -> Tensor:
        """``C_t`` of the predictor's layers (``l2s_gym.stopping.cumulative_costs``)."""
        return cumulative_costs(
            self.predictor.num_layers, self.predictor.layer_costs(), self.predictor.device
        )

    def objective_losses(self, losses: Tensor) -> Tensor:
        """``l_t + lambda C_t``: the losses the oracle, the KL targets and the rewards use."""
        return cost_adjusted_losses(losses, self.cost, self.cum_costs)


def make_rl_env(ctx: LearnerContext, stream: int, num_envs: int = 0) -> BatchedStopEnv:
    """The batched training environment an RL learner samples from, sized by ``num_envs``
    (0: ``ctx.cfg.rl.num_envs``).

    ``stream`` picks the task's random stream (see ``Task.stream_seed``), apart from the
    streams of the validation and test sets and of the other learners. With ``ctx.prices``
    (a price-conditioned policy) each episode draws its price from that grid and the
    observation shows it (``BatchedStopEnv``'s ``prices``), its rewards weighted by
    ``one_policy_price_weights``; else every episode pays ``ctx.cost``.
    """
    rl = ctx.cfg.rl
    return BatchedStopEnv(
        ctx.predictor,
        ctx.task,
        num_envs or rl.num_envs,
        beta=ctx.cfg.beta,
        reward=rl.reward,
        cost=ctx.cost if ctx.prices is None else 0.0,
        seed=ctx.task.stream_seed(stream + ctx.seed),
        prices=ctx.prices,
        price_weights=one_policy_price_weights(ctx),
    )


def one_policy_price_weights(ctx: LearnerContext) -> list[float] | None:
    """The reward factors of an RL one-policy trial's env (``BatchedStopEnv``'s
    ``price_weights``): ``balanced_price_weights`` of the grid with
    ``frontier.one_policy_balance`` (the default), else ``None``; ``None`` at one price."""
    if ctx.prices is None or not ctx.cfg.frontier.one_policy_balance:
        return None
    return balanced_price_weights(ctx.prices, ctx.price_unit)


def auto_anneal_multiple(losses: Tensor, beta: float) -> float:
    """``beta_anneal_from: auto``: the multiple of ``beta`` at which the continuation starts.

    The median over instances of the spread of ``losses`` (``(B, T)``, the objective's
    ``l_t + lambda C_t``) across layers, in units of ``beta``, and at least 1: at that
    temperature every instance's oracle weighs its best and worst layers within a factor
    ``e`` of each other, so no layer is written off at the start, whatever the loss's units.
    """
    spread = losses.double().amax(dim=1) - losses.double().amin(dim=1)
    multiple = float(spread.median()) / beta
    return multiple if math.isfinite(multiple) and multiple > 1 else 1.0


def anneal_multiple(ctx: LearnerContext, setting: float | str, beta: float) -> float:
    """A ``beta_anneal_from`` setting as a number (``auto`` measured on the validation trace's
    objective losses at this learner's price)."""
    if setting == "auto":
        return auto_anneal_multiple(ctx.objective_losses(ctx.val_trace.losses), beta)
    return float(setting)


def anneal_env_beta(ctx: LearnerContext, env: BatchedStopEnv, multiple: float) -> float:
    """Set ``env.beta`` for the RL continuation (``cfg.rl.beta_anneal_from``, resolved to
    ``multiple`` by ``anneal_multiple``) from the layers the env has computed so far; return
    it. With a multiple of 1 it stays ``cfg.beta``."""
    rl = ctx.cfg.rl
    env.beta = annealed_beta(
        ctx.cfg.beta, multiple, rl.anneal_fraction, env.layer_evals / ctx.layer_budget
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
    readout: ReadoutRule = PAPER_RULE
    """The deterministic read-out chosen on the validation set for this model."""
    extra: dict[str, Any] = field(default_factory=dict)


def health_verdict(
    stayed: bool, layers: float | None, oracle: float, num_layers: int
) -> tuple[str, str]:
    """``(status, message)`` of a trained policy from what ``assess_health`` measures:
    whether it ``stayed`` at its initial behaviour, its average stop on validation
    (``layers``) and the oracle's (``oracle``), for a predictor of ``num_layers``."""
    T, gap = num_layers, max(0.5, num_layers / 20)
    if layers is None:
        return "ok", "no validation curve to judge"
    if stayed and abs(layers - oracle) > gap:
        return "untrained", (
            "kept its initial policy: no checkpoint after training scored better on "
            f"validation ({layers:.2f} layers; the oracle stops at {oracle:.2f})"
        )
    if layers >= T - 1e-6 and oracle < T - gap:
        return "never stops", f"never stops ({layers:.2f} of {T} layers) while the oracle stops at {oracle:.2f}"  # fmt: skip
    if layers <= 1 + 1e-6 and oracle > 1 + gap:
        return "always stops", f"always stops at layer 1 while the oracle stops at {oracle:.2f} on average"  # fmt: skip
    return "ok", f"stops at {layers:.2f} layers (the oracle at {oracle:.2f})"


def assess_health(ctx: LearnerContext, result: LearnerResult) -> dict[str, Any]:
    """Whether a trained policy left its initial behaviour, judged on the validation set.

    ``status`` (``health_verdict``): ``untrained`` where the kept checkpoint is the initial
    policy, or scores and stops exactly as it did, and its average stop is more than
    ``max(0.5, T / 20)`` layers from the oracle's (an initial policy that already stops
    where the oracle does, e.g. at layer 1 at a high price, is ``ok``); ``never stops`` /
    ``always stops`` where the kept policy stops every instance at ``T`` / at layer 1 while
    the oracle's average stop (at the same price) is that far away; else ``ok``. ``message``
    says it with the numbers."""
    T = ctx.predictor.num_layers
    losses = ctx.objective_losses(ctx.val_trace.losses)
    oracle = float((losses.argmin(dim=1) + 1).double().mean())
    best = next((p for p in result.curve if p["step"] == result.extra.get("best_step")), None)
    layers = None if best is None else float(best["val_avg_layers"])
    first = result.curve[0] if result.curve else None
    unchanged = (
        best is not None
        and first is not None
        and all(first.get(k) == best.get(k) for k in ("val_objective", "val_avg_layers"))
    )
    stayed = layers is not None and (result.extra.get("best_step") == 0 or unchanged)
    status, message = health_verdict(stayed, layers, oracle, T)
    return {
        "status": status,
        "message": message,
        "val_avg_layers": layers,
        "oracle_val_avg_layers": oracle,
        "stayed": stayed,
    }


class Validator:
    """Scores a stop model on the validation trace, logs it, and keeps the best checkpoint.

    At each call the read-out rule is chosen among ``readout_candidates()`` on the
    validation trace (least objective ``mean l_stop + lambda C_stop``), and the model is
    scored by that objective; ties go to the lower validation reverse KL. ``best.pt``
    holds the state of ``module`` (and its read-out) at the best score so far; on a crash
    it is the last good model. ``finish`` loads it back.
    """

    def __init__(self, ctx: LearnerContext, module: nn.Module, learner: str) -> None:
        self.ctx = ctx
        self.module = module
        self.learner = learner
        self.writer = summary_writer(ctx.run_dir / "tb")
        self.start = time.perf_counter()
        self.best_objective = math.inf
        self.best_metric = math.nan
        self.best_step = -1
        self.best_kl = math.inf
        self.best_readout = PAPER_RULE
        self.curve: list[dict[str, Any]] = []
        self.best_path = ctx.run_dir / "best.pt"
        self.cum_costs = ctx.cum_costs
        self.val_oracle = oracle_log_q(ctx.objective_losses(ctx.val_trace.losses), ctx.cfg.beta)

    @property
    def wall_time_s(self) -> float:
        return time.perf_counter() - self.start

    def _measure(self, model: StopModel) -> tuple[dict[str, Any], ReadoutRule, dict[str, Any]]:
        """The validation figures of ``model``, its read-out, and what else its checkpoint
        records (nothing here; ``PriceGridValidator``: the read-out of every price)."""
        trace, cost = self.ctx.val_trace, self.ctx.cost
        was_training = self.module.training
        self.module.eval()
        logits = stop_logits(model, trace)
        self.module.train(was_training)
        log_q = stop_log_q(logits)
        readout, _ = choose_readout(trace, logits, cost, self.cum_costs)
        stop = readout.stop(logits)
        summary = stop_summary(self.ctx.task, trace, stop)
        point = {
            "val_objective": stop_objective(trace, stop, cost, self.cum_costs),
            "val_metric": summary["metric"],
            "val_avg_layers": summary["avg_layers"],
            "val_readout": readout.label,
            "val_reverse_kl": float(reverse_kl(log_q, self.val_oracle).mean()),
            "val_expected_depth": float(expected_depth(log_q).mean()),
            "val_entropy": float(entropy(log_q).mean()),
        }
        return point, readout, {}

    @torch.no_grad()
    def __call__(self, model: StopModel, step: int, layer_evals: int) -> float:
        """Validate ``model`` (after ``layer_evals`` layer evaluations); returns its metric."""
        cost = self.ctx.cost
        measured, readout, recorded = self._measure(model)
        point = {
            "step": float(step),
            "layer_evals": float(layer_evals),
            "wall_time_s": self.wall_time_s,
            **measured,
        }
        self.curve.append(point)
        w = self.writer
        for key in ("objective", "metric", "avg_layers", "reverse_kl", "expected_depth", "entropy"):
            w.add_scalar(f"val/{key}", point[f"val_{key}"], step)
        w.add_scalar("charts/layer_evals", layer_evals, step)
        w.add_scalar("charts/wall_time_s", point["wall_time_s"], step)
        w.add_scalar("val_by_layer_evals/metric", point["val_metric"], layer_evals)
        w.add_scalar("val_by_layer_evals/objective", point["val_objective"], layer_evals)
        objective = point["val_objective"]
        # On a tie (rules that all stop at the same layers) the lower shared objective wins,
        # so a trained policy is not discarded for the untrained one merely because it
        # scored no better.
        tied = objective == self.best_objective and point["val_reverse_kl"] < self.best_kl
        if self.best_step < 0 or tied or objective < self.best_objective:
            self.best_objective = objective
            self.best_kl = point["val_reverse_kl"]
            self.best_metric = point["val_metric"]
            self.best_step = step
            self.best_readout = readout
            save_checkpoint(
                self.best_path,
                {
                    "kind": "policy",
                    "learner": self.learner,
                    "state_dict": self.module.state_dict(),
                    "step": step,
                    "val_metric": point["val_metric"],
                    "val_objective": objective,
                    "readout": readout.to_dict(),
                    "cost": cost,
                    "config": self.ctx.cfg.to_dict(),
                    "data_fingerprint": self.ctx.task.fingerprint(),
                    **recorded,
                },
            )
        return point["val_metric"]

    def restore_best(self) -> None:
        self.writer.close()
        if self.best_path.is_file():
            state = load_checkpoint(self.best_path, "policy")
            load_state(self.module, state["state_dict"], self.best_path)
        self.module.eval()

    def write_hparams(self) -> None:
        """The trial's settings and its kept model's validation figures in TensorBoard's
        HParams tab (``hparams/val_metric``, ``hparams/val_objective``,
        ``hparams/val_avg_layers``), in this trial's own ``tb/`` folder."""
        from torch.utils.tensorboard.summary import hparams

        best = next((p for p in self.curve if p["step"] == self.best_step), None)
        if best is None:
            return
        params: dict[str, Any] = {"learner": self.learner, "seed": self.ctx.seed,
                                  "lambda": self.ctx.cost, "beta": self.ctx.cfg.beta}  # fmt: skip
        for key, value in flatten_config(self.ctx.cfg.to_dict()).items():
            if is_under(key, ("policy", "imitation", "rl")) and value is not None:
                ok = isinstance(value, bool | int | float | str)
                params[key] = value if ok else str(value)
        metrics = {f"hparams/val_{k}": float(best[f"val_{k}"]) for k in ("metric", "objective", "avg_layers")}  # fmt: skip
        for part in hparams(params, metrics):
            self.writer.file_writer.add_summary(part)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, 0)

    def finish(self, model: StopModel, layer_evals: int, **extra: Any) -> LearnerResult:
        """Restore the best checkpoint and report it: the common end of every learner."""
        self.write_hparams()
        self.restore_best()
        best = None if math.isnan(self.best_metric) else self.best_metric
        return LearnerResult(
            model=model,
            wall_time_s=self.wall_time_s,
            layer_evals=layer_evals,
            curve=self.curve,
            checkpoint=self.best_path,
            readout=self.best_readout,
            extra={
                "best_val_metric": best,
                "best_val_objective": self.best_objective,
                "best_step": self.best_step,
                **extra,
            },
        )


class PriceGridValidator(Validator):
    """The ``Validator`` of a price-conditioned policy (``ctx.prices``): at each price of the
    grid the read-out is chosen on the validation trace (as for a per-price policy), and
    the checkpoint criterion ``val_objective`` is the mean over the grid of the validation
    objective ``mean l_stop + lambda C_stop`` (every term in loss units, so no price is
    weighed but by its own objective). ``val_metric``, ``val_avg_layers``, ``val_readout``
    and the KL, depth and entropy figures are those at the lowest price (``ctx.cost``), so
    the health check reads them as a per-price trial's; ``val_objective_by_price`` holds the
    grid's. The checkpoint records every price's read-out (``readouts``, ``prices``)."""

    def __init__(self, ctx: LearnerContext, module: nn.Module, learner: str) -> None:
        super().__init__(ctx, module, learner)
        if not ctx.prices:
            raise ValueError("PriceGridValidator needs ctx.prices")
        self.prices = [float(p) for p in ctx.prices]
        losses = ctx.val_trace.losses
        self.oracles = [
            oracle_log_q(cost_adjusted_losses(losses, p, self.cum_costs), ctx.cfg.beta)
            for p in self.prices
        ]

    def _measure(self, model: StopModel) -> tuple[dict[str, Any], ReadoutRule, dict[str, Any]]:
        trace, policy = self.ctx.val_trace, self.module
        was_training, dial = policy.training, policy.price  # type: ignore[attr-defined]
        policy.eval()
        objectives, rules, first = [], [], None
        for price, oracle in zip(self.prices, self.oracles, strict=True):
            policy.set_price(price)  # type: ignore[operator]
            # Every grid price at each validation: the folded MLP, about half the time.
            logits = stop_logits(model, trace, folded=True)
            readout, _ = choose_readout(trace, logits, price, self.cum_costs)
            stop = readout.stop(logits)
            objectives.append(stop_objective(trace, stop, price, self.cum_costs))
            rules.append(readout)
            if price == self.ctx.cost or first is None:
                log_q = stop_log_q(logits)
                summary = stop_summary(self.ctx.task, trace, stop)
                first = {
                    "val_metric": summary["metric"],
                    "val_avg_layers": summary["avg_layers"],
                    "val_readout": readout.label,
                    "val_reverse_kl": float(reverse_kl(log_q, oracle).mean()),
                    "val_expected_depth": float(expected_depth(log_q).mean()),
                    "val_entropy": float(entropy(log_q).mean()),
                }
                low_rule = readout
        policy.set_price(dial)  # type: ignore[operator]
        policy.train(was_training)
        point = {
            "val_objective": float(sum(objectives) / len(objectives)),
            **first,  # type: ignore[dict-item]
            "val_objective_by_price": objectives,
        }
        recorded = {"prices": self.prices, "readouts": [r.to_dict() for r in rules]}
        return point, low_rule, recorded


def rl_stop_policy(
    ctx: LearnerContext, name: str, seed: int | None = None
) -> tuple[StopPolicy, Validator]:
    """An RL learner's StopPolicy (``make_policy``; ``seed`` fixes its init) and its
    validator. With ``ctx.prices`` (a one-policy trial) the policy is price-conditioned, its
    dial at ``ctx.cost`` in ``ctx.price_unit``, validated over the grid
    (``PriceGridValidator``); else a plain ``Validator``."""
    from l2s_gym.build import make_policy

    priced = ctx.prices is not None
    policy = make_policy(ctx.cfg, ctx.predictor, seed=seed, price_input=priced)
    if priced:
        policy.set_price(ctx.cost, ctx.price_unit)
    return policy, (PriceGridValidator if priced else Validator)(ctx, policy, name)

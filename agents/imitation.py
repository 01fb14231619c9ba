"""Stage 2, learning to stop: fit the StopPolicy to the oracle by an exact KL over all T.

The primary learner minimises the reverse KL ``KL(q_phi || q*)``; the forward KL
``KL(q* || q_phi)`` (the official run scripts' choice) is offered under its true name.
Each step takes a batch of traces of the frozen predictor over all T layers (a fresh
batch, or one drawn from a buffer traced once: ``imitation.buffer_size``; see
``TraceSource``) and the exact KL, so the gradient has no sampling noise. The KL target is
the cost-aware oracle ``q*_lambda`` of the context's layer price.

With a grid of prices (``ctx.prices``: ``l2s frontier --one-policy``) one price-conditioned
policy is trained for all of them: each instance of a batch gets a price drawn uniformly
from the grid, and the loss is the mean of the exact KL of ``q_phi(. | x, lambda_i)``
against ``q*_{lambda_i}`` (each price's KL scaled so that the prices weigh more alike:
``frontier.one_policy_balance``, ``PriceDraws.weights``), at the cost of one per-price step
(the trace is the same at every price: only ``lambda C_t`` changes).
TensorBoard: ``losses/kl``, ``losses/entropy``, ``charts/expected_depth`` plus the
validation tags shared by every learner (see ``l2s_gym.learner``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from l2s_gym import progress
from l2s_gym.build import make_policy
from l2s_gym.config import AUTO_BUFFER_MAX, ImitationConfig, annealed_beta
from l2s_gym.learner import (
    LearnerContext,
    LearnerResult,
    PriceGridValidator,
    Validator,
    anneal_multiple,
)
from l2s_gym.predictor import Trace
from l2s_gym.progress import notify
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


def target_beta(icfg: ImitationConfig, beta: float, step: int, multiple: float) -> float:
    """The KL target's temperature at ``step``: ``beta`` times a factor falling from
    ``multiple`` (``ImitationConfig.beta_anneal_from``, resolved) to 1."""
    return annealed_beta(beta, multiple, icfg.anneal_fraction, (step - 1) / max(1, icfg.steps))


def buffer_instances(setting: int | str, budget: int, num_layers: int) -> int:
    """How many instances ``imitation.buffer_size`` traces: the number given, or for
    ``auto`` as many as ``budget`` layer evaluations fund, at most ``AUTO_BUFFER_MAX``."""
    if setting == "auto":
        return min(AUTO_BUFFER_MAX, budget // num_layers)
    return int(setting)


class TraceSource:
    """Where imitation's batches of traces come from: fresh ones, or a cached buffer.

    Without a buffer every batch is a fresh draw from the task, traced over all T layers
    (``batch_size * T`` layer evaluations each). With ``buffer_size > 0`` the frozen
    predictor traces that many training instances once (``buffer_size * T`` evaluations,
    capped by the budget) and batches are drawn from the buffer, epoch by epoch; the
    predictor does not change in stage 2, so a cached trace is as good as a fresh one.
    Only features, losses and groups are kept (no predictions).
    """

    def __init__(self, ctx: LearnerContext, batch_size: int, budget: int) -> None:
        self.ctx, self.batch_size = ctx, batch_size
        self.T = ctx.predictor.num_layers
        self.gen = ctx.task.generator(20_000 + ctx.seed)
        self.layer_evals = 0
        self.buffer: Trace | None = None
        asked = buffer_instances(ctx.cfg.imitation.buffer_size, budget, self.T)
        size = self.size = min(asked, budget // self.T)
        if size < asked:
            notify(
                f"imitation: compare.layer_budget {budget:,} funds a trace buffer of {size:,} "
                f"instances, not the {asked:,} of imitation.buffer_size (x T = {self.T})"
            )
        if size > 0:
            chunk = ctx.cfg.compare.eval_batch_size
            parts = []
            with torch.no_grad():
                for start in range(0, size, chunk):
                    batch = ctx.task.train_batch(min(chunk, size - start), self.gen)
                    parts.append(ctx.predictor.trace(batch, ctx.task))
            self.buffer = Trace.cat(parts)
            self.layer_evals = size * self.T
            self._order = torch.empty(0, dtype=torch.long)
            self._pos = 0
            self._index_gen = torch.Generator().manual_seed(ctx.task.stream_seed(21_000 + ctx.seed))

    def can_draw(self, budget: int) -> bool:
        """Whether another batch fits in ``budget`` (a buffered batch costs nothing more)."""
        return self.buffer is not None or self.layer_evals + self.batch_size * self.T <= budget

    def draw(self) -> tuple[Tensor, Tensor]:
        """``(features, losses)`` of the next batch."""
        if self.buffer is None:
            batch = self.ctx.task.train_batch(self.batch_size, self.gen)
            with torch.no_grad():
                trace = self.ctx.predictor.trace(batch, self.ctx.task)
            self.layer_evals += len(batch) * self.T
            return trace.features, trace.losses.detach()
        n = len(self.buffer)
        if self._pos + self.batch_size > len(self._order):
            # A new epoch: a fresh permutation (the tail of the last one is dropped).
            self._order = torch.randperm(n, generator=self._index_gen)
            self._pos = 0
        idx = self._order[self._pos : self._pos + self.batch_size].to(self.buffer.losses.device)
        self._pos += self.batch_size
        return self.buffer.features[idx], self.buffer.losses[idx]


def _say_if_unfunded(name: str, icfg: ImitationConfig, budget: int, source: TraceSource) -> None:
    """Say so when the layer budget funds fewer fresh batches than ``imitation.steps``."""
    funded = icfg.steps if source.buffer is not None else budget // (icfg.batch_size * source.T)
    if funded < icfg.steps:
        notify(
            f"{name}: compare.layer_budget {budget:,} funds {funded:,} of imitation.steps "
            f"{icfg.steps:,} (fresh batches of {icfg.batch_size} x T = {source.T} layers); "
            "set imitation.buffer_size or raise the budget"
        )


def train_imitation(ctx: LearnerContext, direction: Direction = "reverse") -> LearnerResult:
    """Train a StopPolicy to imitate the oracle ``q*`` of the frozen ``ctx.predictor``.

    Runs ``imitation.steps`` steps. With fresh batches (``imitation.buffer_size: 0``) it
    stops early if the next batch would exceed the learner's layer budget
    (``ctx.layer_budget``), and says so (``l2s_gym.progress.notify``); the result records
    the steps run, the steps asked and what ended training.
    """
    cfg, predictor = ctx.cfg, ctx.predictor
    icfg = cfg.imitation
    beta = cfg.beta if icfg.beta is None else icfg.beta
    kl_fn = reverse_kl if direction == "reverse" else forward_kl
    budget = ctx.layer_budget
    grid = ctx.prices
    policy = make_policy(cfg, predictor, seed=cfg.seed + 1, price_input=grid is not None)
    optimizer = torch.optim.Adam(policy.parameters(), lr=icfg.lr)
    if grid is not None:
        policy.set_price(ctx.cost, ctx.price_unit)
        validator: Validator = PriceGridValidator(ctx, policy, f"{direction}_kl")
        fcfg = cfg.frontier
        prices = PriceDraws(
            ctx, grid, icfg.beta_anneal_from, beta, fcfg.one_policy_draws, fcfg.one_policy_balance
        )
    else:
        validator = Validator(ctx, policy, f"{direction}_kl")
    predictor.eval()
    source = TraceSource(ctx, icfg.batch_size, budget)
    multiple = anneal_multiple(ctx, icfg.beta_anneal_from, beta)
    name = f"imitation ({direction} KL)"
    _say_if_unfunded(name, icfg, budget, source)
    validator(policy, 0, source.layer_evals)
    bar = progress.bar(icfg.steps, name, ctx.progress)
    w = validator.writer
    # Logged in batches at each validation: a .item() per step would synchronise a GPU.
    pending: list[tuple[int, Tensor, Tensor, Tensor]] = []
    step = 0
    while step < icfg.steps and source.can_draw(budget):
        step += 1
        features, losses = source.draw()
        if grid is None:
            target = oracle_log_q(
                ctx.objective_losses(losses), target_beta(icfg, beta, step, multiple)
            )
            log_q = stop_log_q(policy.trace_logits(features))
        else:
            features, lam, target = prices.targets(features, losses, icfg, beta, step)
            log_q = stop_log_q(policy.trace_logits(features, lam))
        kl_rows = kl_fn(log_q, target)
        loss = (kl_rows if grid is None else kl_rows * prices.weights(kl_rows)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            pending.append(
                (step, kl_rows.detach().mean(), entropy(log_q).mean(), expected_depth(log_q).mean())
            )
        bar.update(1)
        last = step == icfg.steps or not source.can_draw(budget)
        if step % icfg.val_every == 0 or last:
            total = torch.stack([p[1] for p in pending]).sum()
            check_finite(total, name, f"step {step}", validator.best_path, w, bar, module=policy)
            for s, kl, ent, depth in pending:
                for tag, value in (("losses/kl", kl), ("losses/entropy", ent), ("charts/expected_depth", depth)):  # fmt: skip
                    w.add_scalar(tag, float(value), s)
                w.add_scalar("charts/target_beta", target_beta(icfg, beta, s, multiple), s)
            pending.clear()
            metric = validator(policy, step, source.layer_evals)
            bar.set_postfix(val=f"{metric:.4g}", best=f"{validator.best_metric:.4g}")
    bar.close()
    return validator.finish(
        policy,
        source.layer_evals,
        steps=step,
        steps_configured=icfg.steps,
        stopped_by="imitation.steps" if step == icfg.steps else "compare.layer_budget",
        buffer_instances=source.size,
        anneal_multiple=multiple,
        **({} if grid is None else prices.record()),
    )


class PriceDraws:
    """The prices of a price-conditioned policy's batches: one per instance, uniform over
    the grid (``ctx.prices``, loss units), from a seeded stream; each price's KL target
    temperature anneals from its own ``beta_anneal_from`` multiple (``auto``: measured at
    that price, as a per-price trial at it would).

    With ``balance`` (``frontier.one_policy_balance``), ``weights`` scales each row's KL so
    that the grid prices weigh more alike in the gradient: by the grid mean of the prices'
    running mean KLs over its own price's, to the power ``BALANCE_POWER`` (``BALANCE_DECAY``;
    within ``BALANCE_CLIP`` of 1 either way). Each price's objective is only scaled (its best
    policy is the same); unscaled, the high prices, whose KL is the largest (eight to ten
    times price 0's on sparse recovery), set the shared weights and the low prices, whose
    decisions sit near full depth, lost the most (docs/deploy.md)."""

    BALANCE_DECAY = 0.95
    """The running mean's decay per step."""
    BALANCE_POWER = 0.5
    """The factor is the ratio of running means to this power: 1 makes every price weigh
    alike, 0 is the plain mean. 0.5 was chosen on validation (sparse recovery and
    denoising, 3 seeds; the worst of the two one-policy-to-per-price gap ratios: 0.87 at 0,
    0.93 at 0.5, 0.91 at 1; docs/deploy.md)."""
    BALANCE_CLIP = 10.0
    """A price's factor stays within ``[1 / BALANCE_CLIP, BALANCE_CLIP]``."""

    def __init__(
        self,
        ctx: LearnerContext,
        grid: list[float],
        setting: float | str,
        beta: float,
        per_instance: int = 1,
        balance: bool = False,
    ) -> None:
        from dataclasses import replace

        self.ctx = ctx
        self.per_instance = min(int(per_instance), len(grid))
        self.prices = [float(p) for p in grid]
        self.grid = torch.tensor(self.prices, dtype=torch.float32)
        self.balance = bool(balance)
        device = ctx.cum_costs.device
        # Running mean KL per grid price (on the device: no synchronisation per step).
        self.running = torch.zeros(len(grid), dtype=torch.float64, device=device)
        self.seen = torch.zeros(len(grid), dtype=torch.bool, device=device)
        self.last_idx: Tensor | None = None
        self.multiples = torch.tensor(
            [anneal_multiple(replace(ctx, cost=float(p)), setting, beta) for p in grid],
            dtype=torch.float64,
        )
        self.cum = ctx.cum_costs
        self.gen = torch.Generator().manual_seed(ctx.task.stream_seed(22_000 + ctx.seed))

    def draw(self, n: int, icfg: ImitationConfig, beta: float, step: int) -> tuple[Tensor, Tensor]:
        """``(lambda, temperature)``, each ``(n,)``, on the predictor's device. With
        ``per_instance = m > 1`` the ``n`` rows are ``n / m`` instances repeated ``m`` times
        (consecutively), each at ``m`` distinct grid prices (all of them for ``m >= K``)."""
        K = len(self.grid)
        m = min(self.per_instance, K)
        if m <= 1:
            idx = torch.randint(K, (n,), generator=self.gen)
        elif m == K:
            idx = torch.arange(K).repeat(n // K)
        else:
            order = torch.rand(n // m, K, generator=self.gen).argsort(dim=1)
            idx = order[:, :m].reshape(-1)
        temps = torch.tensor(
            [target_beta(icfg, beta, step, float(m)) for m in self.multiples], dtype=torch.float32
        )
        device = self.cum.device
        self.last_idx = idx.to(device)
        return self.grid[idx].to(device), temps[idx].to(device)

    def weights(self, kl: Tensor) -> Tensor:
        """Per-row factors ``(n,)`` for the rows' KLs ``kl`` of the last ``draw`` (ones
        without ``balance``); updates each drawn price's running mean KL first."""
        if not self.balance or self.last_idx is None:
            return torch.ones_like(kl)
        idx, K = self.last_idx, len(self.prices)
        with torch.no_grad():
            counts = torch.bincount(idx, minlength=K).to(torch.float64)
            sums = torch.bincount(idx, weights=kl.detach().double(), minlength=K)
            drawn = counts > 0
            mean = sums / counts.clamp_min(1)
            d = self.BALANCE_DECAY
            blended = torch.where(self.seen, d * self.running + (1 - d) * mean, mean)
            self.running = torch.where(drawn, blended, self.running)
            self.seen = self.seen | drawn
            grid_mean = (self.running * self.seen).sum() / self.seen.sum().clamp_min(1)
            ratio = (grid_mean / self.running.clamp_min(1e-12)) ** self.BALANCE_POWER
            factor = ratio.clamp(1 / self.BALANCE_CLIP, self.BALANCE_CLIP)
        return factor[idx].to(kl.dtype)

    def targets(
        self, features: Tensor, losses: Tensor, icfg: ImitationConfig, beta: float, step: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(features, lambda, log q*_lambda)`` of a batch at step ``step``: each instance at
        ``per_instance`` grid prices (its rows repeated that many times), the KL target at
        each row's price and temperature."""
        m = self.per_instance
        if m > 1:  # each instance at several prices of the grid
            features, losses = features.repeat_interleave(m, 0), losses.repeat_interleave(m, 0)
        lam, temperature = self.draw(len(losses), icfg, beta, step)
        return features, lam, oracle_log_q(self.adjusted(losses, lam), temperature.unsqueeze(1))

    def record(self) -> dict[str, object]:
        """What the learner's result records of the grid."""
        return {
            "prices": list(self.prices),
            "price_unit": self.ctx.price_unit,
            "price_draws_per_instance": self.per_instance,
            "anneal_multiples": self.multiples.tolist(),
            "price_balance": self.balance,
            **({"running_kl": self.running.tolist()} if self.balance else {}),
        }

    def adjusted(self, losses: Tensor, lam: Tensor) -> Tensor:
        """``l_t + lambda_i C_t`` per instance ``i``."""
        cum = self.cum.to(device=losses.device, dtype=losses.dtype)
        return losses + lam.to(losses.dtype).unsqueeze(1) * cum


@register_learner("reverse_kl", "reverse KL", kind="imitation")
def reverse_kl_learner(ctx: LearnerContext) -> LearnerResult:
    """The primary learner: exact reverse KL ``KL(q_phi || q*)``."""
    return train_imitation(ctx, "reverse")


@register_learner("forward_kl", "forward KL", kind="imitation")
def forward_kl_learner(ctx: LearnerContext) -> LearnerResult:
    """Exact forward KL ``KL(q* || q_phi)``, as in the official run scripts."""
    return train_imitation(ctx, "forward")

"""REINFORCE on the batched stop environment: the sampled-episode twin of reverse-KL imitation.

Read top to bottom: the objective, the rollout, the update, the loop.

The objective
-------------
An episode walks one instance through the frozen predictor's layers; after layer ``t``
the StopPolicy gives ``pi_t = sigmoid(s_t)``, the agent stops with that probability, and
the last layer always stops (the env ends the episode on arriving there, so every env
step is a decision). With the env's reward (``cfg.rl.reward``) ``r = -l_t / beta``
on stopping (or ``log q*(t)``, the same up to a per-instance constant) the agent maximises

    J(phi) = E_{t ~ q_phi}[ R ] + c * H(q_phi),        c = cfg.rl.entropy_coef,

which, for ``c = 1``, is ``-(E_q[l_t] - beta H(q)) / beta``: the paper's objective; with
``log_oracle`` rewards it is exactly ``-KL(q_phi || q*)``, what ``reverse_kl`` minimises.

The entropy bonus, per decision. The stop time and the sequence of continue/stop
actions determine each other, so their entropies are equal, and the chain rule of
entropy splits the stop-time entropy into per-decision Bernoulli entropies:

    H(q_phi) = sum_{t < T} P(reach t) * h(pi_t),    h(p) = -p log p - (1-p) log(1-p)
             = E_episode[ sum_{decisions k taken} h(pi_{t_k}) ]

(layer ``T`` always stops: it takes no decision and has no entropy, and the env asks none
there). So ``J`` is the expected return of an
episode whose decisions each also earn ``c * h(pi_t)``. Its exact gradient is

    grad J = E[ sum_k grad log pi(a_k | s_k) * (S_k - b_k) + c * grad h(pi_{t_k}) ],
    S_k    = sum_{k' >= k} r_{k'} + c * sum_{k' > k} h(pi_{t_k'})   (the soft return-to-go),

because neither earlier rewards nor ``h`` at the current or earlier states depend on
``a_k``. ``S_k`` carries the *future* entropy, which the usual per-step entropy bonus of
A2C/PPO leaves out; here it is kept, so the estimate is unbiased for ``J``.

The baseline ``b_k``: the leave-one-out mean of ``S`` over the other decisions made at
the same layer in the same batch. It depends only on other episodes, so it adds no bias,
and the soft return at layer ``t`` varies much less than across layers.

The rollout: which episodes count
---------------------------------
The env runs ``N`` rows with same-step autoreset, so episodes begin and end at different
steps. An update uses every episode that *starts* within the first ``rollout_steps``
steps of its window; the window then runs on until all of those have ended (an episode
takes at most ``T - 1`` decisions, so at most ``T - 2`` more steps). Whether an episode
counts is decided before it begins, so the chosen episodes are plain on-policy samples
(choosing the episodes that *ended* in a fixed window would favour short ones). The
layers computed by episodes that do not count (in flight at a window's start, or begun in
its tail) are wasted, and are counted: the budget ``compare.layer_budget`` (every learner's) is on
``env.layer_evals``, every layer the env computed.

Hyper-parameters (``cfg.rl``, documented in ``l2s_gym.config.RLConfig``): ``reward``,
``num_envs`` (or its own ``reinforce_num_envs``), ``lr``, ``val_every`` (in updates), ``entropy_coef``
(``c``), ``gamma``, ``rollout_steps``, ``reinforce_scale_free`` (each update's surrogate
divided by the spread of its advantages); ``cfg.beta`` sets the reward scale and ``ctx.cost``
the price of a layer; ``beta_anneal_from`` / ``anneal_fraction`` start the temperature
hotter (the continuation imitation has, see ``l2s_gym.learner.anneal_env_beta``;
``charts/target_beta``).

One policy for every price (``ctx.prices``, ``l2s frontier --one-policy``): the policy is
price-conditioned (``StopPolicy(price_input=True)``), the env draws each episode's price
``lambda`` from the grid (``BatchedStopEnv(prices=...)``) and shows it in the observation;
the policy acts at the price its observation shows, the rewards charge each episode its own
price, the update re-runs the policy at those prices, and the baseline is the leave-one-out
mean over the decisions at the same layer *and price* (returns at different prices differ
by ``lambda C_t / beta``; grouping by price keeps that out of the advantages, and still
uses only other episodes). The rewards of an episode at price ``lambda`` are weighted by
``1 / (1 + lambda / g)`` (``frontier.one_policy_balance``, ``make_rl_env``) so that the high
prices do not drown the low ones. Validation and checkpoints go over the grid
(``PriceGridValidator``). Without ``ctx.prices`` nothing of this runs.

TensorBoard: ``losses/policy_gradient``, ``losses/entropy`` (the per-episode estimate of
``H(q)``), ``charts/episode_return``, ``charts/episode_layers``, ``charts/used_fraction``
(share of the window's layer steps that belonged to counted episodes), plus the
validation tags every learner shares (``l2s_gym.learner``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from l2s_gym import progress
from l2s_gym.envs.batched import BatchedStopEnv, obs_price, split_obs
from l2s_gym.learner import (
    LearnerContext,
    LearnerResult,
    anneal_env_beta,
    anneal_multiple,
    make_rl_env,
    rl_stop_policy,
)
from l2s_gym.policy import StopPolicy
from l2s_gym.registry import register_learner
from l2s_gym.runs import check_finite


@dataclass
class Rollout:
    """One window of env steps, ``(K, N)`` per field, ``K`` the window's length.

    ``counted`` marks the decisions of the episodes this update uses.
    """

    features: Tensor
    t: Tensor
    stop: Tensor
    reward: Tensor
    done: Tensor
    counted: Tensor
    layers: Tensor
    """``info["t"]``: the stop layer (1-based) where ``done``."""
    price: Tensor | None = None
    """A price-conditioned policy's: the price ``lambda`` each decision was taken at (the
    observation's, its episode's own); ``None`` for a per-price policy."""


@torch.no_grad()
def collect_rollout(
    env: BatchedStopEnv,
    policy: StopPolicy,
    obs: Tensor,
    start_steps: int,
    generator: torch.Generator,
) -> tuple[Rollout, Tensor]:
    """Step ``env`` with stop actions sampled from ``policy``; returns the window and last obs.

    Episodes starting in the first ``start_steps`` steps are counted; stepping goes on
    until all of them have ended. ``obs`` is the env's current observation.
    """
    feats, ts, stops, rewards, dones, counted_steps, layers = [], [], [], [], [], [], []
    prices: list[Tensor] = []
    # A row at t = 0 starts a fresh episode now; rows mid-episode began under older weights.
    counted = obs[:, -1] == 0
    step = 0
    while True:
        features, t = split_obs(obs, env.feature_shape)
        if policy.price_input:  # each row acts at the price its observation shows
            price = obs_price(obs, env.feature_shape)
            if price is None:
                raise ValueError("a price-conditioned policy needs an env that shows the price")
            prices.append(price)
            stop_prob = torch.sigmoid(policy(features, t, price))
        else:
            stop_prob = torch.sigmoid(policy(features, t))
        stop = torch.bernoulli(stop_prob, generator=generator).bool()
        next_obs, reward, done, info = env.step(stop)
        feats.append(features)
        ts.append(t)
        stops.append(stop)
        rewards.append(reward)
        dones.append(done)
        counted_steps.append(counted)
        layers.append(info["t"])
        step += 1
        # A row that ended starts its next episode at this step: counted if early enough.
        counted = torch.where(done, torch.full_like(done, step < start_steps), counted)
        obs = next_obs
        if step >= start_steps and not bool(counted.any()):
            break
    rollout = Rollout(
        features=torch.stack(feats),
        t=torch.stack(ts),
        stop=torch.stack(stops),
        reward=torch.stack(rewards),
        done=torch.stack(dones),
        counted=torch.stack(counted_steps),
        layers=torch.stack(layers),
        price=torch.stack(prices) if prices else None,
    )
    return rollout, obs


def bernoulli_entropy(logits: Tensor) -> Tensor:
    """``h(sigmoid(s)) = -p log p - (1-p) log(1-p)`` from logits, stable for large ``|s|``."""
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


def soft_returns(
    reward: Tensor, done: Tensor, decision_entropy: Tensor, gamma: float, entropy_coef: float
) -> tuple[Tensor, Tensor]:
    """Soft return-to-go ``S_k`` and plain return-to-go ``G_k``, both ``(K, N)``.

    ``S_k = r_k + gamma * [not done_k] * (c * h_{k+1} + S_{k+1})``: the rewards from step
    ``k`` on plus the entropy of the episode's *later* decisions. Steps past the window's
    end count as zero; only episodes that ended inside the window are ever used.
    """
    soft = torch.zeros_like(reward)
    plain = torch.zeros_like(reward)
    next_soft = torch.zeros_like(reward[0])
    next_plain = torch.zeros_like(reward[0])
    next_entropy = torch.zeros_like(reward[0])
    for k in range(reward.shape[0] - 1, -1, -1):
        go_on = (~done[k]).to(reward.dtype)
        next_soft = reward[k] + gamma * go_on * (entropy_coef * next_entropy + next_soft)
        next_plain = reward[k] + gamma * go_on * next_plain
        soft[k], plain[k] = next_soft, next_plain
        next_entropy = decision_entropy[k]
    return soft, plain


def per_layer_baseline(returns: Tensor, t: Tensor, mask: Tensor, num_layers: int) -> Tensor:
    """Leave-one-out mean of ``returns`` over the other masked decisions at the same layer
    (``t``; any group index below ``num_layers`` works the same, e.g. layer and price)."""
    r, tt, m = returns.flatten(), t.flatten(), mask.flatten().to(returns.dtype)
    total = torch.zeros(num_layers, dtype=r.dtype, device=r.device).index_add_(0, tt, r * m)
    count = torch.zeros(num_layers, dtype=r.dtype, device=r.device).index_add_(0, tt, m)
    others = (count[tt] - m).clamp(min=1)
    return ((total[tt] - r * m) / others).reshape(returns.shape)


@dataclass
class PolicyGradientLoss:
    """The surrogate of one update and its parts (scalars, but ``plain_return`` ``(K, N)``)."""

    loss: Tensor
    """``policy_gradient - entropy_coef * entropy``: its gradient estimates ``-grad J``."""
    policy_gradient: Tensor
    entropy: Tensor
    """Per-episode entropy of the decisions taken: an estimate of ``H(q_phi)``."""
    plain_return: Tensor
    """Return-to-go without entropy, ``G_k``."""


def policy_gradient_loss(
    logits: Tensor,
    rollout: Rollout,
    gamma: float,
    entropy_coef: float,
    num_layers: int,
    scale_free: bool = False,
) -> PolicyGradientLoss:
    """The REINFORCE surrogate of a window, given the policy's stop ``logits`` ``(K, N)`` on it.

    Every step of a counted episode is one of its decisions (the env asks none at layer
    ``T``). Sums over decisions are averaged per counted episode, so that the gradient is
    the one of ``-J`` for one episode (the module docstring derives it). ``scale_free``
    divides the whole surrogate by the standard deviation of the advantages over the
    counted decisions (``cfg.rl.reinforce_scale_free``): the same direction, a size that
    does not depend on the scale of the returns. The reported ``policy_gradient`` and
    ``entropy`` are the unscaled terms. A window with prices (``rollout.price``) takes its
    baseline per layer and price.
    """
    decision = rollout.counted
    entropy = bernoulli_entropy(logits) * decision
    log_prob = torch.where(rollout.stop, F.logsigmoid(logits), F.logsigmoid(-logits))
    soft, plain = soft_returns(rollout.reward, rollout.done, entropy.detach(), gamma, entropy_coef)
    group, groups = rollout.t, num_layers
    if rollout.price is not None:
        values, price_index = torch.unique(rollout.price, return_inverse=True)
        group, groups = price_index * num_layers + rollout.t, num_layers * len(values)
    advantage = soft - per_layer_baseline(soft, group, decision, groups)
    num_episodes = (rollout.done & rollout.counted).sum().clamp(min=1)
    pg_loss = -(log_prob * advantage.detach() * decision).sum() / num_episodes
    entropy_per_episode = entropy.sum() / num_episodes
    loss = pg_loss - entropy_coef * entropy_per_episode
    if scale_free:
        counted = advantage.detach()[decision]
        spread = counted.std() if counted.numel() > 1 else counted.new_zeros(())
        # No spread (one decision, or every advantage equal): nothing to scale by.
        loss = torch.where(spread > 1e-8, loss / (spread + 1e-8), loss)
    return PolicyGradientLoss(loss, pg_loss, entropy_per_episode, plain)


def train_reinforce(ctx: LearnerContext) -> LearnerResult:
    """Train a StopPolicy by REINFORCE on ``BatchedStopEnv`` over the frozen ``ctx.predictor``."""
    cfg, predictor = ctx.cfg, ctx.predictor
    rl = cfg.rl
    T = predictor.num_layers
    env = make_rl_env(ctx, stream=30_000, num_envs=rl.reinforce_num_envs)
    grid = ctx.prices
    policy, validator = rl_stop_policy(ctx, "reinforce", seed=cfg.seed + 1)
    optimizer = torch.optim.Adam(policy.parameters(), lr=rl.lr)
    generator = torch.Generator(device=env.device)
    generator.manual_seed(40_000 + ctx.seed)
    w = validator.writer
    validator(policy, 0, 0)

    multiple = anneal_multiple(ctx, rl.beta_anneal_from, cfg.beta)
    obs = env.reset()
    update = 0
    bar = progress.bar(ctx.layer_budget, "REINFORCE", ctx.progress, unit="layer", unit_scale=True)
    while env.layer_evals < ctx.layer_budget:
        w.add_scalar("charts/target_beta", anneal_env_beta(ctx, env, multiple), update + 1)
        policy.eval()
        rollout, obs = collect_rollout(env, policy, obs, rl.rollout_steps, generator)
        policy.train()
        update += 1

        # Re-run the policy on the window with gradients; every step of a counted episode is
        # one of its decisions (the env asks none at layer T).
        K, N = rollout.t.shape
        price = None if rollout.price is None else rollout.price.reshape(-1)
        logits = policy(
            rollout.features.reshape(K * N, *env.feature_shape), rollout.t.reshape(-1), price
        ).reshape(K, N)
        terms = policy_gradient_loss(
            logits, rollout, rl.gamma, rl.entropy_coef, T, rl.reinforce_scale_free
        )
        loss, pg_loss, entropy_per_episode = terms.loss, terms.policy_gradient, terms.entropy
        check_finite(
            loss,
            "REINFORCE",
            f"update {update}",
            validator.best_path,
            validator.writer,
            bar,
            module=policy,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        starts = rollout.counted & (rollout.t == 0)
        episodes = rollout.done & rollout.counted
        w.add_scalar("losses/policy_gradient", pg_loss.item(), update)
        w.add_scalar("losses/entropy", entropy_per_episode.item(), update)
        w.add_scalar("charts/episode_return", float(terms.plain_return[starts].mean()), update)
        w.add_scalar(
            "charts/episode_layers", float(rollout.layers[episodes].float().mean()), update
        )
        w.add_scalar("charts/used_fraction", float(rollout.counted.float().mean()), update)
        bar.update(min(env.layer_evals, ctx.layer_budget) - bar.n)  # never past the total
        if update % rl.val_every == 0 or env.layer_evals >= ctx.layer_budget:
            metric = validator(policy, update, env.layer_evals)
            bar.set_postfix(val=f"{metric:.4g}", best=f"{validator.best_metric:.4g}")
    bar.close()
    return validator.finish(
        policy,
        env.layer_evals,
        updates=update,
        episodes=env.episodes_done,
        stopped_by="compare.layer_budget",
        anneal_multiple=multiple,
        **({} if grid is None else {"prices": list(grid), "price_unit": ctx.price_unit}),
    )


@register_learner("reinforce", "REINFORCE", one_policy=True)
def reinforce_learner(ctx: LearnerContext) -> LearnerResult:
    """REINFORCE with the exact max-entropy gradient and a per-layer baseline."""
    return train_reinforce(ctx)

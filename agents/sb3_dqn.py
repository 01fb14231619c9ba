"""DQN from stable-baselines3 on the batched stop environment: the value-based baseline.

The Q-network is shaped like the StopPolicy (``sb3_agents.StopFeaturesExtractor``, then
``cfg.policy.depth`` Tanh layers of ``cfg.policy.hidden`` units, then two Q-values), so
its stop logit ``Q(stop) - Q(continue)`` is a StopPolicy: ``copy_q_to_stop_policy``
writes it into one, which is what is validated, checkpointed and returned (as for PPO
and A2C). DQN's greedy action is the StopPolicy's "first ``pi_t > 0.5``" rule; the
validator may choose another read-out of the same logits on validation, as for every
learner.

DQN optimises the expected return without an entropy term, so its env is the one
``l2s_gym.make_env`` gives off-the-shelf agents rather than the entropy-matched one of
the policy-gradient learners: dense ``improvement`` rewards in units of the oracle's gain
per layer on the validation trace (the frontier's cost unit), the price per layer paid
as it is walked. Hyper-parameters: ``rl.dqn`` (rl-zoo3's format, over
``configs/hyperparams/dqn.yml``), SB3's own defaults for every key not set; ``rl.dqn_num_envs``
environments. No temperature continuation (there is no temperature to anneal).

One policy for every price (``ctx.prices``, ``l2s frontier --one-policy``): as for PPO and
A2C, the env draws each episode's price from the grid and shows it, the features extractor
appends its price code, and the copy is a price-conditioned StopPolicy validated over the
grid (``PriceGridValidator``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from l2s_gym.envs.batched import BatchedStopEnv
from l2s_gym.learner import (
    LearnerContext,
    LearnerResult,
    one_policy_price_weights,
    rl_stop_policy,
)
from l2s_gym.policy import StopPolicy
from l2s_gym.registry import register_learner
from l2s_gym.stopping import gain_per_layer

from .sb3_agents import sb3_kwargs, stop_features_extractor_class

VALIDATIONS = 50
"""About this many validations over the layer budget (a DQN rollout is ``train_freq`` steps)."""


@torch.no_grad()
def copy_q_to_stop_policy(q_net: nn.Module, stop_policy: StopPolicy) -> StopPolicy:
    """Write SB3's ``QNetwork`` into ``stop_policy``: its logit is ``Q(stop) - Q(continue)``."""
    stop_policy.encoder.load_state_dict(q_net.features_extractor.encoder.state_dict())
    *hidden, out = list(q_net.q_net)
    stop_policy.body.load_state_dict(nn.Sequential(*hidden).state_dict())
    stop_policy.head.weight.copy_(out.weight[1:2] - out.weight[0:1])
    stop_policy.head.bias.copy_(out.bias[1:2] - out.bias[0:1])
    return stop_policy


def dqn_env(ctx: LearnerContext, stream: int) -> BatchedStopEnv:
    """DQN's training env: dense rewards in units of the gain per layer (module docstring)."""
    cfg = ctx.cfg
    return BatchedStopEnv(
        ctx.predictor,
        ctx.task,
        cfg.rl.dqn_num_envs,
        beta=cfg.beta,
        reward="improvement",
        cost=ctx.cost if ctx.prices is None else 0.0,
        seed=ctx.task.stream_seed(stream + ctx.seed),
        reward_scale=cfg.beta / gain_per_layer(ctx.val_trace),
        prices=ctx.prices,
        price_weights=one_policy_price_weights(ctx),
    )


def make_dqn(ctx: LearnerContext, venv: Any, seed: int) -> Any:
    from stable_baselines3 import DQN

    cfg, predictor = ctx.cfg, ctx.predictor
    policy_kwargs = {
        "features_extractor_class": stop_features_extractor_class(),
        "features_extractor_kwargs": {
            "feature_shape": tuple(predictor.feature_shape),
            "num_layers": predictor.num_layers,
            "pos_dim": cfg.policy.pos_dim,
            "encoder": predictor.policy_encoder(),
            "price_unit": None if ctx.prices is None else ctx.price_unit,
        },
        "net_arch": [cfg.policy.hidden] * cfg.policy.depth,
        "activation_fn": nn.Tanh,
    }
    return DQN("MlpPolicy", venv, policy_kwargs=policy_kwargs, device=predictor.device,
               seed=seed, verbose=0, **sb3_kwargs("dqn", ctx, venv))  # fmt: skip


@register_learner("dqn", "DQN", one_policy=True)
def dqn_learner(ctx: LearnerContext) -> LearnerResult:
    """stable-baselines3 DQN on the batched env, its Q-network shaped like the StopPolicy."""
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import configure

    from l2s_gym.agents.sb3_callbacks import (
        LayerBudgetCallback,
        LayerProgressBarCallback,
        ValidationCallback,
    )
    from l2s_gym.envs.sb3_vec import StopVecEnv

    cfg, budget = ctx.cfg, ctx.layer_budget
    env = dqn_env(ctx, stream=70_000)
    venv = StopVecEnv(env)
    model = make_dqn(ctx, venv, seed=cfg.seed + 1)
    venv.seed(ctx.task.stream_seed(70_000 + ctx.seed))
    priced = ctx.prices is not None
    stop_policy, validator = rl_stop_policy(ctx, "dqn")
    model.set_logger(configure(str(ctx.run_dir / "tb"), ["tensorboard"]))
    freq = model.train_freq.frequency  # in steps of all envs (DQN's default unit)
    every = max(1, budget // (venv.num_envs * freq * VALIDATIONS))
    validation = ValidationCallback(
        validator, lambda policy: copy_q_to_stop_policy(policy.q_net, stop_policy), venv, every
    )
    bar = LayerProgressBarCallback(venv, budget, "DQN", validator, disable=not ctx.progress)
    callbacks = CallbackList([validation, LayerBudgetCallback(venv, budget), bar])
    model.learn(total_timesteps=budget + 1, callback=callbacks)
    model.logger.close()
    return validator.finish(
        stop_policy,
        env.layer_evals,
        updates=validation.updates,
        episodes=env.episodes_done,
        timesteps=model.num_timesteps,
        stopped_by="compare.layer_budget",
        reward_scale=env.reward_scale,
        **({"prices": list(ctx.prices), "price_unit": ctx.price_unit} if priced else {}),
    )

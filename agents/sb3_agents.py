"""PPO and A2C from stable-baselines3 on the batched stop environment (``StopVecEnv``).

The actor is the StopPolicy's network in SB3's clothes: ``StopFeaturesExtractor`` turns
an observation into exactly the StopPolicy's input (the predictor's policy encoder on the
features, the same position encoding of ``t``), and ``net_arch`` gives the actor (and
the critic) ``cfg.policy.depth`` Tanh layers of ``cfg.policy.hidden`` units. SB3's
categorical head has two logits; the stop logit is their difference. So the actor *is*
a StopPolicy, and ``copy_actor_to_stop_policy`` writes its weights into one: that
StopPolicy is what is validated, checkpointed (``best.pt`` loads with ``make_policy``, as
every learner's does) and returned. ``SB3StopModel`` reads the same logits straight from
SB3's action distribution. The head's bias starts at stop-logit ``-1``, as the
StopPolicy's does. ``policy_kwargs`` belong to the learner, never to the config.

Hyper-parameters: the config blocks ``rl.ppo`` and ``rl.a2c`` hold PPO's and A2C's
constructor arguments, as rl-zoo3's hyper-parameter files write them (merged with
``configs/hyperparams/<algorithm>.yml`` and the library's defaults by the config loader;
see ``l2s_gym.config.RLConfig``). ``lin_<value>`` (for ``learning_rate``, ``clip_range``,
``clip_range_vf``) falls linearly from ``value`` to 0 as the layer budget is spent.
PPO's ``batch_size`` is capped at ``n_steps * num_envs``. The library's defaults
(``l2s_gym.config.SB3_DEFAULTS``): ``gamma`` 1 and ``ent_coef`` 1 with advantages left
unnormalised, so that the entropy bonus weighs against the rewards (losses in units of
``beta``) as in the paper's objective and in REINFORCE. SB3's bonus is the usual per-step
one: it rewards the entropy of each decision taken, not the entropy of the decisions the
current one makes reachable (REINFORCE keeps that term, see ``l2s_gym.agents.reinforce``);
the two agree on the optimum's form only approximately. The env asks no decision at the
last layer, so no entropy or gradient is spent on a decision without effect.

Training is a ``CallbackList`` of small callbacks (``l2s_gym.agents.sb3_callbacks``): the
shared ``Validator`` every ``rl.val_every`` rollouts and at the end, a stop once the env
has computed ``compare.layer_budget`` layers (``env.layer_evals``, not SB3's timestep count;
the rollout that crosses the budget is still learned from), the reward temperature of
``rl.beta_anneal_from`` / ``anneal_fraction`` before each rollout
(``l2s_gym.learner.anneal_env_beta``; ``charts/target_beta``), and a progress bar over
layer evaluations. The best checkpoint (of the StopPolicy copy) is restored and returned.
TensorBoard: SB3's own tags (``train/...``, ``rollout/ep_rew_mean``, x axis: timesteps)
and the shared validation tags (x axis: updates) land in the same run folder.

One policy for every price (``ctx.prices``, ``l2s frontier --one-policy``; PPO and A2C): the
env draws each episode's price from the grid and shows it (``[features, lambda, t]``),
the features extractor appends ``price_code(lambda, price_unit)`` after the position
encoding, as a ``StopPolicy(price_input=True)`` does, so the copy is a price-conditioned
StopPolicy, validated over the grid (``PriceGridValidator``). Each episode's rewards are
weighted by ``1 / (1 + lambda / g)`` (``frontier.one_policy_balance``, ``make_rl_env``).

stable-baselines3 is imported inside the functions: importing ``l2s_gym.agents`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from l2s_gym.config import SB3_SCHEDULES, sb3_arguments
from l2s_gym.envs.batched import make_obs, obs_price, split_obs
from l2s_gym.learner import (
    LearnerContext,
    LearnerResult,
    make_rl_env,
    rl_stop_policy,
)
from l2s_gym.policy import PRICE_CODE_DIM, StopPolicy, position_encoding, price_code
from l2s_gym.progress import notify
from l2s_gym.registry import register_learner

if TYPE_CHECKING:
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

Algorithm = Literal["ppo", "a2c"]


def stop_features_extractor_class() -> type:
    """``StopFeaturesExtractor``, built on first use (it subclasses an SB3 class)."""
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class StopFeaturesExtractor(BaseFeaturesExtractor):
        """Observation ``[features, t]`` -> ``[encoder(features), position_encoding(t)]``.

        The StopPolicy's input layer, so that SB3's MLP on top sees what it sees.

        Args:
            observation_space: the env's observation space.
            feature_shape: the predictor's ``feature_shape``.
            num_layers: ``T``.
            pos_dim: ``cfg.policy.pos_dim``.
            encoder: the predictor's ``policy_encoder()`` (``None``: flatten).
            price_unit: a price-conditioned actor's (the observation shows ``lambda``;
                ``price_code(lambda, price_unit)`` is one more input); ``None``: none.
        """

        def __init__(
            self,
            observation_space: Any,
            feature_shape: tuple[int, ...],
            num_layers: int,
            pos_dim: int,
            encoder: nn.Module | None = None,
            price_unit: float | None = None,
        ) -> None:
            encoder = encoder if encoder is not None else nn.Flatten(start_dim=1)
            with torch.no_grad():
                enc_dim = int(encoder(torch.zeros(2, *feature_shape)).shape[-1])
            priced = 0 if price_unit is None else PRICE_CODE_DIM
            super().__init__(observation_space, enc_dim + 1 + 2 * max(pos_dim // 2, 1) + priced)
            self.price_unit = price_unit
            self.encoder = encoder
            self.feature_shape = tuple(feature_shape)
            self.num_layers = int(num_layers)
            self.pos_dim = int(pos_dim)

        def forward(self, obs: Tensor) -> Tensor:
            features, t = split_obs(obs, self.feature_shape)
            z = self.encoder(features)
            pos = position_encoding(t, self.num_layers, self.pos_dim).to(z.dtype)
            if self.price_unit is None:
                return torch.cat([z, pos], dim=-1)
            price = obs_price(obs, self.feature_shape)
            if price is None:
                raise ValueError("a price-conditioned actor needs an env that shows the price")
            code = price_code(price, self.price_unit).to(z.dtype).reshape(len(price), -1)
            return torch.cat([z, pos, code], dim=-1)

    return StopFeaturesExtractor


class SB3StopModel(nn.Module):
    """A ``StopModel`` over an SB3 actor-critic policy: stop logit = logit(stop) - logit(continue).

    Args:
        policy: ``model.policy`` of a PPO or A2C model trained on a ``StopVecEnv``.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, features: Tensor, t: Tensor) -> Tensor:
        """Stop logits ``(N,)`` for features ``(N, *feature_shape)`` at 0-based layers ``t``."""
        logits = self.policy.get_distribution(make_obs(features, t)).distribution.logits
        return logits[:, 1] - logits[:, 0]

    def trace_logits(self, features: Tensor) -> Tensor:
        """Stop logits ``(B, T)`` for a trace's features ``(B, T, *feature_shape)``."""
        b, t = features.shape[:2]
        layer = torch.arange(t, device=features.device).expand(b, t).reshape(-1)
        flat = features.reshape(b * t, *features.shape[2:])
        return self.forward(flat, layer).reshape(b, t)


@torch.no_grad()
def copy_actor_to_stop_policy(sb3_policy: nn.Module, stop_policy: StopPolicy) -> StopPolicy:
    """Write an SB3 actor's weights into ``stop_policy`` (same logits, see the module doc).

    The encoder and the hidden layers are copied; the head becomes the difference of
    the stop and continue rows of SB3's two-logit ``action_net``.
    """
    stop_policy.encoder.load_state_dict(sb3_policy.pi_features_extractor.encoder.state_dict())
    stop_policy.body.load_state_dict(sb3_policy.mlp_extractor.policy_net.state_dict())
    action = sb3_policy.action_net
    stop_policy.head.weight.copy_(action.weight[1:2] - action.weight[0:1])
    stop_policy.head.bias.copy_(action.bias[1:2] - action.bias[0:1])
    return stop_policy


class LayerBudgetSchedule:
    """rl-zoo3's ``lin_<value>`` over the layer budget: ``value * (1 - layer_evals / budget)``.

    SB3 passes its own progress (in timesteps, which do not bind here); this schedule reads
    the env's layer evaluations instead, so that it reaches 0 where training stops.
    """

    def __init__(self, initial: float, venv: Any, budget: int) -> None:
        self.initial = initial
        self.venv = venv
        self.budget = budget

    def __call__(self, progress_remaining: float) -> float:
        return self.initial * max(0.0, 1.0 - self.venv.layer_evals / self.budget)


def sb3_kwargs(algorithm: Algorithm, ctx: LearnerContext, venv: Any) -> dict[str, Any]:
    """The config block ``rl.<algorithm>`` as SB3 keyword arguments (schedules built, the
    minibatch capped at the rollout's size)."""
    rl = ctx.cfg.rl
    kwargs = sb3_arguments(algorithm, getattr(rl, algorithm))
    for key in SB3_SCHEDULES:
        value = kwargs.get(key)
        if isinstance(value, str) and value.startswith("lin_"):
            kwargs[key] = LayerBudgetSchedule(float(value[len("lin_") :]), venv, ctx.layer_budget)
    if algorithm == "ppo" and kwargs["batch_size"] > kwargs["n_steps"] * venv.num_envs:
        rollout = kwargs["n_steps"] * venv.num_envs
        notify(
            f"ppo: batch_size {kwargs['batch_size']:,} is more than a rollout holds (n_steps "
            f"{kwargs['n_steps']} x num_envs {venv.num_envs} = {rollout:,}); using {rollout:,}"
        )
        kwargs["batch_size"] = rollout
    return kwargs


def make_model(
    algorithm: Algorithm, ctx: LearnerContext, venv: Any, seed: int
) -> OnPolicyAlgorithm:
    """A PPO or A2C model on ``venv`` whose actor is sized like the StopPolicy (see module doc)."""
    from stable_baselines3 import A2C, PPO

    cfg, predictor = ctx.cfg, ctx.predictor
    width = [cfg.policy.hidden] * cfg.policy.depth
    policy_kwargs = {
        "features_extractor_class": stop_features_extractor_class(),
        "features_extractor_kwargs": {
            "feature_shape": tuple(predictor.feature_shape),
            "num_layers": predictor.num_layers,
            "pos_dim": cfg.policy.pos_dim,
            "encoder": predictor.policy_encoder(),
            "price_unit": None if ctx.prices is None else ctx.price_unit,
        },
        "net_arch": {"pi": width, "vf": width},
        "activation_fn": nn.Tanh,
    }
    cls = PPO if algorithm == "ppo" else A2C
    model = cls(
        "MlpPolicy",
        venv,
        policy_kwargs=policy_kwargs,
        device=predictor.device,
        seed=seed,
        verbose=0,
        **sb3_kwargs(algorithm, ctx, venv),
    )
    with torch.no_grad():
        # Start patient, as the StopPolicy does: stop logit -1 everywhere.
        model.policy.action_net.bias.copy_(torch.tensor([0.0, -1.0]))
    return model


def train_sb3(ctx: LearnerContext, algorithm: Algorithm) -> LearnerResult:
    """Train PPO or A2C on a ``StopVecEnv`` over the frozen ``ctx.predictor``."""
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import configure

    from l2s_gym.agents.sb3_callbacks import (
        LayerBudgetCallback,
        LayerProgressBarCallback,
        TemperatureScheduleCallback,
        ValidationCallback,
    )
    from l2s_gym.envs.sb3_vec import StopVecEnv

    cfg, task = ctx.cfg, ctx.task
    rl = cfg.rl
    budget = ctx.layer_budget
    offset = 50_000 if algorithm == "ppo" else 60_000
    env = make_rl_env(ctx, stream=offset)
    venv = StopVecEnv(env)
    model = make_model(algorithm, ctx, venv, seed=cfg.seed + 1)
    # SB3 seeded the env with its own seed; give it a stream apart from the task's eval sets.
    venv.seed(task.stream_seed(offset + ctx.seed))
    priced = ctx.prices is not None
    stop_policy, validator = rl_stop_policy(ctx, algorithm)
    model.set_logger(configure(str(ctx.run_dir / "tb"), ["tensorboard"]))
    validation = ValidationCallback(
        validator,
        lambda sb3_policy: copy_actor_to_stop_policy(sb3_policy, stop_policy),
        venv,
        rl.val_every,
    )
    callbacks = CallbackList(
        [
            validation,
            TemperatureScheduleCallback(ctx, venv, validator),
            LayerBudgetCallback(venv, budget),
            LayerProgressBarCallback(
                venv, budget, algorithm.upper(), validator, disable=not ctx.progress
            ),
        ]
    )
    # Timesteps never bind: the budget callback stops first (each step costs >= 1 layer).
    model.learn(total_timesteps=budget + 1, callback=callbacks)
    model.logger.close()
    return validator.finish(
        stop_policy,
        env.layer_evals,
        updates=validation.updates,
        episodes=env.episodes_done,
        timesteps=model.num_timesteps,
        stopped_by="compare.layer_budget",
        **({"prices": list(ctx.prices), "price_unit": ctx.price_unit} if priced else {}),
    )


@register_learner("ppo", "PPO", one_policy=True)
def ppo_learner(ctx: LearnerContext) -> LearnerResult:
    """stable-baselines3 PPO on the batched env, actor sized like the StopPolicy."""
    return train_sb3(ctx, "ppo")


@register_learner("a2c", "A2C", one_policy=True)
def a2c_learner(ctx: LearnerContext) -> LearnerResult:
    """stable-baselines3 A2C on the batched env, actor sized like the StopPolicy."""
    return train_sb3(ctx, "a2c")

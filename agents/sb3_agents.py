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
StopPolicy's does.

The objective and its SB3 knobs (``cfg.rl``): rewards from the env (``reward``,
``layer_cost``, scale ``1 / beta``), ``gamma``, ``ent_coef = entropy_coef`` with advantages
left unnormalised, so that the entropy bonus weighs the same against the rewards as in
REINFORCE. SB3's bonus is the usual per-step one: it rewards the entropy of each decision
taken, not the entropy of the decisions the current one makes reachable (REINFORCE keeps
that term, see ``l2s_gym.agents.reinforce``); the two agree on the optimum's form only
approximately. PPO: ``ppo_lr``, ``n_steps = rollout_steps``, ``ppo_epochs``,
``ppo_minibatch``; A2C: ``a2c_lr``, ``n_steps = a2c_steps``. The rest are SB3's defaults.
The reward temperature follows ``rl.beta_anneal_from`` / ``anneal_fraction``, set before
each rollout (``l2s_gym.learner.anneal_env_beta``; ``charts/target_beta``).

Training stops once the env has computed ``cfg.rl.layer_budget`` layers (``env.layer_evals``,
not SB3's timestep count): the rollout that crosses the budget is still learned from.
``ValidationCallback`` runs the shared ``Validator`` every ``val_every`` rollouts and at
the end; the best checkpoint (of the StopPolicy copy) is restored and returned.
TensorBoard: SB3's own tags (``train/...``, ``rollout/ep_rew_mean``, x axis: timesteps)
and the shared validation tags (x axis: updates) land in the same run folder.

stable-baselines3 is imported inside the functions: importing ``l2s_gym.agents`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from l2s_gym.build import make_policy
from l2s_gym.envs.batched import make_obs, split_obs
from l2s_gym.learner import (
    LearnerContext,
    LearnerResult,
    Validator,
    anneal_env_beta,
    make_rl_env,
)
from l2s_gym.policy import StopPolicy, position_encoding
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
        """

        def __init__(
            self,
            observation_space: Any,
            feature_shape: tuple[int, ...],
            num_layers: int,
            pos_dim: int,
            encoder: nn.Module | None = None,
        ) -> None:
            encoder = encoder if encoder is not None else nn.Flatten(start_dim=1)
            with torch.no_grad():
                enc_dim = int(encoder(torch.zeros(2, *feature_shape)).shape[-1])
            super().__init__(observation_space, enc_dim + 1 + 2 * max(pos_dim // 2, 1))
            self.encoder = encoder
            self.feature_shape = tuple(feature_shape)
            self.num_layers = int(num_layers)
            self.pos_dim = int(pos_dim)

        def forward(self, obs: Tensor) -> Tensor:
            features, t = split_obs(obs, self.feature_shape)
            z = self.encoder(features)
            pos = position_encoding(t, self.num_layers, self.pos_dim).to(z.dtype)
            return torch.cat([z, pos], dim=-1)

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


def make_model(
    algorithm: Algorithm, ctx: LearnerContext, venv: Any, seed: int
) -> OnPolicyAlgorithm:
    """A PPO or A2C model on ``venv`` whose actor is sized like the StopPolicy (see module doc)."""
    from stable_baselines3 import A2C, PPO

    cfg, predictor = ctx.cfg, ctx.predictor
    rl, width = cfg.rl, [cfg.policy.hidden] * cfg.policy.depth
    policy_kwargs = {
        "features_extractor_class": stop_features_extractor_class(),
        "features_extractor_kwargs": {
            "feature_shape": tuple(predictor.feature_shape),
            "num_layers": predictor.num_layers,
            "pos_dim": cfg.policy.pos_dim,
            "encoder": predictor.policy_encoder(),
        },
        "net_arch": {"pi": width, "vf": width},
        "activation_fn": nn.Tanh,
    }
    common: dict[str, Any] = {
        "gamma": rl.gamma,
        "ent_coef": rl.entropy_coef,
        "normalize_advantage": False,
        "policy_kwargs": policy_kwargs,
        "device": predictor.device,
        "seed": seed,
        "verbose": 0,
    }
    if algorithm == "ppo":
        model = PPO(
            "MlpPolicy",
            venv,
            n_steps=rl.rollout_steps,
            batch_size=min(rl.ppo_minibatch, rl.rollout_steps * venv.num_envs),
            n_epochs=rl.ppo_epochs,
            learning_rate=rl.ppo_lr,
            **common,
        )
    else:
        model = A2C("MlpPolicy", venv, n_steps=rl.a2c_steps, learning_rate=rl.a2c_lr, **common)
    with torch.no_grad():
        # Start patient, as the StopPolicy does: stop logit -1 everywhere.
        model.policy.action_net.bias.copy_(torch.tensor([0.0, -1.0]))
    return model


def validation_callback(
    validator: Validator,
    venv: Any,
    sb3_policy: nn.Module,
    stop_policy: StopPolicy,
    budget: int,
    val_every: int,
    bar: Any,
) -> Any:
    """An SB3 callback: shared validation every ``val_every`` rollouts; stop at ``budget``.

    Each validation first copies the actor into ``stop_policy`` (the Validator's module).
    """
    from stable_baselines3.common.callbacks import BaseCallback

    class ValidationCallback(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.updates = 0
            self.budget_spent = False
            self.last_evals = 0
            self.validated_at = -1

        def _on_rollout_start(self) -> None:
            # The previous rollout's update has been applied by now.
            if self.updates and self.updates % val_every == 0:
                self.validate()
            beta = anneal_env_beta(validator.ctx, venv.env)
            validator.writer.add_scalar("charts/target_beta", beta, self.updates + 1)

        def _on_step(self) -> bool:
            evals = venv.layer_evals
            bar.update(evals - self.last_evals)
            self.last_evals = evals
            return not self.budget_spent

        def _on_rollout_end(self) -> None:
            self.updates += 1  # SB3 trains on this rollout right after
            self.budget_spent = venv.layer_evals >= budget

        def validate(self) -> None:
            if self.validated_at == self.updates:
                return
            self.validated_at = self.updates
            copy_actor_to_stop_policy(sb3_policy, stop_policy)
            metric = validator(stop_policy, self.updates, venv.layer_evals)
            bar.set_postfix(val=f"{metric:.4g}", best=f"{validator.best_metric:.4g}")

    return ValidationCallback()


def train_sb3(ctx: LearnerContext, algorithm: Algorithm) -> LearnerResult:
    """Train PPO or A2C on a ``StopVecEnv`` over the frozen ``ctx.predictor``."""
    from stable_baselines3.common.logger import configure

    from l2s_gym.envs.sb3_vec import StopVecEnv

    cfg, task, predictor = ctx.cfg, ctx.task, ctx.predictor
    rl = cfg.rl
    label = "PPO" if algorithm == "ppo" else "A2C"
    offset = 50_000 if algorithm == "ppo" else 60_000
    env = make_rl_env(ctx, stream=offset)
    venv = StopVecEnv(env)
    model = make_model(algorithm, ctx, venv, seed=cfg.seed + 1)
    # SB3 seeded the env with its own seed; give it a stream apart from the task's eval sets.
    venv.seed(task.stream_seed(offset + ctx.seed))
    stop_policy = make_policy(cfg, predictor)
    validator = Validator(ctx, stop_policy, algorithm)
    model.set_logger(configure(str(ctx.run_dir / "tb"), ["tensorboard"]))
    bar = tqdm(
        total=rl.layer_budget,
        desc=label,
        unit="layer",
        unit_scale=True,
        disable=not ctx.progress,
        leave=False,
        dynamic_ncols=True,
    )
    callback = validation_callback(
        validator, venv, model.policy, stop_policy, rl.layer_budget, rl.val_every, bar
    )
    callback.validate()
    # Timesteps never bind: the callback stops at the layer budget (each step costs >= 1 layer).
    model.learn(total_timesteps=rl.layer_budget + 1, callback=callback)
    callback.validate()
    bar.close()
    model.logger.close()
    return validator.finish(
        stop_policy,
        env.layer_evals,
        updates=callback.updates,
        episodes=env.episodes_done,
        timesteps=model.num_timesteps,
    )


@register_learner("ppo", "PPO")
def ppo_learner(ctx: LearnerContext) -> LearnerResult:
    """stable-baselines3 PPO on the batched env, actor sized like the StopPolicy."""
    return train_sb3(ctx, "ppo")


@register_learner("a2c", "A2C")
def a2c_learner(ctx: LearnerContext) -> LearnerResult:
    """stable-baselines3 A2C on the batched env, actor sized like the StopPolicy."""
    return train_sb3(ctx, "a2c")

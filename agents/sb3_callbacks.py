"""The stable-baselines3 callbacks of the PPO and A2C learners: one job each, in a ``CallbackList``.

- ``ValidationCallback``: the shared ``Validator`` (checkpoint, TensorBoard tags) on the
  StopPolicy copy of the actor, before training, every ``every`` rollouts and at the end.
- ``LayerBudgetCallback``: stops training once the env has computed ``budget`` layers
  (``layer_evals``, not SB3's timesteps); the rollout that crosses it is still learned from.
- ``TemperatureScheduleCallback``: sets the env's reward temperature before each rollout
  (the continuation, ``l2s_gym.learner.anneal_env_beta``) and logs ``charts/target_beta``.
- ``LayerProgressBarCallback``: a progress bar over layer evaluations, capped at the budget,
  with the last validation metric.

Importing this module imports stable-baselines3 (``sb3_agents`` does so only to train).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from l2s_gym import progress
from l2s_gym.envs.sb3_vec import StopVecEnv
from l2s_gym.learner import LearnerContext, Validator, anneal_env_beta, anneal_multiple
from l2s_gym.runs import check_finite


class ValidationCallback(BaseCallback):
    """Validate before training, after every ``every`` updates, and at the end.

    Args:
        validator: the learner's ``Validator``.
        stop_model: maps SB3's policy to the module to validate (``validator.module``,
            refreshed from the actor's weights).
        venv: the training env (for its ``layer_evals``).
        every: validate every this many rollouts (each is one update).
    """

    def __init__(
        self,
        validator: Validator,
        stop_model: Callable[[nn.Module], nn.Module],
        venv: StopVecEnv,
        every: int,
    ) -> None:
        super().__init__()
        self.validator = validator
        self.stop_model = stop_model
        self.venv = venv
        self.every = every
        self.updates = 0
        """Rollouts collected (SB3 trains on each right after it ends)."""
        self._validated_at = -1

    def _on_training_start(self) -> None:
        self.validate()

    def _on_rollout_start(self) -> None:
        # The previous rollout's update has been applied by now.
        if self.updates and self.updates % self.every == 0:
            self.validate()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.updates += 1

    def _on_training_end(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Validate the current actor (once per update count); stop on diverged weights."""
        if self._validated_at == self.updates:
            return
        self._validated_at = self.updates
        policy = self.model.policy
        # The divergence guard every learner has: NaN, inf or exploding actor/critic weights.
        check_finite(
            torch.zeros(()),
            self.validator.learner.upper(),
            f"update {self.updates}",
            self.validator.best_path,
            self.validator.writer,
            module=policy,
        )
        self.validator(self.stop_model(policy), self.updates, self.venv.layer_evals)


class LayerBudgetCallback(BaseCallback):
    """Stop training at the first step after a rollout that brought ``layer_evals`` to ``budget``.

    Args:
        venv: the training env.
        budget: layer evaluations the learner may spend.
    """

    def __init__(self, venv: StopVecEnv, budget: int) -> None:
        super().__init__()
        self.venv = venv
        self.budget = budget
        self.spent = False

    def _on_step(self) -> bool:
        return not self.spent

    def _on_rollout_end(self) -> None:
        self.spent = self.venv.layer_evals >= self.budget


class TemperatureScheduleCallback(BaseCallback):
    """Set the env's reward temperature before each rollout (``anneal_env_beta``).

    Args:
        ctx: the learner's context (``cfg.beta``, ``cfg.rl.beta_anneal_from``, ...).
        venv: the training env; its ``BatchedStopEnv`` gets the temperature.
        validator: whose TensorBoard writer logs ``charts/target_beta`` per update.
    """

    def __init__(self, ctx: LearnerContext, venv: StopVecEnv, validator: Validator) -> None:
        super().__init__()
        self.ctx = ctx
        self.venv = venv
        self.writer = validator.writer
        self.rollouts = 0
        self.multiple = anneal_multiple(ctx, ctx.cfg.rl.beta_anneal_from, ctx.cfg.beta)

    def _on_rollout_start(self) -> None:
        self.rollouts += 1
        beta = anneal_env_beta(self.ctx, self.venv.env, self.multiple)
        self.writer.add_scalar("charts/target_beta", beta, self.rollouts)

    def _on_step(self) -> bool:
        return True


class LayerProgressBarCallback(BaseCallback):
    """A progress bar (``l2s_gym.progress.bar``) over the layer evaluations, never past
    ``budget``.

    Args:
        venv: the training env.
        budget: the bar's total.
        label: the bar's description.
        validator: the last validation point is shown after each rollout.
        disable: no bar (``ctx.progress`` false).
    """

    def __init__(
        self,
        venv: StopVecEnv,
        budget: int,
        label: str,
        validator: Validator,
        disable: bool = False,
    ) -> None:
        super().__init__()
        self.venv = venv
        self.budget = budget
        self.label = label
        self.validator = validator
        self.disable = disable
        self.bar: Any = None

    def _on_training_start(self) -> None:
        self.bar = progress.bar(
            self.budget, self.label, not self.disable, unit="layer", unit_scale=True
        )

    def _on_step(self) -> bool:
        self.bar.update(min(self.venv.layer_evals, self.budget) - self.bar.n)
        return True

    def _on_rollout_end(self) -> None:
        if self.validator.curve:
            last = self.validator.curve[-1]["val_metric"]
            self.bar.set_postfix(val=f"{last:.4g}", best=f"{self.validator.best_metric:.4g}")

    def _on_training_end(self) -> None:
        self.bar.close()

"""The batched stop environment as a stable-baselines3 ``VecEnv``.

``StopVecEnv`` wraps one ``BatchedStopEnv``: the ``N`` instances advance together on the
predictor's device (one batched layer step per env step) and cross to numpy only here,
where SB3 expects it. Importing this module imports stable-baselines3.

    from l2s_gym.envs.sb3_vec import StopVecEnv
    venv = StopVecEnv(BatchedStopEnv(predictor, task, 256, beta=0.01))
    model = stable_baselines3.PPO("MlpPolicy", venv)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from l2s_gym.envs.batched import BatchedStopEnv
from l2s_gym.envs.stop_env import _obs_space


class StopVecEnv(VecEnv):
    """SB3 view of a ``BatchedStopEnv``: same-step autoreset, numpy at the boundary.

    Spaces: observations ``Box((obs_dim,), float32)`` as ``StopEnv``'s (the policy features
    after the current layer, flattened, then its 0-based index ``t``); actions
    ``Discrete(2)`` per instance, ``0`` continue, ``1`` stop. Rewards and episode ends are
    those of the wrapped env: an episode ends when the agent stops or when it continues
    into the last layer ``T`` (no decision is asked there), so SB3 never spends entropy or
    gradient on a decision without effect.

    ``step_wait`` returns obs ``(N, obs_dim)`` float32, rewards ``(N,)`` float32, dones
    ``(N,)`` bool and one info dict per instance. As SB3's own VecEnvs do, a row that ended
    already holds its next episode's first observation, and its info carries
    ``terminal_observation`` (the last observation of the episode that ended),
    ``TimeLimit.truncated`` (always ``False``: episodes end by stopping), ``episode``
    (``{"r": return, "l": decisions, "t": seconds since construction}``, what SB3's
    ``Monitor`` would add, so ``rollout/ep_rew_mean`` is logged), and the env's ``t``
    (stop layer, 1-based), ``loss``, ``metric`` and ``best_layer``. Rows still running get
    an empty dict: building N dicts of numbers every step would cost more than the step.

    Seeding: the N rows share one instance stream, so ``seed(s)`` (SB3 stores ``s + i`` per
    row) restarts that stream from ``s`` at the next ``reset()``; the same seed gives the
    same episodes.

    ``get_attr``, ``set_attr`` and ``env_method`` act on the one wrapped env (looked up on
    this object first, then on the ``BatchedStopEnv``); ``get_attr`` and ``env_method``
    return the answer once per requested index. ``set_attr`` and ``env_method`` accept
    only all rows (``indices=None``): a batched env has no per-row attributes.
    ``env_is_wrapped`` is ``False``: no ``gymnasium.Wrapper`` is involved.

    Args:
        env: the batched environment to expose.
    """

    def __init__(self, env: BatchedStopEnv) -> None:
        self.env = env
        self.render_mode = None  # read by VecEnv.__init__ through get_attr
        super().__init__(env.num_envs, _obs_space(env.obs_dim, env.num_layers), spaces.Discrete(2))
        self._actions: torch.Tensor | None = None
        self._episode_return = torch.zeros(env.num_envs, device=env.device)
        self._episode_length = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)
        self._start = time.perf_counter()

    @property
    def layer_evals(self) -> int:
        """Layer computations so far (see ``BatchedStopEnv.layer_evals``)."""
        return self.env.layer_evals

    # --- the VecEnv protocol ----------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        """Start a fresh instance in every row; uses (then clears) the seed set by ``seed()``."""
        seed = self._seeds[0]
        obs = self.env.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self._episode_return.zero_()
        self._episode_length.zero_()
        info = self.env.current_info()
        t = info["t"].cpu().numpy()
        self.reset_infos = [{"t": int(t[i])} for i in range(self.num_envs)]
        return obs.cpu().numpy()

    def step_async(self, actions: np.ndarray) -> None:
        """Store one action per row (shape ``(N,)`` or ``(N, 1)``, ints 0/1)."""
        a = np.asarray(actions)
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.shape != (self.num_envs,):
            raise ValueError(
                f"actions must have shape ({self.num_envs},) or ({self.num_envs}, 1), got {a.shape}"
            )
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(f"actions must be integers 0 (continue) or 1 (stop), got {a.dtype}")
        self._actions = torch.from_numpy(a.astype(np.int64)).to(self.env.device)

    def step_wait(self) -> VecEnvStepReturn:
        """One batched step. Crosses to the host once each for obs, rewards and dones, and
        once more, only when some rows ended, for one packed tensor of what their infos hold."""
        if self._actions is None:
            raise RuntimeError("StopVecEnv.step_wait called without step_async")
        obs, reward, done, info = self.env.step(self._actions)
        self._actions = None
        self._episode_return += reward
        self._episode_length += 1
        obs_np = obs.cpu().numpy()
        reward_np = reward.cpu().numpy()
        done_np = done.cpu().numpy()
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        rows = np.flatnonzero(done_np)
        if rows.size:
            idx = torch.from_numpy(rows).to(self.env.device)
            # One (k, obs_dim + 6) float32 block: small ints (layers, lengths) are exact.
            columns = [
                self._episode_return,
                self._episode_length,
                info["t"],
                info["loss"],
                info["metric_stat"],
                info["best_layer"],
            ]
            packed = torch.cat(
                [info["terminal_obs"][idx], torch.stack([c[idx].float() for c in columns], 1)],
                dim=1,
            )
            ended = packed.cpu().numpy()
            terminal, (ret, length, t, loss, metric, best) = (
                ended[:, : self.env.obs_dim],
                ended[:, self.env.obs_dim :].T,
            )
            elapsed = round(time.perf_counter() - self._start, 6)
            for j, i in enumerate(rows):
                infos[i] = {
                    "terminal_observation": terminal[j],
                    "TimeLimit.truncated": False,
                    "episode": {"r": float(ret[j]), "l": int(length[j]), "t": elapsed},
                    "t": int(t[j]),
                    "loss": float(loss[j]),
                    "metric": float(metric[j]),
                    "best_layer": int(best[j]),
                }
            self._episode_return[idx] = 0.0
            self._episode_length[idx] = 0
        return obs_np, reward_np, done_np, infos

    def close(self) -> None:
        """Nothing to release: the env holds tensors only."""

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Restart the shared instance stream from ``seed`` at the next ``reset()``."""
        return super().seed(seed)

    # --- attributes and methods -------------------------------------------------------------
    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        assert isinstance(indices, Iterable)
        return list(indices)

    def _all_rows(self, indices: VecEnvIndices, what: str) -> None:
        if indices is not None and sorted(self._indices(indices)) != list(range(self.num_envs)):
            raise ValueError(
                f"StopVecEnv.{what}: the {self.num_envs} rows share one batched env, so only "
                f"indices=None (all rows) is supported; got {indices!r}"
            )

    def _lookup(self, name: str) -> Any:
        if name in self.__dict__ or hasattr(type(self), name):
            return getattr(self, name)
        if hasattr(self.env, name):
            return getattr(self.env, name)
        raise AttributeError(f"neither StopVecEnv nor BatchedStopEnv has an attribute {name!r}")

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = self._lookup(attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._all_rows(indices, "set_attr")
        target = self if attr_name in self.__dict__ or not hasattr(self.env, attr_name) else None
        setattr(target if target is not None else self.env, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        self._all_rows(indices, "env_method")
        result = self._lookup(method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False for _ in self._indices(indices)]


__all__ = ["StopVecEnv"]

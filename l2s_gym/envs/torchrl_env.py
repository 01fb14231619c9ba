"""A TorchRL environment over ``BatchedStopEnv``: TensorDicts in and out, batch size ``[N]``.

    from l2s_gym.envs.torchrl_env import torchrl_env

    env = torchrl_env(BatchedStopEnv(predictor, task, 64, beta=0.05))
    data = env.rollout(100, policy, break_when_any_done=False)

TorchRL is optional (``pip install "l2s-gym[torchrl]"``): this module imports without it, and
``torchrl_env`` / ``StopTorchRLEnv`` then raise an ``ImportError`` that names the extra.
``import l2s_gym`` never imports this module.

Keys (all on ``batched.device``, leading dimension ``N``):

- ``"observation"`` float32 ``(N, obs_dim)``: ``make_obs``'s ``[features, t]``, unbounded
  (its last entry ``t`` lies in ``0..T-1``, as in the Gymnasium env's Box).
- ``("info", "t")`` long, ``("info", "loss")`` float32, ``("info", "layers_computed")`` long,
  each ``(N,)``: ``BatchedStopEnv``'s info of the episode the observation belongs to.
- ``"action"`` long ``(N,)``: ``0`` continue, ``1`` stop (a ``Categorical`` spec, ``n = 2``).
- ``"reward"`` float32 ``(N, 1)``; ``"done"``, ``"terminated"``, ``"truncated"`` bool
  ``(N, 1)``. An episode ends by stopping or by reaching the last layer: both are true
  terminations, so ``terminated == done`` and ``truncated`` is always False.

Resets follow TorchRL's partial-reset convention on top of ``BatchedStopEnv``'s same-step
autoreset. ``_step`` returns, in rows whose episode ended, the episode's true last
observation (``info["terminal_obs"]``) with ``done`` set; ``BatchedStopEnv`` has already
started those rows' next episodes, and the env keeps their first observations. The next
``reset(td)`` with a ``"_reset"`` mask (what ``rollout`` and the collectors send) returns
those kept observations for the masked rows, computing nothing and advancing no other row.
A reset without a mask (or with every row masked while some row is mid-episode) is a full
``BatchedStopEnv.reset``; ``set_seed(s)`` makes the next full reset restart the instance
stream from ``s``. Two things the same-step autoreset cannot do are refused: stepping a row
that ended before it is reset, and resetting only some rows in the middle of their
episodes (or partial steps, ``rollout(break_when_all_done=True)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from l2s_gym.envs.batched import BatchedStopEnv

try:
    from tensordict import TensorDict, TensorDictBase
    from torchrl.data import Categorical, Composite, Unbounded
    from torchrl.envs import EnvBase
except ImportError as exc:  # the extra is not installed: the class refuses to build
    _MISSING: ImportError | None = exc
    EnvBase = object  # type: ignore[misc,assignment]
else:
    _MISSING = None

INSTALL_HINT = 'pip install "l2s-gym[torchrl]"'
INFO_KEYS = ("t", "loss", "layers_computed")
"""``BatchedStopEnv`` info fields exposed under ``("info", key)``."""


def _require_torchrl() -> None:
    if _MISSING is not None:
        raise ImportError(
            f"the TorchRL environment needs torchrl and tensordict ({_MISSING}): {INSTALL_HINT}"
        ) from _MISSING


class StopTorchRLEnv(EnvBase):  # type: ignore[misc,valid-type]
    """``torchrl.envs.EnvBase`` over a ``BatchedStopEnv``; see the module docstring.

    Args:
        batched_env: the environment to wrap; its ``num_envs`` is the batch size and its
            device (the predictor's) the env's device.
    """

    def __init__(self, batched_env: BatchedStopEnv) -> None:
        _require_torchrl()
        if not isinstance(batched_env, BatchedStopEnv):
            raise TypeError(
                f"StopTorchRLEnv wraps a BatchedStopEnv, got {type(batched_env).__name__}"
            )
        n = batched_env.num_envs
        device = torch.device(batched_env.device)
        super().__init__(device=device, batch_size=torch.Size([n]))
        self.batched_env = batched_env
        self.observation_spec = Composite(
            observation=Unbounded((n, batched_env.obs_dim), dtype=torch.float32, device=device),
            info=Composite(
                t=Unbounded((n,), dtype=torch.long, device=device),
                loss=Unbounded((n,), dtype=torch.float32, device=device),
                layers_computed=Unbounded((n,), dtype=torch.long, device=device),
                shape=(n,),
                device=device,
            ),
            shape=(n,),
            device=device,
        )
        self.action_spec = Categorical(2, shape=(n,), dtype=torch.long, device=device)
        self.reward_spec = Unbounded((n, 1), dtype=torch.float32, device=device)
        self.done_spec = Composite(
            {
                key: Categorical(2, shape=(n, 1), dtype=torch.bool, device=device)
                for key in ("done", "terminated", "truncated")
            },
            shape=(n,),
            device=device,
        )
        self._next_seed: int | None = None
        self._obs: Tensor | None = None
        """``BatchedStopEnv``'s current observation: a fresh first one in rows that ended."""
        self._ended = torch.zeros(n, dtype=torch.bool, device=device)
        """Rows whose episode ended in the last step and that no reset has handed on yet."""

    def __repr__(self) -> str:
        env = self.batched_env
        return (
            f"{type(self).__name__}(num_envs={env.num_envs}, num_layers={env.num_layers}, "
            f"obs_dim={env.obs_dim}, reward={env.reward_mode!r}, device={self.device})"
        )

    # --- EnvBase ------------------------------------------------------------------------
    def _set_seed(self, seed: int | None) -> None:
        """The next full reset restarts the instance stream from ``seed``."""
        self._next_seed = None if seed is None else int(seed)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: object) -> TensorDictBase:
        n = self.batched_env.num_envs
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is not None and self._obs is not None:
            mask = mask.reshape(n).to(self._ended.device)
            if bool((mask & ~self._ended).any()):  # a row in the middle of its episode
                if not bool(mask.all()):
                    raise RuntimeError(
                        "StopTorchRLEnv resets a row only after its episode ended (BatchedStopEnv "
                        "has started the next one already); a row in the middle of its episode is "
                        "reset only by a full reset, of every row (reset() without '_reset')"
                    )
                mask = None
        else:
            mask = None
        if mask is None:
            obs = self.batched_env.reset(seed=self._next_seed)
            self._next_seed = None
            self._ended = torch.zeros_like(self._ended)
        else:
            # The masked rows' next episodes started in the last step: hand on their first obs.
            assert self._obs is not None
            obs = self._obs
            self._ended = self._ended & ~mask
        self._obs = obs
        not_done = torch.zeros(n, 1, dtype=torch.bool, device=obs.device)
        return self._output(obs, self.batched_env.current_info(), not_done)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        partial = tensordict.get("_step", None)
        if partial is not None and not bool(partial.all()):
            raise RuntimeError(
                "StopTorchRLEnv cannot step only some rows (BatchedStopEnv advances all of "
                "them): use rollout(break_when_any_done=False) rather than break_when_all_done"
            )
        if bool(self._ended.any()):
            rows = torch.nonzero(self._ended).flatten()[:5].tolist()
            raise RuntimeError(
                f"rows {rows} ended in the last step and were not reset: call "
                "env.reset(td) with td['_reset'] = td['done'] first (rollout(..., "
                "break_when_any_done=False) and the collectors do it)"
            )
        obs, reward, done, info = self.batched_env.step(tensordict.get("action"))
        self._obs = obs
        self._ended = done
        done = done.unsqueeze(-1)
        out = self._output(info["terminal_obs"], info, done)
        out.set("reward", reward.unsqueeze(-1))
        return out

    # --- internals ----------------------------------------------------------------------
    def _output(self, obs: Tensor, info: dict[str, Tensor], done: Tensor) -> TensorDictBase:
        n = self.batched_env.num_envs
        return TensorDict(
            {
                "observation": obs,
                "info": TensorDict(
                    {
                        "t": info["t"].long(),
                        "loss": info["loss"].to(torch.float32),
                        "layers_computed": info["layers_computed"].long(),
                    },
                    batch_size=[n],
                ),
                "done": done,
                "terminated": done.clone(),
                "truncated": torch.zeros_like(done),
            },
            batch_size=[n],
            device=self.device,
        )


def torchrl_env(batched: BatchedStopEnv) -> EnvBase:
    """The TorchRL environment over ``batched`` (a ``StopTorchRLEnv``).

    Raises ``ImportError`` naming the ``torchrl`` extra when TorchRL is not installed.
    """
    _require_torchrl()
    return StopTorchRLEnv(batched)


__all__ = ["INFO_KEYS", "INSTALL_HINT", "StopTorchRLEnv", "torchrl_env"]

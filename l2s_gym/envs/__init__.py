"""Gymnasium environments: learning to stop as RL, one id per task (``l2s/<Task>-v1``).

Importing ``l2s_gym`` registers, for every task in ``l2s_gym.registry.TASKS`` whose class
sets ``env_id``, that id with ``StopEnv`` as ``entry_point`` and ``StopVectorEnv`` as
``vector_entry_point`` (the task name is bound as the ``task`` kwarg). Tasks registered
later are added by calling ``register_envs()`` again.

    env = gymnasium.make("l2s/SparseRecovery-v1")                 # untrained LISTA
    envs = gymnasium.make_vec("l2s/SparseRecovery-v1", num_envs=64,
                              vectorization_mode="vector_entry_point")

``BatchedStopEnv`` (torch in, torch out, on the device) is what both wrap and what
on-device RL agents use directly.
"""

from __future__ import annotations

import gymnasium

from l2s_gym import registry
from l2s_gym.envs.batched import REWARD_MODES, BatchedStopEnv, make_obs, split_obs
from l2s_gym.envs.stop_env import StopEnv, StopVectorEnv, build_components

ENTRY_POINT = "l2s_gym.envs.stop_env:StopEnv"
VECTOR_ENTRY_POINT = "l2s_gym.envs.stop_env:StopVectorEnv"


def register_envs() -> list[str]:
    """Register an env id for each task that declares one; idempotent.

    Returns the ids this call registered (ids already present are left alone).
    """
    added = []
    for name, entry in sorted(registry.TASKS.items()):
        env_id = getattr(entry.cls, "env_id", "")
        if not env_id or env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point=ENTRY_POINT,
            vector_entry_point=VECTOR_ENTRY_POINT,
            kwargs={"task": name},
        )
        added.append(env_id)
    return added


def env_ids() -> dict[str, str]:
    """``{task name: env id}`` for every registered task that declares an env id."""
    return {
        name: entry.cls.env_id
        for name, entry in sorted(registry.TASKS.items())
        if getattr(entry.cls, "env_id", "")
    }


register_envs()

__all__ = [
    "REWARD_MODES",
    "BatchedStopEnv",
    "StopEnv",
    "StopVectorEnv",
    "build_components",
    "env_ids",
    "make_obs",
    "register_envs",
    "split_obs",
]

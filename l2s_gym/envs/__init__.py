"""Gymnasium environments: learning to stop as RL, one id per task (``l2s/<Task>-v1``).

Importing ``l2s_gym`` registers, for every task in ``l2s_gym.registry.TASKS`` whose class
sets ``env_id``, that id with ``StopEnv`` as ``entry_point`` and ``StopVectorEnv`` as
``vector_entry_point`` (the task name is bound as the ``task`` kwarg); the tasks of
installed ``l2s_gym.tasks`` plugins included. Tasks registered later are added by calling
``register_envs()`` again (it lives in ``l2s_gym.plugins``, which ``load_plugins`` and
``--import`` also call).

    env = gymnasium.make("l2s/SparseRecovery-v1")                 # untrained LISTA
    envs = gymnasium.make_vec("l2s/SparseRecovery-v1", num_envs=64,
                              vectorization_mode="vector_entry_point")

``BatchedStopEnv`` (torch in, torch out, on the device) is what both wrap and what
on-device RL agents use directly.
"""

from __future__ import annotations

from l2s_gym.build import build_components
from l2s_gym.envs.batched import REWARD_MODES, BatchedStopEnv, make_obs, split_obs
from l2s_gym.envs.stop_env import StopEnv, StopVectorEnv
from l2s_gym.plugins import ENTRY_POINT, VECTOR_ENTRY_POINT, env_ids, register_envs

# The ids themselves are registered by ``import l2s_gym``, last (``plugins._load_at_import``):
# the built-in tasks' first, then the installed plugins'.

__all__ = [
    "ENTRY_POINT",
    "REWARD_MODES",
    "VECTOR_ENTRY_POINT",
    "BatchedStopEnv",
    "StopEnv",
    "StopVectorEnv",
    "build_components",
    "env_ids",
    "make_obs",
    "register_envs",
    "split_obs",
]

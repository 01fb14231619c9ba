"""The built-in stop-policy learners, installed as ``l2s_gym.agents``.

Importing this package registers them (``l2s_gym.registry.register_learner``); l2s-gym
loads it through its own ``l2s_gym.plugins`` entry point, the hook any installed package
can use to add tasks, predictors or learners.

- ``reverse_kl`` / ``forward_kl``: exact KL imitation of the oracle (``imitation``)
- ``reinforce``: native batched REINFORCE on the device (``reinforce``)
- ``ppo`` / ``a2c``: stable-baselines3 on the batched environment (``sb3_agents``)
- ``dqn``: stable-baselines3 DQN, the value-based baseline (``sb3_dqn``)

The learner contract (``LearnerContext``, ``LearnerResult``, ``Validator``) and the
heuristic stop rules live in the library (``l2s_gym.learner``, ``l2s_gym.rules``).
"""

from . import imitation, reinforce, sb3_agents, sb3_dqn  # noqa: F401  (registration)

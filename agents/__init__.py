"""Stop-policy learners. Importing this package registers every built-in learner.

- ``reverse_kl`` / ``forward_kl``: exact KL imitation of the oracle (``agents.imitation``)
- heuristics (fixed depth, oracle, confidence and convergence thresholds): ``agents.heuristics``
"""

from agents import imitation, reinforce, sb3_agents  # noqa: F401
from agents.base import LearnerContext, LearnerResult, Validator

__all__ = ["LearnerContext", "LearnerResult", "Validator"]

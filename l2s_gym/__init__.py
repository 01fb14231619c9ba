"""l2s-gym: learning when to stop a layered computation (Chen et al., ICML 2020).

Importing the package registers the built-in tasks and predictors.
"""

from l2s_gym import predictors, tasks, testing  # noqa: F401  (registration side effects)
from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor, Trace
from l2s_gym.task import Batch, Task

__version__ = "0.1.0"
__all__ = ["Batch", "LayeredPredictor", "StopPolicy", "Task", "Trace", "__version__"]

# Last: registers a gymnasium id for every task imported above.
from l2s_gym import envs  # noqa: E402, F401

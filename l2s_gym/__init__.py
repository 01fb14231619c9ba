"""l2s-gym: learning when to stop a layered computation (Chen et al., ICML 2020).

Importing the package registers the built-in tasks and predictors, those of installed
packages' ``l2s_gym.tasks`` entry points (a broken one is a warning, not an error), and
their Gymnasium ids. The built-in learners (``l2s_gym.agents``) and those of other
installed packages load on first use through the ``l2s_gym.plugins`` entry points
(``l2s_gym.plugins.load_plugins``): importing the package imports no learner and no
stable-baselines3. The toy task of the tests and docs registers only when
``l2s_gym.testing`` is imported.
"""

from importlib import metadata as _metadata

from l2s_gym import predictors, tasks  # noqa: F401  (registration side effects)
from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor, Trace
from l2s_gym.rules import ReadoutRule
from l2s_gym.runner import RunnerOutput, StopRunner
from l2s_gym.task import Batch, Task

try:
    __version__ = _metadata.version("l2s-gym")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Batch",
    "LayeredPredictor",
    "ReadoutRule",
    "RunnerOutput",
    "StopRunner",
    "StopPolicy",
    "Task",
    "Trace",
    "__version__",
    "make_env",
]

# Last: registers a gymnasium id for every task imported above, then imports the installed
# ``l2s_gym.tasks`` plugins (every name above, ``l2s_gym.envs`` included, is defined by now:
# they may import them) and registers their tasks' ids.
from l2s_gym import envs  # noqa: E402, F401
from l2s_gym import plugins as _plugins  # noqa: E402
from l2s_gym.envs.make import make_env  # noqa: E402

_plugins._load_at_import()

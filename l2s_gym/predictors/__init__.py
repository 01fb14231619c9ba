"""Built-in layered predictors; importing this package registers them."""

from l2s_gym.predictors import lista  # noqa: F401

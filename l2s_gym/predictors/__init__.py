"""Built-in layered predictors; importing this package registers them."""

from l2s_gym.predictors import (  # noqa: F401
    dncnn,
    lista,  # noqa: F401
    maml,  # noqa: F401
    sdn,
)

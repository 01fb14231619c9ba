"""Built-in layered predictors; importing this package registers them."""

from l2s_gym.predictors import (  # noqa: F401
    dncnn,
    exit_transformer,  # noqa: F401
    lista,  # noqa: F401
    maml,  # noqa: F401
    sdn,
)

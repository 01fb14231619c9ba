"""Built-in tasks; importing this package registers them."""

from l2s_gym.tasks import (  # noqa: F401
    denoising,
    meta_learning,  # noqa: F401
    pointer_chasing,  # noqa: F401
    recognition,
    sparse_recovery,  # noqa: F401
)

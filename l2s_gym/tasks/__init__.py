"""Built-in tasks; importing this package registers them."""

from l2s_gym.tasks import sparse_recovery  # noqa: F401

"""Shared fixtures: the tiny configs every end-to-end test runs, and the test session's setup."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module is collected: one torch thread (results are reproducible at a
    fixed thread count, and tests run side by side), the toy task, predictor and failing
    learner of ``l2s_gym.testing``, and the installed plugins (the built-in learners)."""
    import l2s_gym.testing  # noqa: F401  (registers the toy components)
    from l2s_gym import plugins

    torch.set_num_threads(1)
    plugins.load_plugins()


TOY_CONFIG = """
experiment: toy_run
seed: 0
device: cpu
beta: 0.05
task: {name: toy, num_layers: 6, val_size: 256, test_size: 256}
predictor: {name: toy_counter, num_layers: 6}
stage1: {steps: 5, batch_size: 32, val_every: 5}
policy: {hidden: 32, depth: 2}
imitation: {steps: 150, batch_size: 128, lr: 0.01, val_every: 50}
compare: {learners: [reverse_kl, forward_kl]}
"""

TOY_FRONTIER = """
experiment: toy_frontier
seed: 0
device: cpu
threads: 1
beta: 0.05
task: {name: toy, num_layers: 6, val_size: 128, test_size: 128}
predictor: {name: toy_counter, num_layers: 6}
stage1: {steps: 3, batch_size: 16, val_every: 3}
policy: {hidden: 16, depth: 1}
imitation: {steps: 30, batch_size: 64, lr: 0.01, val_every: 10}
compare: {learners: [reverse_kl]}
frontier: {costs: [0, 1]}
"""

SPARSE_TINY = """
experiment: sparse_tiny
seed: 0
device: cpu
beta: 0.01
task: {name: sparse_recovery, m: 16, n: 32, p: 0.15, val_size: 128, test_size_per_snr: 64}
predictor: {name: lista, num_layers: 5, weights: coupled}
stage1: {steps: 30, batch_size: 64, lr: 0.003, val_every: 10}
policy: {hidden: 16, depth: 1}
imitation: {steps: 20, batch_size: 64, val_every: 10}
compare: {learners: [reverse_kl]}
"""

TOY_RL = """
experiment: toy_rl
seed: 0
device: cpu
beta: 0.05
task: {name: toy, num_layers: 6, val_size: 256, test_size: 256}
predictor: {name: toy_counter, num_layers: 6}
policy: {hidden: 32, depth: 2}
compare: {layer_budget: 30000}
rl: {num_envs: 64, lr: 0.01, val_every: 10, reward: terminal_loss,
     rollout_steps: 16, ppo: {n_steps: 16, batch_size: 512}, a2c: {n_steps: 8}}
"""

DENOISING_TINY = """
experiment: denoising_tiny
seed: 0
device: cpu
beta: 1.0
task: {name: denoising, patch_size: 16, val_size: 32, test_patches: 8}
predictor: {name: dncnn, num_layers: 3, channels: 8, feature_size: 8, encoder_channels: 4}
stage1: {steps: 6, batch_size: 8, val_every: 3}
policy: {hidden: 8, depth: 1}
imitation: {steps: 4, batch_size: 8, val_every: 2}
compare: {learners: [reverse_kl]}
"""

RECOGNITION_TINY = """
experiment: recognition_tiny
seed: 0
device: cpu
beta: 1.0
task: {name: recognition, severities: [0.0, 1.0], val_per_severity: 100, test_per_severity: 100}
predictor: {name: sdn, num_layers: 6, channels: 8}
stage1: {steps: 20, batch_size: 32, val_every: 10}
policy: {hidden: 8, depth: 1}
imitation: {steps: 10, batch_size: 32, val_every: 5}
compare: {learners: [reverse_kl]}
"""


def write_config(folder: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def toy_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, TOY_CONFIG, "toy.yaml")


@pytest.fixture
def sparse_tiny_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, SPARSE_TINY, "sparse_tiny.yaml")

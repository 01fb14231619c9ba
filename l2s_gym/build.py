"""Build tasks, predictors and policies from a validated config; pick the device."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

from l2s_gym import registry
from l2s_gym.config import ComponentSpec, ConfigError, ExperimentConfig
from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor
from l2s_gym.task import Task

T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for, but PyTorch sees no CUDA device")
    return torch.device(name)


def apply_threads(threads: int) -> None:
    """Set torch's intra-op CPU threads (the config's ``threads``); 0 leaves torch's default."""
    if threads > 0:
        torch.set_num_threads(threads)


def make_task(spec: ComponentSpec, seed: int, device: torch.device | str) -> Task:
    """The task of ``spec``; a ``ValueError`` its constructor raises is a ``ConfigError``
    naming the section (a plugin's check of its own parameters)."""
    entry = registry.TASKS[spec.name]
    with _config_errors(f"task ({spec.name})"):
        return entry.cls(spec.params, seed=seed, device=str(device))


@contextmanager
def _config_errors(section: str) -> Iterator[None]:
    try:
        yield
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{section}: {exc}") from exc


def _seeded(seed: int | None, build: Callable[[], T]) -> T:
    """``build()`` with torch's CPU generator seeded by ``seed``, leaving the caller's global
    random state as it was (modules initialise from the global generator)."""
    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def make_predictor(spec: ComponentSpec, task: Task, seed: int | None = None) -> LayeredPredictor:
    """A fresh predictor for ``task``; ``seed`` fixes its initialisation."""
    entry = registry.PREDICTORS[spec.name]
    with _config_errors(f"predictor ({spec.name})"):
        predictor = _seeded(seed, lambda: entry.cls(spec.params, task)).to(task.device)
        predictor.check_protocol()
    return predictor


def make_policy(
    cfg: ExperimentConfig, predictor: LayeredPredictor, seed: int | None = None
) -> StopPolicy:
    """The StopPolicy every learner trains, sized by ``cfg.policy``; ``seed`` fixes its init."""

    def build() -> StopPolicy:
        return StopPolicy(
            predictor.feature_shape,
            predictor.num_layers,
            hidden=cfg.policy.hidden,
            depth=cfg.policy.depth,
            encoder=predictor.policy_encoder(),
            pos_dim=cfg.policy.pos_dim,
        )

    return _seeded(seed, build).to(predictor.device)

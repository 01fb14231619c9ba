"""Build tasks, predictors and policies from a validated config; pick the device.

``build_components`` builds what an environment runs on from its keyword arguments (a
predictor checkpoint, a predictor, or neither)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from l2s_gym import registry
from l2s_gym.config import (
    ComponentSpec,
    ConfigError,
    ExperimentConfig,
    build_dataclass,
    from_dict,
)
from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor
from l2s_gym.runs import load_checkpoint, load_predictor
from l2s_gym.task import Task

T = TypeVar("T")

DEFAULT_BETA = 0.1
"""An environment's ``beta`` when neither its kwargs nor a checkpoint give one."""


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
    cfg: ExperimentConfig,
    predictor: LayeredPredictor,
    seed: int | None = None,
    price_input: bool = False,
) -> StopPolicy:
    """The StopPolicy every learner trains, sized by ``cfg.policy``; ``seed`` fixes its init.
    ``price_input``: the price-conditioned policy of ``l2s frontier --one-policy``."""

    def build() -> StopPolicy:
        return StopPolicy(
            predictor.feature_shape,
            predictor.num_layers,
            hidden=cfg.policy.hidden,
            depth=cfg.policy.depth,
            encoder=predictor.policy_encoder(),
            pos_dim=cfg.policy.pos_dim,
            price_input=price_input,
        )

    return _seeded(seed, build).to(predictor.device)


def _from_checkpoint(
    checkpoint: str | Path, task: str | Task, device: str, beta: float | None
) -> tuple[Task, LayeredPredictor, float]:
    """``build_components`` with ``checkpoint=``: the config snapshot rebuilds the rest."""
    payload = load_checkpoint(checkpoint, "predictor")
    if not payload.get("config"):
        raise ValueError(
            f"{checkpoint} holds no config snapshot under 'config'; expected a best.pt "
            "written by l2s"
        )
    cfg = from_dict(payload["config"])
    task_name = task.name if isinstance(task, Task) else task
    if task_name != cfg.task.name:
        raise ValueError(
            f"checkpoint {checkpoint} is for task {cfg.task.name!r}, "
            f"but this env is for {task_name!r}"
        )
    dev = resolve_device(device)
    built_task = task if isinstance(task, Task) else make_task(cfg.task, cfg.seed, dev)
    model = make_predictor(cfg.predictor, built_task)
    load_predictor(checkpoint, model, freeze=False)
    return built_task, model, float(cfg.beta if beta is None else beta)


def _default_predictor(task: Task, predictor_config: dict[str, Any] | None) -> LayeredPredictor:
    """The task's ``default_predictor``, untrained, from ``predictor_config``."""
    name = type(task).default_predictor
    if not name or name not in registry.PREDICTORS:
        raise ValueError(
            f"task {task.name!r} names no registered default_predictor "
            f"(got {name!r}); pass predictor= or checkpoint="
        )
    pentry = registry.PREDICTORS[name]
    pparams = build_dataclass(pentry.config_cls, predictor_config or {}, "predictor_config")
    # A fixed initialisation without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        return make_predictor(ComponentSpec(name, pparams), task, seed=0)


def build_components(
    task: str | Task = "sparse_recovery",
    predictor: LayeredPredictor | None = None,
    checkpoint: str | Path | None = None,
    task_config: dict[str, Any] | None = None,
    predictor_config: dict[str, Any] | None = None,
    device: str = "auto",
    beta: float | None = None,
    task_seed: int = 0,
) -> tuple[Task, LayeredPredictor, float]:
    """The task, the predictor and beta an environment runs on, from the env's kwargs.

    - ``checkpoint``: a predictor ``best.pt`` written by ``l2s``; its config snapshot
      rebuilds the task (with the experiment's seed) and the predictor, and gives beta.
    - ``predictor``: used as given (on its own device). Pass the ``Task`` instance it was
      built for as ``task``; a task name builds a fresh task from ``task_config`` and
      ``task_seed``, which is only right if the predictor does not depend on the task's
      draw (a sparse-recovery LISTA does: it holds the task's matrix A).
    - neither: the task from ``task_config`` (defaults for missing keys) and its
      ``default_predictor``, untrained, from ``predictor_config`` (LISTA starts as ISTA).

    ``beta=None`` means the checkpoint's beta, or ``DEFAULT_BETA``.
    """
    if checkpoint is not None:
        if predictor is not None:
            raise ValueError("pass either predictor= or checkpoint=, not both")
        if task_config is not None or predictor_config is not None:
            raise ValueError(
                "task_config / predictor_config cannot be combined with checkpoint=: "
                "the checkpoint's config snapshot defines the task and the predictor"
            )
        return _from_checkpoint(checkpoint, task, device, beta)

    if isinstance(task, Task):
        if task_config is not None:
            raise ValueError("task_config cannot be combined with a Task instance as task=")
        built_task = task
    else:
        if task not in registry.TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(sorted(registry.TASKS))}")
        entry = registry.TASKS[task]
        params = build_dataclass(entry.config_cls, task_config or {}, "task_config")
        dev = predictor.device if predictor is not None else resolve_device(device)
        built_task = make_task(ComponentSpec(task, params), task_seed, dev)

    if predictor is None:
        predictor = _default_predictor(built_task, predictor_config)
    elif predictor_config is not None:
        raise ValueError("predictor_config applies only when the env builds the predictor")
    if not isinstance(predictor, LayeredPredictor):
        raise TypeError(f"predictor must be a LayeredPredictor, got {type(predictor).__name__}")
    return built_task, predictor, float(DEFAULT_BETA if beta is None else beta)

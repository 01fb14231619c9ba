"""Name -> component tables that configs, the command line and the environments read.

Tasks and predictors register themselves (``@register_task``, ``@register_predictor``)
when their modules are imported; ``l2s_gym.tasks`` and ``l2s_gym.predictors`` import
every built-in one. Learners register with ``@register_learner``; the built-in ones
(``l2s_gym.agents``) and those of other installed packages are imported through the
``l2s_gym.plugins`` entry-point group by ``l2s_gym.plugins.load_plugins`` (the library
itself never imports a learner). This module holds the tables and the decorators only
and imports nothing of the package: everything may import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Entry:
    name: str
    cls: Any
    config_cls: type
    task: str | None = None
    """For predictors: the task they solve (``None``: any)."""


TASKS: dict[str, Entry] = {}
PREDICTORS: dict[str, Entry] = {}
LEARNERS: dict[str, Callable[..., Any]] = {}
LEARNER_LABELS: dict[str, str] = {}
LEARNER_KINDS: dict[str, str] = {}
"""Learner name -> ``"imitation"`` (fits the oracle exactly) or ``"rl"`` (sampled episodes)."""
BASELINES: dict[str, list[Callable[[Any, int], list[tuple[str, Any]]]]] = {}
"""Task name -> functions ``(task, num_layers) -> [(label, untrained predictor), ...]``:
classical methods reported at full depth beside the learned ones (e.g. ISTA, FISTA)."""


def register_task(name: str, config_cls: type) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        TASKS[name] = Entry(name, cls, config_cls)
        return cls

    return deco


def register_predictor(
    name: str, config_cls: type, task: str | None = None
) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        PREDICTORS[name] = Entry(name, cls, config_cls, task)
        return cls

    return deco


def register_learner(
    name: str, label: str, kind: str = "rl"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a stop-policy learner ``fn(ctx) -> LearnerResult`` shown as ``label``.

    ``kind``: ``"imitation"`` or ``"rl"``; the fair-study tables compare each learner
    against the best RL learner.
    """
    if kind not in ("imitation", "rl"):
        raise ValueError(f"learner kind must be 'imitation' or 'rl', got {kind!r}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        LEARNERS[name] = fn
        LEARNER_LABELS[name] = label
        LEARNER_KINDS[name] = kind
        return fn

    return deco


def register_baselines(
    task: str,
) -> Callable[
    [Callable[[Any, int], list[tuple[str, Any]]]], Callable[[Any, int], list[tuple[str, Any]]]
]:
    """Register ``fn(task, num_layers) -> [(label, predictor)]``: classical baselines of ``task``."""

    def deco(
        fn: Callable[[Any, int], list[tuple[str, Any]]],
    ) -> Callable[[Any, int], list[tuple[str, Any]]]:
        BASELINES.setdefault(task, []).append(fn)
        return fn

    return deco


def classical_baselines(task: Any, num_layers: int) -> list[tuple[str, Any]]:
    """Every registered classical baseline of ``task`` (built untrained, on its device)."""
    out: list[tuple[str, Any]] = []
    for fn in BASELINES.get(task.name, []):
        out.extend(fn(task, num_layers))
    return out

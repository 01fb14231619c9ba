"""Name -> component tables that configs, the command line and the environments read.

Tasks and predictors register themselves (``@register_task``, ``@register_predictor``)
when their modules are imported; ``l2s_gym.tasks`` and ``l2s_gym.predictors`` import
every built-in one. Learners (``agents``) register the same way.
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


def register_learner(name: str, label: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a stop-policy learner ``fn(ctx) -> LearnerResult`` shown as ``label``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        LEARNERS[name] = fn
        LEARNER_LABELS[name] = label
        return fn

    return deco


def learner_names() -> list[str]:
    return sorted(LEARNERS)

"""Name -> component tables that configs, the command line and the environments read.

Tasks and predictors register themselves (``@register_task``, ``@register_predictor``)
when their modules are imported; ``l2s_gym.tasks`` and ``l2s_gym.predictors`` import
every built-in one. Learners register with ``@register_learner``; the built-in ones
(``l2s_gym.agents``) and those of other installed packages are imported through the
``l2s_gym.plugins`` entry-point group by ``l2s_gym.plugins.load_plugins`` (the library
itself never imports a learner). This module holds the tables and the decorators only
and imports nothing of the package: everything may import it.

**Registering a name twice.** Each table holds one entry per name, and the rule is the
same for tasks, predictors and learners:

- the same object again (the same module imported twice, an installed plugin also given
  to ``--import``): a no-op;
- an object of the same *origin*, the same qualified name defined in the same source file
  (that file executed again: ``importlib.reload``, a file imported under two module names,
  a module dropped from ``sys.modules`` and imported anew): the newer object replaces the
  older, silently (it is the same code);
- anything else under a name already taken: ``DuplicateNameError``, one line naming both
  origins. Nothing is replaced.

A classical baseline (``register_baselines``) of the same origin replaces the older one
instead of being added a second time; others are added (a task may have several).
"""

from __future__ import annotations

import os
import sys
import weakref
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
ONE_POLICY_LEARNERS: set[str] = set()
"""Learners that can train one price-conditioned policy for every price of a grid
(``LearnerContext.prices``; ``l2s frontier --one-policy``): ``register_learner``'s
``one_policy``."""
BASELINES: dict[str, list[Callable[[Any, int], list[tuple[str, Any]]]]] = {}
"""Task name -> functions ``(task, num_layers) -> [(label, untrained predictor), ...]``:
classical methods reported at full depth beside the learned ones (e.g. ISTA, FISTA)."""


class DuplicateNameError(ValueError):
    """A name is already registered by an object of another origin (see the module's rule)."""


_FILES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
"""Registered object -> the source file its module had when it registered (a later module
of the same name, e.g. another ``stoppers.py``, does not change where the object came from)."""


def _module_file(obj: Any) -> str:
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    file = getattr(module, "__file__", None)
    return os.path.realpath(file) if file else ""


def _file_of(obj: Any) -> str:
    try:
        return _FILES.get(obj) or _module_file(obj)
    except TypeError:  # not weak-referenceable
        return _module_file(obj)


def _remember(obj: Any) -> None:
    try:
        _FILES.setdefault(obj, _module_file(obj))
    except TypeError:
        pass


def origin(obj: Any) -> str:
    """Where ``obj`` was defined, for messages: ``module.QualName (path/to/file.py)``."""
    name = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    file = _file_of(obj)
    return f"{name} ({file})" if file else name


def same_origin(old: Any, new: Any) -> bool:
    """``old is new``, or the same qualified name from the same source file (module name
    when neither has a file)."""
    if old is new:
        return True
    if getattr(old, "__qualname__", None) != getattr(new, "__qualname__", None):
        return False
    old_file, new_file = _file_of(old), _file_of(new)
    if old_file or new_file:
        return old_file == new_file
    return getattr(old, "__module__", None) == getattr(new, "__module__", None)


def _check_free(kind: str, name: str, old: tuple[Any, ...] | None, new: tuple[Any, ...]) -> None:
    """Raise ``DuplicateNameError`` unless ``name`` is free or ``old`` and ``new`` (the
    objects registered under it, the class first) are of the same origin, pairwise."""
    if old is None:
        return
    for a, b in zip(old, new, strict=True):
        if not same_origin(a, b):
            raise DuplicateNameError(
                f"{kind} {name!r} is already registered by {origin(a)}; {origin(b)} cannot "
                "take the name too (rename one of them)"
            )


def _entry_key(entry: Entry | None) -> tuple[Any, ...] | None:
    return None if entry is None else (entry.cls, entry.config_cls)


def register_task(name: str, config_cls: type) -> Callable[[type], type]:
    """Register task class ``cls`` under ``name``, configured by ``config_cls``.

    Registering a name twice follows the module's rule (same object: no-op; same origin:
    replaced; else ``DuplicateNameError``)."""

    def deco(cls: type) -> type:
        _remember(cls)
        _remember(config_cls)
        _check_free("task", name, _entry_key(TASKS.get(name)), (cls, config_cls))
        TASKS[name] = Entry(name, cls, config_cls)
        return cls

    return deco


def register_predictor(
    name: str, config_cls: type, task: str | None = None
) -> Callable[[type], type]:
    """Register predictor class ``cls`` under ``name`` (for ``task``; ``None``: any).

    Registering a name twice follows the module's rule."""

    def deco(cls: type) -> type:
        _remember(cls)
        _remember(config_cls)
        old = PREDICTORS.get(name)
        _check_free("predictor", name, _entry_key(old), (cls, config_cls))
        if old is not None and old.task != task:
            raise DuplicateNameError(
                f"predictor {name!r} is already registered by {origin(old.cls)} for task "
                f"{old.task!r}; {origin(cls)} cannot register it for task {task!r}"
            )
        PREDICTORS[name] = Entry(name, cls, config_cls, task)
        return cls

    return deco


def register_learner(
    name: str, label: str, kind: str = "rl", one_policy: bool | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a stop-policy learner ``fn(ctx) -> LearnerResult`` shown as ``label``.

    ``kind``: ``"imitation"`` or ``"rl"``; the fair-study tables compare each learner
    against the best RL learner. ``one_policy``: the learner can train one price-conditioned
    policy over a grid of prices (given ``ctx.prices`` it builds ``make_policy(...,
    price_input=True)``, trains it at every price of the grid and validates it with
    ``PriceGridValidator``), so ``l2s frontier --one-policy`` gives it a one-policy trial;
    ``None`` (the default): imitation learners can, RL learners cannot. Registering a name
    twice follows the module's rule.
    """
    if kind not in ("imitation", "rl"):
        raise ValueError(f"learner kind must be 'imitation' or 'rl', got {kind!r}")
    can_one_policy = kind == "imitation" if one_policy is None else bool(one_policy)

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _remember(fn)
        old = LEARNERS.get(name)
        _check_free("learner", name, None if old is None else (old,), (fn,))
        LEARNERS[name] = fn
        LEARNER_LABELS[name] = label
        LEARNER_KINDS[name] = kind
        if can_one_policy:
            ONE_POLICY_LEARNERS.add(name)
        else:
            ONE_POLICY_LEARNERS.discard(name)
        return fn

    return deco


def register_baselines(
    task: str,
) -> Callable[
    [Callable[[Any, int], list[tuple[str, Any]]]], Callable[[Any, int], list[tuple[str, Any]]]
]:
    """Register ``fn(task, num_layers) -> [(label, predictor)]``: classical baselines of ``task``.

    A function of the same origin as one already registered for ``task`` replaces it (the
    module was imported again); any other is added."""

    def deco(
        fn: Callable[[Any, int], list[tuple[str, Any]]],
    ) -> Callable[[Any, int], list[tuple[str, Any]]]:
        _remember(fn)
        fns = BASELINES.setdefault(task, [])
        for i, old in enumerate(fns):
            if same_origin(old, fn):
                fns[i] = fn
                break
        else:
            fns.append(fn)
        return fn

    return deco


def classical_baselines(task: Any, num_layers: int) -> list[tuple[str, Any]]:
    """Every registered classical baseline of ``task`` (built untrained, on its device)."""
    out: list[tuple[str, Any]] = []
    for fn in BASELINES.get(task.name, []):
        out.extend(fn(task, num_layers))
    return out

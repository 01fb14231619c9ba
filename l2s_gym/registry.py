"""Name -> component tables that configs, the command line and the environments read.

Tasks and predictors register themselves (``@register_task``, ``@register_predictor``)
when their modules are imported; ``l2s_gym.tasks`` and ``l2s_gym.predictors`` import
every built-in one. Learners register with ``@register_learner``; the built-in ones
(``l2s_gym.agents``) and those of other installed packages are imported through the
``l2s_gym.plugins`` entry-point group by ``load_plugins`` (the library itself never
imports a learner). ``import_module_or_file`` imports a user's module or ``.py`` file,
which is what ``l2s --import`` does.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

PLUGIN_GROUP = "l2s_gym.plugins"
"""Entry-point group: each entry names a module whose import registers components."""


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


_plugins_loaded = False
IMPORTED: list[str] = []
"""What ``import_module_or_file`` imported, in order (a cluster's workers import it too)."""


class PluginError(RuntimeError):
    """A plugin module (entry point or ``--import``) could not be imported."""


def load_plugins() -> None:
    """Import every module of the ``l2s_gym.plugins`` entry-point group, once.

    l2s-gym's own learners arrive this way (``builtin_learners = "l2s_gym.agents"``), so
    a package that declares ``[project.entry-points."l2s_gym.plugins"]`` gets its tasks,
    predictors and learners registered without any flag.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin is named, not a traceback
            raise PluginError(
                f"plugin {ep.name!r} ({ep.value}, entry point group {PLUGIN_GROUP}) failed to "
                f"import: {type(exc).__name__}: {exc}"
            ) from exc
    # Register a gymnasium id for tasks the plugins added.
    from l2s_gym.envs import register_envs

    register_envs()


def import_module_or_file(spec: str) -> Any:
    """Import a dotted module (``my_pkg.stoppers``) or a ``.py`` file; its import registers.

    A file is imported under its stem as the module name (so dataclasses and pickling
    can find it). Raises ``PluginError`` with one line saying what went wrong.
    """
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.is_file():
            if not path.is_file():
                raise PluginError(f"--import {spec}: no such file")
            name = path.stem
            if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(
                path.resolve()
            ):
                return sys.modules[name]
            file_spec = importlib.util.spec_from_file_location(name, path.resolve())
            if file_spec is None or file_spec.loader is None:
                raise PluginError(f"--import {spec}: cannot import this file")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[name] = module  # dataclasses look their module up by name
            try:
                file_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
        else:
            module = importlib.import_module(spec)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"--import {spec}: {type(exc).__name__}: {exc}") from exc
    if spec not in IMPORTED:
        IMPORTED.append(spec)
    from l2s_gym.envs import register_envs

    register_envs()
    return module


def learner_names() -> list[str]:
    load_plugins()
    return sorted(LEARNERS)

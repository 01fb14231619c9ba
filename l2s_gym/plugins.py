"""Where components come from besides the built-in ones, and their Gymnasium ids.

Two entry-point groups, because they are loaded at different times:

- ``l2s_gym.tasks``: modules that register tasks and predictors (light: torch and
  l2s-gym's top-level names, no learner, no stable-baselines3). ``import l2s_gym`` imports
  them (``load_task_plugins``) and registers their tasks' Gymnasium ids, so
  ``gymnasium.make("l2s/<Its>-v1")`` works once the package is installed, as for the
  built-in tasks. A module that fails to import is one warning (``PluginWarning``, one
  line naming the plugin) and is skipped: ``import l2s_gym`` still works.
- ``l2s_gym.plugins``: modules that may register anything, learners included (l2s-gym's
  own learners arrive this way: ``builtin_learners = "l2s_gym.agents"``). Imported on first
  use, by ``load_plugins`` (every ``l2s`` command) and ``learner_names`` (config
  validation); a module that fails to import is a ``PluginError``.

- ``load_plugins`` imports both groups, once, then registers a Gymnasium id for each task
  that declares one (``register_envs``).
- ``import_module_or_file`` imports a user's module or ``.py`` file, which is what
  ``l2s --import`` does, and registers the ids of the tasks it added.
- ``learner_names`` is what config validation asks: the learners known once the plugins
  are loaded. It registers no Gymnasium id: reading a config has no side effect beyond
  the plugins' own registrations.

**Loading the same plugin twice is a no-op.** A module runs once per process: an entry
point, or ``--import`` of a dotted module, returns the module already in ``sys.modules``;
``--import`` of a ``.py`` file returns the module already imported *from that file* (the
same real path, under whatever module name), so an installed plugin also given to
``--import`` registers once. When a file does run again (another module name, a reload),
``l2s_gym.registry``'s rule applies: the same qualified name from the same file replaces
its older self; a different object under a taken name (or a Gymnasium id another task
already has) is ``registry.DuplicateNameError``, one line naming both origins, reported as
a ``PluginError`` by ``load_plugins`` and ``import_module_or_file``.

The name tables themselves live in ``l2s_gym.registry``, which imports nothing of the
package; the env classes live in ``l2s_gym.envs``, named here by their entry-point strings
only (nothing here imports them).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium

from l2s_gym import registry

PLUGIN_GROUP = "l2s_gym.plugins"
"""Entry-point group: each entry names a module whose import registers components
(learners included); imported on first use (``load_plugins``, ``learner_names``)."""
TASK_PLUGIN_GROUP = "l2s_gym.tasks"
"""Entry-point group of light modules registering tasks and predictors (no learners):
``import l2s_gym`` imports them and registers their tasks' Gymnasium ids."""
ENTRY_POINT = "l2s_gym.envs.stop_env:StopEnv"
VECTOR_ENTRY_POINT = "l2s_gym.envs.stop_env:StopVectorEnv"

IMPORTED: list[str] = []
"""What ``import_module_or_file`` imported, in order (a cluster's workers import it too)."""
_plugins_loaded = False
_task_plugins_loaded = False


class PluginError(RuntimeError):
    """A plugin module (entry point or ``--import``) could not be imported."""


class PluginWarning(UserWarning):
    """An ``l2s_gym.tasks`` plugin failed to import (or clashed) at ``import l2s_gym``."""


def _warn(message: str) -> None:
    """One warning of one line (no source line under it, whatever the filters say)."""
    warnings.warn_explicit(message, PluginWarning, "l2s_gym", 0, module="l2s_gym.plugins")


def register_envs() -> list[str]:
    """Register an env id for each task that declares one; idempotent.

    Every task in ``l2s_gym.registry.TASKS`` whose class sets ``env_id`` gets that id with
    ``StopEnv`` as ``entry_point`` and ``StopVectorEnv`` as ``vector_entry_point`` (the
    task name bound as the ``task`` kwarg). Returns the ids this call registered (ids
    already registered for the same task are left alone). An id that a task's class sets
    itself but another task already has is ``registry.DuplicateNameError`` naming both,
    raised once every other id is registered (an id a subclass only inherits is skipped).
    """
    added, clashes = _register_envs()
    if clashes:
        raise registry.DuplicateNameError(clashes[0])
    return added


def _register_envs() -> tuple[list[str], list[str]]:
    """``register_envs``'s work: (the ids registered, one message per clashing id)."""
    added, clashes = [], []
    # A class that sets env_id itself goes first; one that inherits it (a subclass of a
    # registered task under another name) gets it only while it is free, and never clashes.
    tasks = sorted(registry.TASKS.items(), key=lambda kv: ("env_id" not in vars(kv[1].cls), kv[0]))
    for name, entry in tasks:
        env_id = getattr(entry.cls, "env_id", "")
        if not env_id:
            continue
        if env_id in gymnasium.registry:
            spec = gymnasium.registry[env_id]
            other = (spec.kwargs or {}).get("task")
            if other != name and "env_id" in vars(entry.cls):
                by = f"task {other!r}" if other else f"entry point {spec.entry_point!r}"
                clashes.append(
                    f"Gymnasium id {env_id!r} of task {name!r} ({registry.origin(entry.cls)}) "
                    f"is already registered for {by}; task {name!r} gets no id"
                )
            continue
        gymnasium.register(
            id=env_id,
            entry_point=ENTRY_POINT,
            vector_entry_point=VECTOR_ENTRY_POINT,
            kwargs={"task": name},
        )
        added.append(env_id)
    return added, clashes


def _register_envs_or_plugin_error() -> list[str]:
    try:
        return register_envs()
    except registry.DuplicateNameError as exc:
        raise PluginError(str(exc)) from exc


def env_ids() -> dict[str, str]:
    """``{task name: env id}`` for every registered task that declares an env id."""
    return {
        name: entry.cls.env_id
        for name, entry in sorted(registry.TASKS.items())
        if getattr(entry.cls, "env_id", "")
    }


def _load_entry_point(ep: metadata.EntryPoint) -> None:
    """Import one entry point's module; a failure is one ``PluginError`` line naming it."""
    try:
        ep.load()
    except Exception as exc:  # a broken plugin is named, not a traceback
        raise PluginError(
            f"plugin {ep.name!r} ({ep.value}, entry point group {ep.group}) failed to "
            f"import: {type(exc).__name__}: {exc}"
        ) from exc


def _import_entry_points() -> None:
    """Import every module of the ``l2s_gym.plugins`` group, once; nothing else."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        _load_entry_point(ep)


def load_task_plugins() -> list[str]:
    """Import every module of the ``l2s_gym.tasks`` entry-point group, once (``import
    l2s_gym`` does); registers no Gymnasium id (``register_envs`` does).

    A module that fails to import is one ``PluginWarning`` line naming the plugin, and is
    skipped. Returns those messages (empty after the first call).
    """
    global _task_plugins_loaded
    if _task_plugins_loaded:
        return []
    _task_plugins_loaded = True
    failed = []
    for ep in metadata.entry_points(group=TASK_PLUGIN_GROUP):
        try:
            _load_entry_point(ep)
        except PluginError as exc:
            failed.append(f"{exc}; its tasks are not registered")
            _warn(failed[-1])
    return failed


def _load_at_import() -> None:
    """What ``import l2s_gym`` does last: the built-in tasks' Gymnasium ids, the
    ``l2s_gym.tasks`` plugins, then their tasks' ids (the built-in ones keep theirs).
    Never raises: a plugin that fails to import, or an id already taken, is a warning."""
    for message in _register_envs()[1]:
        _warn(message)
    load_task_plugins()
    for message in _register_envs()[1]:
        _warn(message)


def load_plugins() -> None:
    """Import every module of the ``l2s_gym.tasks`` and ``l2s_gym.plugins`` entry-point
    groups (once), then register a Gymnasium id for the tasks they added.

    l2s-gym's own learners arrive this way (``builtin_learners = "l2s_gym.agents"``), so
    a package that declares ``[project.entry-points."l2s_gym.plugins"]`` gets its tasks,
    predictors and learners registered without any flag (its tasks' Gymnasium ids once
    this runs; declare the module under ``l2s_gym.tasks`` too for ``import l2s_gym`` to
    register them). Calling it again is a no-op. Raises ``PluginError`` (one line) for an
    ``l2s_gym.plugins`` module that fails to import, a name it takes from another origin,
    or a Gymnasium id another task has.
    """
    load_task_plugins()
    _import_entry_points()
    _register_envs_or_plugin_error()


def learner_names() -> list[str]:
    """The registered learners, the entry-point plugins' included (loaded on first call).

    Registers no Gymnasium id (config validation asks this)."""
    _import_entry_points()
    return sorted(registry.LEARNERS)


def _same_file(module: Any, real: str, basename: str) -> bool:
    file = getattr(module, "__file__", None)
    return (
        isinstance(file, str)
        and os.path.basename(file) == basename
        and os.path.realpath(file) == real
    )


def _module_from_file(path: Path) -> ModuleType | None:
    """The module already imported from ``path`` (its real path), under any name."""
    real, basename = os.path.realpath(path), path.name
    module = sys.modules.get(path.stem)
    if _same_file(module, real, basename):
        return module
    for module in list(sys.modules.values()):
        if _same_file(module, real, basename):
            return module
    return None


def _import_file(spec: str, path: Path) -> Any:
    """Import the ``.py`` file ``path`` under its stem (so dataclasses and pickling find it),
    unless a module was already imported from it (an installed plugin: that one is kept)."""
    if not path.is_file():
        raise PluginError(f"--import {spec}: no such file")
    already = _module_from_file(path)
    if already is not None:
        return already
    name = path.stem
    file_spec = importlib.util.spec_from_file_location(name, path.resolve())
    if file_spec is None or file_spec.loader is None:
        raise PluginError(f"--import {spec}: cannot import this file")
    module = importlib.util.module_from_spec(file_spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module  # dataclasses look their module up by name
    try:
        file_spec.loader.exec_module(module)
    except BaseException:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        raise
    return module


def import_module_or_file(spec: str) -> Any:
    """Import a dotted module (``my_pkg.stoppers``) or a ``.py`` file; its import registers.

    A file is imported under its stem as the module name (so dataclasses and pickling
    can find it), unless a module was already imported from that file (e.g. the installed
    plugin it is): then that module is returned and nothing registers twice. Registers a
    Gymnasium id for the tasks it added. Raises ``PluginError`` with one line saying what
    went wrong (a name already taken by another origin included).
    """
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.is_file():
            module = _import_file(spec, path)
        else:
            module = importlib.import_module(spec)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"--import {spec}: {type(exc).__name__}: {exc}") from exc
    if spec not in IMPORTED:
        IMPORTED.append(spec)
    _register_envs_or_plugin_error()
    return module


# The old spelling, ``l2s_gym.registry.load_plugins()`` and
# ``l2s_gym.registry.import_module_or_file(...)``, for scripts written before this module
# (benchmarks/). The registry imports nothing of the package; importing ``l2s_gym``
# imports this module (through ``l2s_gym.envs``), so the names are there by then.
registry.load_plugins = load_plugins  # type: ignore[attr-defined]
registry.import_module_or_file = import_module_or_file  # type: ignore[attr-defined]

__all__ = [
    "ENTRY_POINT",
    "IMPORTED",
    "PLUGIN_GROUP",
    "TASK_PLUGIN_GROUP",
    "VECTOR_ENTRY_POINT",
    "PluginError",
    "PluginWarning",
    "env_ids",
    "import_module_or_file",
    "learner_names",
    "load_plugins",
    "load_task_plugins",
    "register_envs",
]

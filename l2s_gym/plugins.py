"""Where components come from besides the built-in ones, and their Gymnasium ids.

- ``load_plugins`` imports every module of the ``l2s_gym.plugins`` entry-point group, once
  (l2s-gym's own learners arrive this way: ``builtin_learners = "l2s_gym.agents"``), then
  registers a Gymnasium id for each task that declares one (``register_envs``).
- ``import_module_or_file`` imports a user's module or ``.py`` file, which is what
  ``l2s --import`` does, and registers the ids of the tasks it added.
- ``learner_names`` is what config validation asks: the learners known once the plugins
  are loaded. It registers no Gymnasium id: reading a config has no side effect beyond
  the plugins' own registrations.

The name tables themselves live in ``l2s_gym.registry``, which imports nothing of the
package; the env classes live in ``l2s_gym.envs``, named here by their entry-point strings
only (nothing here imports them).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import gymnasium

from l2s_gym import registry

PLUGIN_GROUP = "l2s_gym.plugins"
"""Entry-point group: each entry names a module whose import registers components."""
ENTRY_POINT = "l2s_gym.envs.stop_env:StopEnv"
VECTOR_ENTRY_POINT = "l2s_gym.envs.stop_env:StopVectorEnv"

IMPORTED: list[str] = []
"""What ``import_module_or_file`` imported, in order (a cluster's workers import it too)."""
_plugins_loaded = False


class PluginError(RuntimeError):
    """A plugin module (entry point or ``--import``) could not be imported."""


def register_envs() -> list[str]:
    """Register an env id for each task that declares one; idempotent.

    Every task in ``l2s_gym.registry.TASKS`` whose class sets ``env_id`` gets that id with
    ``StopEnv`` as ``entry_point`` and ``StopVectorEnv`` as ``vector_entry_point`` (the
    task name bound as the ``task`` kwarg). Returns the ids this call registered (ids
    already present are left alone).
    """
    added = []
    for name, entry in sorted(registry.TASKS.items()):
        env_id = getattr(entry.cls, "env_id", "")
        if not env_id or env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point=ENTRY_POINT,
            vector_entry_point=VECTOR_ENTRY_POINT,
            kwargs={"task": name},
        )
        added.append(env_id)
    return added


def env_ids() -> dict[str, str]:
    """``{task name: env id}`` for every registered task that declares an env id."""
    return {
        name: entry.cls.env_id
        for name, entry in sorted(registry.TASKS.items())
        if getattr(entry.cls, "env_id", "")
    }


def _import_entry_points() -> None:
    """Import every module of the entry-point group, once; nothing else."""
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


def load_plugins() -> None:
    """Import every module of the ``l2s_gym.plugins`` entry-point group (once), then
    register a Gymnasium id for the tasks they added.

    l2s-gym's own learners arrive this way (``builtin_learners = "l2s_gym.agents"``), so
    a package that declares ``[project.entry-points."l2s_gym.plugins"]`` gets its tasks,
    predictors and learners registered without any flag.
    """
    _import_entry_points()
    register_envs()


def learner_names() -> list[str]:
    """The registered learners, the entry-point plugins' included (loaded on first call).

    Registers no Gymnasium id (config validation asks this)."""
    _import_entry_points()
    return sorted(registry.LEARNERS)


def _import_file(spec: str, path: Path) -> Any:
    """Import the ``.py`` file ``path`` under its stem (so dataclasses and pickling find it)."""
    if not path.is_file():
        raise PluginError(f"--import {spec}: no such file")
    name = path.stem
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
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
    return module


def import_module_or_file(spec: str) -> Any:
    """Import a dotted module (``my_pkg.stoppers``) or a ``.py`` file; its import registers.

    A file is imported under its stem as the module name (so dataclasses and pickling
    can find it). Registers a Gymnasium id for the tasks it added. Raises ``PluginError``
    with one line saying what went wrong.
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
    register_envs()
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
    "VECTOR_ENTRY_POINT",
    "PluginError",
    "env_ids",
    "import_module_or_file",
    "learner_names",
    "load_plugins",
    "register_envs",
]

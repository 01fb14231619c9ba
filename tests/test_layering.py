"""The package's layering, read from the source (nothing is imported): the library never
imports its learners (they arrive through the ``l2s_gym.plugins`` entry points), the
imports between the package's modules have no cycle (at module level, nor counting the
imports inside functions), the registry imports nothing of the package, and reading a
config reaches neither the environments nor the learners."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_modules() -> dict[str, Path]:
    """Dotted name -> file, for ``l2s_gym/`` and ``agents/`` (installed as ``l2s_gym.agents``)."""
    modules: dict[str, Path] = {}
    for folder, prefix in ((ROOT / "l2s_gym", "l2s_gym"), (ROOT / "agents", "l2s_gym.agents")):
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([prefix, *parts])] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(name: str, path: Path, everywhere: bool) -> set[str]:
    """Dotted names ``name``'s module imports: at module level only (what runs on import),
    or ``everywhere`` (function bodies too). ``from pkg import x`` yields ``pkg.x`` (a
    submodule, or an attribute of ``pkg``); relative imports are resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
            elif isinstance(node, (ast.If, ast.Try, ast.With)) or (
                everywhere and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            ):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])
            elif everywhere and isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(tree.body)
    return found


def import_graph(everywhere: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level, or ``everywhere`` (function
    bodies too): the module itself, not its parent packages (Python has those
    half-initialised already)."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_names(name, path, everywhere=everywhere):
            # `from pkg import x`: x is a submodule, or else an attribute of pkg.
            target = imported if imported in modules else imported.rpartition(".")[0]
            if target in modules and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_library_never_imports_the_learners() -> None:
    offenders = []
    for name, path in package_modules().items():
        if name.startswith("l2s_gym.agents"):
            continue
        for imported in imported_names(name, path, everywhere=True):
            top = imported.split(".")
            if top[0] == "agents" or top[:2] == ["l2s_gym", "agents"]:
                offenders.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not offenders, offenders


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_no_import_cycles_counting_imports_inside_functions() -> None:
    """A function-level import that closes a cycle only hides it: none may."""
    cycle = find_cycle(import_graph(everywhere=True))
    assert cycle is None, " -> ".join(cycle or [])


def test_the_registry_imports_nothing_of_the_package() -> None:
    assert import_graph(everywhere=True)["l2s_gym.registry"] == set()


def test_reading_a_config_reaches_neither_the_envs_nor_the_learners() -> None:
    """Validating a config may load the plugins (``l2s_gym.plugins``: what makes a user's
    learners known) but imports no env module and no learner of its own accord."""
    graph = import_graph(everywhere=True)
    reached = reachable(graph, "l2s_gym.config")
    assert "l2s_gym.plugins" in reached
    offenders = sorted(m for m in reached if m.startswith(("l2s_gym.envs", "l2s_gym.agents")))
    assert not offenders, offenders


def test_the_cycle_finder_finds_a_cycle_and_the_walker_sees_relative_imports(tmp_path) -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert reachable({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}, "a") == {"b", "c"}
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from ..up import thing\n"
        "if TYPE_CHECKING:\n    import typed_only\n"
        "def f():\n    import lazy\n"
    )
    names = imported_names("pkg.sub.m", module, everywhere=False)
    assert {"pkg.sub.sibling", "pkg.up.thing"} <= names
    assert "typed_only" not in names and "lazy" not in names
    assert "lazy" in imported_names("pkg.sub.m", module, everywhere=True)

"""Import contracts (issue 12.2), checked from the source: the core never imports a plugin, and
the core's modules import each other without cycles (at module level, where a cycle breaks
imports in an order-dependent way). That plugins import only ``alignbench``'s public names is
``tests/test_plugins.py::test_builtin_plugins_import_only_the_public_api``."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "alignbench"


def _modules() -> dict[str, Path]:
    found = {}
    for path in CORE.rglob("*.py"):
        parts = path.relative_to(CORE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(tree: ast.AST, module_level: bool) -> list[str]:
    """Absolute module names imported (``from alignbench import x`` → ``alignbench.x``)."""
    nodes = []
    if module_level:
        for node in tree.body:  # type: ignore[attr-defined]
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue  # imports for type checkers only never run
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            nodes += list(ast.walk(node))
    else:
        nodes = list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_the_core_never_imports_a_plugin() -> None:
    """Nothing under alignbench/ imports plugins/ (or its installed name), even in a function."""
    offenders = [
        f"{name} imports {imported}"
        for name, path in _modules().items()
        for imported in _imports(ast.parse(path.read_text()), module_level=False)
        if imported.split(".")[0] in ("plugins", "alignbench_plugins")
    ]
    assert offenders == []


def test_core_modules_import_each_other_without_cycles() -> None:
    """The module-level import graph of alignbench/ (the package __init__ aside) is acyclic."""
    modules = _modules()
    graph = {
        name: {
            imported
            for imported in _imports(ast.parse(path.read_text()), module_level=True)
            if imported in modules and imported not in ("alignbench", name)
        }
        for name, path in modules.items()
    }
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], " ; ".join(" → ".join(c) for c in cycles)


def test_every_core_package_is_installed() -> None:
    """Each folder of alignbench/ with an __init__.py is listed in pyproject's packages: a
    non-editable install (a wheel) would otherwise leave it out and its imports would fail."""
    import tomllib

    pyproject = tomllib.loads((CORE.parent / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = {
        ".".join(path.parent.relative_to(CORE.parent).parts)
        for path in CORE.rglob("__init__.py")
        if "__pycache__" not in path.parts
    }
    assert found - listed == set()

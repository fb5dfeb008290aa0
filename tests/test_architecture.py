"""The layout docs/architecture.md describes, held: no import cycles, and a pytest-free core."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_memguard"
# The glue: the only modules that may import pytest (docs/architecture.md).
GLUE = {"plugin", "session", "repetition", "isolate"}


def imports() -> dict[str, set[str]]:
    """Each module's imports, including those inside functions: package modules by name, and
    "pytest" for pytest or its internals."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level == 1:
                    names.update([module.split(".")[0]] if module else (a.name for a in node.names))
                elif module.startswith("pytest_memguard."):
                    names.add(module.split(".")[1])
                elif module.split(".")[0] in ("pytest", "_pytest"):
                    names.add("pytest")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    top, _, rest = alias.name.partition(".")
                    if top == "pytest_memguard" and rest:
                        names.add(rest.split(".")[0])
                    elif top in ("pytest", "_pytest"):
                        names.add("pytest")
        graph[path.stem] = names - {path.stem}
    return graph


def test_the_package_has_no_import_cycle() -> None:
    graph = imports()
    assert {"plugin", "heap", "census", "fallback", "measurement"} <= set(graph)

    def reaches(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for name in graph.get(todo.pop(), set()):
                if name not in seen:
                    seen.add(name)
                    todo.append(name)
        return seen

    cycles = sorted((a, b) for a in graph for b in graph[a] if a in reaches(b))
    assert cycles == []


def test_only_the_glue_imports_pytest() -> None:
    users = {module for module, names in imports().items() if "pytest" in names}
    assert users == GLUE

"""The package's module graph: every module imports, no two modules import each other (directly
or around a loop, at module level or inside a function), and no module reaches for another's
private names. A cycle hidden in a function is still a cycle: it decides which module may be
read first, and it breaks as soon as someone moves the import to the top."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import mlic

PACKAGE = Path(mlic.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts
}


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module named, names taken from it, line) for every `import mlic...` and
    `from mlic... import ...` in the file, wherever it stands (module level, function,
    `if TYPE_CHECKING:`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "mlic":
                found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mlic":
                    found.append((alias.name, [], node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    """module -> the mlic modules it imports (a name that is a submodule counts as that one)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges = set()
        for target, names, _line in _imports(path):
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            edges.update(subs)
            if len(subs) < len(names) or not names:
                edges.add(target)
        # A module's own packages are imported before it in any case: `import mlic` inside a
        # function of mlic.runrecord (for mlic.__version__) is no edge.
        graph[module] = {e for e in edges if not f"{module}.".startswith(f"{e}.")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_walk_sees_the_package():
    graph = _graph()
    assert {"mlic.engine", "mlic.fit", "mlic.runstate", "mlic.cli"} <= set(graph)
    assert "mlic.engine" in graph["mlic.fit"]  # an edge the walk must find
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_modules():
    assert _cycles(_graph()) == []


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {target}.{name}"
        for path in MODULES.values()
        for target, names, line in _imports(path)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.endswith("__main__")))
def test_every_module_imports(module):
    importlib.import_module(module)

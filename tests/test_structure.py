"""Structure rules of src/: no import circle, no module over the size limit.

The import graph is built with :mod:`ast` from the source files, without importing anything, so it sees
every import statement wherever it is: at module level, inside functions (lazy imports), under
``if TYPE_CHECKING:`` and inside ``try``. An edge goes from a module to the module an import names:

* ``import a.b.c`` and ``from a.b import c`` → ``a.b.c`` when that is a module (or package) of src/, else
  the nearest enclosing one (``from a.b import name`` → ``a.b``);
* relative imports are resolved against the importing module's package (``__init__`` files are their
  package), as Python does.

Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``; like import-linter and pydeps,
the graph does not add those implicit edges, because they are not a dependency the code chose: a package's
``__init__`` that imports its own submodules would otherwise form a "circle" with each of them. A circle
made of the explicit edges is one that reordering statements cannot remove, and it is what this test
forbids. Imports of modules outside src/ (torch, lightning, ...) are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 450
SIZE_EXCEPTIONS = {"heinsen_routing/_fused.py"}  # the fused autograd Function, kept in one piece on purpose


def _modules(src: Path) -> dict[str, Path]:
    """Dotted module name → file, for every .py under ``src`` (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its nearest enclosing module of src/, or None when it is not ours."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module → the modules of ``src`` it imports (see the module docstring for what counts)."""
    modules = _modules(src)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")
                    if node.level > 1:
                        base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # ``from pkg import sub`` imports the submodule pkg.sub when there is one, else names of pkg
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted, as a list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (~150)
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest circle through the component's first module, for the error message."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return component


def test_graph_builder_sees_lazy_relative_and_type_checking_imports(tmp_path):
    """The graph builder itself: a circle through a lazy, a TYPE_CHECKING and a relative import is found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import X\n"
    )
    (pkg / "c.py").write_text("import pkg.a\nimport os\n")
    graph = import_graph(tmp_path)
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.c"}
    assert graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.sub"] == {"pkg.sub.b"}
    assert find_cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_src_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 50, f"expected the modules of src/, found {len(graph)} under {SRC}"
    cycles = find_cycles(graph)
    shown = "\n".join(" -> ".join(_one_cycle(graph, c)) + f"   (component: {', '.join(c)})" for c in cycles)
    assert not cycles, f"{len(cycles)} import circle(s) in src/:\n{shown}"


@pytest.mark.parametrize("package", ["heinsen_routing", "heinsen_zoo"])
def test_modules_stay_under_the_size_limit(package):
    too_big = {}
    for path in sorted((SRC / package).rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        n_lines = len(path.read_text(encoding="utf-8").splitlines())
        if rel not in SIZE_EXCEPTIONS and n_lines > MAX_LINES:
            too_big[rel] = n_lines
    assert not too_big, f"modules over {MAX_LINES} lines (split them by concern): {too_big}"

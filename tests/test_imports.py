"""No import circles inside edgetl/: every `import edgetl...` of every module, at its top or inside a function (a
function-level import is how a circle hides), read from the source with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgetl"


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the edgetl modules it imports}. `from edgetl import __version__` is an import of the package's
    __init__, which every submodule's import runs anyway, so the package itself is left out as a target."""
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names}  # `from edgetl.export import onnx`
        graph[name] = {m for m in found if m in modules and m not in (name, package.name)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_edgetl_has_no_import_circle():
    graph = import_graph()
    assert "edgetl.pipeline" in graph and "edgetl.fsutil" in graph["edgetl.pipeline"]  # the graph is read at all
    found = cycles(graph)
    assert not found, "import circles: " + "; ".join(
        " -> ".join(f"{m} ({', '.join(sorted(graph[m] & set(c)))})" for m in c) for c in found)


@pytest.mark.parametrize(("sources", "expected"), [
    ({"a.py": "from pkg import b\n", "b.py": "def f():\n    from pkg.a import x\n"}, [["pkg.a", "pkg.b"]]),
    ({"a.py": "from . import b\n", "b.py": "import pkg.c\n", "c.py": "from .a import y\n"}, [["pkg.a", "pkg.b", "pkg.c"]]),
    ({"a.py": "from pkg import b\n", "b.py": "from pkg import __version__\n", "__init__.py": "from pkg import a\n"}, []),
])
def test_the_circle_finder_finds_circles_hidden_in_functions_and_relative_imports(tmp_path, sources, expected):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, text in sources.items():
        (package / name).write_text(text)
    assert cycles(import_graph(package)) == expected

"""No module-level import cycle inside ``buddy``.

Each module of ``buddy/`` is parsed with :mod:`ast` (nothing is imported); an edge goes from
a module to every ``buddy`` module it imports at module level: ``import buddy.x``,
``from buddy.x import y`` (to ``buddy.x.y`` when ``y`` is a submodule, else to ``buddy.x``)
and relative imports alike. Importing ``buddy.x.y`` also runs ``buddy/x/__init__.py`` first,
so the edge to a submodule brings one to each package above it, except the packages the
importing module itself lives in (they are loaded before it). Imports inside functions and
under ``if TYPE_CHECKING:`` run after every module is loaded, so they are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "buddy"


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name → source file, for every module of ``package`` under ``root``."""
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements run when a module is loaded: at top level and inside
    ``if``/``try``/``with`` blocks, but not under ``if TYPE_CHECKING:`` nor in a
    function or class body."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)


def imports_of(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The modules of ``modules`` that module ``name`` (source ``path``) imports at module level."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in _module_level(ast.parse(path.read_text(encoding="utf-8"), str(path)).body):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in modules)
            continue
        base = node.module or ""
        if node.level:
            parts = name.split(".") if is_package else name.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, base] if base else parts)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in modules:
                out.add(sub)
            elif base in modules:
                out.add(base)
    out.discard(name)
    return out


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module → the modules of the package it imports at module level."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own = _packages_above(name) | {name}  # already loading when ``name`` runs
        edges = imports_of(name, path, modules)
        for target in list(edges):
            edges |= {p for p in _packages_above(target) if p in modules} - own
        graph[name] = edges - own
    return graph


def _packages_above(name: str) -> set[str]:
    """``a.b.c`` → ``{"a", "a.b"}``."""
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as ``[a, b, …, a]``, or None when it has none (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        state[root] = 1
        stack = [iter(sorted(graph.get(root, ())))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                state[path.pop()] = 2
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_imports_of_resolves_submodules_and_skips_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from pkg.other import thing\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.sub import more\n"
        "def f():\n"
        "    from pkg import late\n"
    )
    (pkg / "sub" / "more.py").write_text("")
    (pkg / "other.py").write_text("from pkg.sub import leaf\nthing = 1\n")
    (pkg / "late.py").write_text("")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub"] == {"pkg.sub.leaf"}
    assert graph["pkg.sub.leaf"] == {"pkg.other"}
    assert graph["pkg.other"] == {"pkg.sub", "pkg.sub.leaf"}
    assert find_cycle(graph) == ["pkg.other", "pkg.sub", "pkg.sub.leaf", "pkg.other"]


def test_no_import_cycle_in_buddy() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle or [])

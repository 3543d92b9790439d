"""The package's shape, checked: no import circles and no reaching into another module's privates.

Why a test: both kinds of coupling crept in once (``fast_decoder`` <-> ``mask_decoder``, the
generator importing ``_source_extent``) and each made a refactor touch files it should not have.
The check reads the source with ``ast`` (nothing is imported or run), so it is cheap and exact.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "segany"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    """Absolute name of what ``from X import ...`` refers to, or None for other packages."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    return name if name == PACKAGE or name.startswith(PACKAGE + ".") else None


def _imports(module: str, top_level_only: bool) -> list[tuple[str, list[str], int]]:
    """(target module, imported names, line) for each intra-package import of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, path.name == "__init__.py")
            if target is None:
                continue
            names = [a.name for a in node.names]
            # ``from segany.modeling import build`` imports a submodule, not a name
            for name in names:
                if f"{target}.{name}" in MODULES:
                    found.append((f"{target}.{name}", [], node.lineno))
            found.append((target, [n for n in names if f"{target}.{n}" not in MODULES], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.append((alias.name, [], node.lineno))
    return found


def test_no_private_names_imported_across_modules() -> None:
    offenders = []
    for module in MODULES:
        for target, names, line in _imports(module, top_level_only=False):
            if target == module:
                continue
            for name in names:
                if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                    offenders.append(f"{MODULES[module].relative_to(SRC)}:{line} imports {target}.{name}")
    assert not offenders, "private names imported from another module:\n" + "\n".join(offenders)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_between_modules() -> None:
    """Module-level imports between leaf modules form no cycle.

    Package ``__init__`` files re-export their children, so an edge *into* a package facade is
    followed to the facade only when the facade itself is what is imported; edges out of a
    facade are the facade's own business and are left out (``segany/__init__`` importing
    ``predictor`` which imports ``segany.masks`` is not a circle). Imports inside functions
    count too: a lazy import that papers over a circle is still a circle.
    """
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        if module in packages:
            continue
        edges = set()
        for target, _names, _line in _imports(module, top_level_only=False):
            if target != module and target in MODULES and target not in packages:
                edges.add(target)
        graph[module] = edges
    cycles = _cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_checker_sees_a_private_import() -> None:
    """The checker is not vacuous: it resolves relative imports and finds real edges."""
    edges = {t for t, _n, _l in _imports("segany.predictor", top_level_only=False)}
    assert any(t.startswith("segany.") for t in edges)
    fake = ast.parse("from ..masks import _short\n").body[0]
    assert isinstance(fake, ast.ImportFrom)
    assert _resolve("segany.eval.clicks", fake, is_package=False) == "segany.masks"

"""The import structure of `pkpd_jax`: no import cycles between its modules, and no module importing
a private (`_name`) name from a module of another package.

The graph is built from the source (``ast``) of every module `pkgutil.walk_packages` finds:
module-level ``import pkpd_jax.x`` / ``from .x import y`` / ``from ..x import y`` statements
(also inside module-level ``if``/``try`` blocks, but not under ``if TYPE_CHECKING:``, which never
runs), not the imports inside functions (deferred until called). ``from P import m`` with ``m`` a
submodule of ``P`` is an edge to ``m``; an edge also goes to the packages a target lives in
(their ``__init__`` runs first), except the importer's own packages (a package importing its
submodules, which import their siblings, is how packages are built, not a cycle).

The private-name check covers every import statement, in functions too.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from functools import cache
from pathlib import Path

import pkpd_jax


ROOT = "pkpd_jax"


@cache
def _modules() -> dict[str, tuple[Path, bool]]:
    """``{module name: (source path, is a package)}`` of every module of `pkpd_jax`."""
    found = {ROOT: (Path(pkpd_jax.__file__), True)}
    for info in pkgutil.walk_packages(pkpd_jax.__path__, ROOT + "."):
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            found[info.name] = (Path(spec.origin), info.ispkg)
    return found


def _package(module: str) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to the package itself)."""
    return module if _modules()[module][1] else module.rpartition(".")[0]


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package(module).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt]):
    """Import statements that run when the module is imported."""
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


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """``(target module, imported name or None)`` of the `pkpd_jax` modules an import names."""
    mods = _modules()
    out = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                out.append((alias.name, None))
        return out
    base = _resolve(module, node)
    if not (base == ROOT or base.startswith(ROOT + ".")):
        return out
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append((sub, None) if sub in mods else (base, alias.name))
    return out


@cache
def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, (path, _) in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        own = set(_ancestors(module))
        for node in _module_level(tree.body):
            for target, _name in _targets(module, node):
                for t in [*_ancestors(target), target]:
                    if t in mods and t != module and t not in own:
                        graph[module].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, set(c)) for c in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return sorted(component)


def _private_imports() -> list[str]:
    mods = _modules()
    bad = []
    for module, (path, _) in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, name in _targets(module, node):
                if name is None or not name.startswith("_") or name.startswith("__"):
                    continue
                if target in mods and _package(target) != _package(module):
                    bad.append(f"{module}:{node.lineno} imports {name} from {target}")
    return bad


def test_the_graph_sees_the_package():
    graph = _graph()
    assert "pkpd_jax.inference.samplers" in graph and "pkpd_jax.report.fit_plots" in graph
    assert "pkpd_jax.inference.fitdir" in graph["pkpd_jax.report.fit_plots"]  # report reads the fit
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_imports_across_packages():
    bad = _private_imports()
    assert not bad, "private names imported from another package:\n" + "\n".join(bad)


def test_inference_does_not_import_the_report_layer():
    graph = _graph()
    for module, targets in graph.items():
        if module.startswith("pkpd_jax.inference"):
            assert not any(t.startswith("pkpd_jax.report") for t in targets), (module, targets)

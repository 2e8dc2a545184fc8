"""The shape of the house: no import circle inside deepgrad_core, and arrows between the rooms point one way
(server -> core, client -> nothing of ours, core -> neither). Read from the source, so lazy imports inside
functions count too; imports only for type checkers (``if TYPE_CHECKING:``) do not."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOMS = {"deepgrad_core": REPO / "deepgrad_core", "deepgrad_server": REPO / "server" / "deepgrad_server",
         "deepgrad_client": REPO / "client" / "deepgrad_client"}


def _modules(package: str) -> dict[str, Path]:
    root = ROOMS[package]
    found = {}
    for path in root.rglob("*.py"):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Every module of ours ``path`` imports at run time (resolved to the module, not its package)."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in out if name.split(".")[0] in ROOMS}


def _graph() -> dict[str, set[str]]:
    modules = {name: path for package in ROOMS for name, path in _modules(package).items()}
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                connect(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_circle_in_deepgrad_core() -> None:
    graph = {m: {d for d in deps if d.startswith("deepgrad_core")} for m, deps in _graph().items()
             if m.startswith("deepgrad_core")}
    assert len(graph) > 30 and graph["deepgrad_core.experiment"]  # the walk found the modules and their imports
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_arrows_between_rooms_point_one_way() -> None:
    wrong = sorted((m, d) for m, deps in _graph().items() for d in deps
                   if (m.startswith("deepgrad_core") and not d.startswith("deepgrad_core"))
                   or (m.startswith("deepgrad_client") and not d.startswith("deepgrad_client"))
                   or (m.startswith("deepgrad_server") and d.startswith("deepgrad_client")))
    assert wrong == []

"""Data flows one way through phiexport: no module imports, directly or through others, a module that imports it
(imports inside functions count too: a cycle there is a design knot even when Python tolerates it)."""

import ast
from pathlib import Path

import phiexport

PACKAGE = Path(phiexport.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {module for module in imported if module in modules and module != name}
    return graph


def cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start → … → start, if there is one (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "phiexport.targets.npu.layers" in graph["phiexport.targets.npu.build"]  # the graph sees real imports
    cycles = [cycle for name in sorted(graph) if (cycle := cycle_from(graph, name))]
    assert not cycles, " ; ".join(" → ".join(cycle) for cycle in cycles[:3])

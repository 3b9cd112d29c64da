"""The package's import graph, read from the source with ast (imports inside functions count):
no cycle among the modules of fedcls/ and strategies/, and every import points down the layers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Layers, lowest first: a module may import its own layer's modules and lower layers' only.
LAYERS = {
    "fedcls": 0, "fedcls.errors": 0, "fedcls.caching": 0, "fedcls.schema": 0,
    "fedcls.data": 1, "fedcls.outputs": 1,
    "fedcls.algorithms": 2, "strategies": 2,
    "fedcls.config": 3, "fedcls.checks": 3,  # composes and validates against every registry below
    "fedcls.apps": 4,
    "fedcls.engine": 5,
    "fedcls.studies": 6, "fedcls.deploy": 6,
}
CLI_LAYER = 7  # fedcls's top-level entry points (simulate, sweep, report, help, cli, ...)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for package in ("fedcls", "strategies"):
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `module` imports, anywhere in its file (a name imported from a
    package counts as its submodule when it is one)."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, path.name == "__init__.py")
            names = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known] or [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    return {m: imports_of(m, p, set(files)) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = [stack.pop()]
                    while component[-1] != node:
                        component.append(stack.pop())
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return found


def layer_of(module: str) -> int:
    name = module
    while name:
        if name in LAYERS:
            return LAYERS[name] if name != "fedcls" or module == "fedcls" else CLI_LAYER
        name = name.rpartition(".")[0]
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def test_the_cycle_finder_finds_a_cycle_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_inside_functions_count(tmp_path):
    for package in ("fedcls", "strategies"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "fedcls" / "low.py").write_text("def f():\n    from fedcls import high\n")
    (tmp_path / "fedcls" / "high.py").write_text("from fedcls.low import f\n")
    assert cycles(import_graph(tmp_path)) == [["fedcls.high", "fedcls.low"]]


def test_no_import_cycle_in_the_package():
    assert cycles(import_graph()) == []


def test_every_import_points_down_the_layers():
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in import_graph().items() for t in sorted(targets)
              if layer_of(t) > layer_of(m)]
    assert upward == []

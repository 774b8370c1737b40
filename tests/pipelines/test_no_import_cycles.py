"""No import cycle between our modules, and imports between the packages flow one way (DESIGN.md's layout).

Every `import` and `from … import` is read from the source (function-level and TYPE_CHECKING ones
too: a cycle hidden in a function is still a cycle), so nothing is imported to check it. Imports
by string (`importlib.import_module(name)`, the CLI's lazy handlers) are not seen. bench/ and
tests/ are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("adir_storage", "adir_ops", "index_builder", "cluster", "pipelines")
# What each package may import: pipelines → cluster → index_builder → adir_ops, with adir_storage
# below index_builder, cluster and pipelines; adir_ops (the method) and adir_storage import none of ours.
MAY_IMPORT = {
    "pipelines": {"cluster", "index_builder", "adir_ops", "adir_storage"},
    "cluster": {"index_builder", "adir_ops", "adir_storage"},
    "index_builder": {"adir_ops", "adir_storage"},
    "adir_ops": set(),
    "adir_storage": set(),
}
# Known violations, (importing module, imported module), each to be fixed where it is. An entry here
# must carry "# TODO(issue 10)" and the file:line it stands for. None today.
ALLOWED_CYCLE_EDGES: set[tuple[str, str]] = set()
ALLOWED_PACKAGE_EDGES: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages (a package is its __init__)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that importing `name` runs: itself, or the nearest package above it."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports: first line of such an import}, over our packages only."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                # `from package import submodule` imports the submodule; `from module import name`, the module.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != module:
                    edges.setdefault(resolved, node.lineno)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _where(graph, module: str, target: str) -> str:
    path = _modules()[module].relative_to(ROOT)
    return f"{path}:{graph[module][target]} ({module} -> {target})"


def test_the_graph_sees_function_level_and_package_imports():
    graph = import_graph()
    assert "pipelines.evaluation" in graph["pipelines.evaluate"]
    assert "pipelines.evaluation.arms" in graph["pipelines.evaluation.views"]
    # metric_names imports adir_ops.metrics.quality inside a method
    assert "adir_ops.metrics.quality" in graph["pipelines.evaluation.config"]


def test_the_cycle_finder_finds_a_cycle_through_a_hand_graph():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_module_imports_itself_back():
    graph = import_graph()
    pruned = {m: {t: n for t, n in edges.items() if (m, t) not in ALLOWED_CYCLE_EDGES} for m, edges in graph.items()}
    found = cycles(pruned)
    detail = []
    for component in found:
        members = set(component)
        detail += [_where(graph, m, t) for m in component for t in graph[m] if t in members]
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_packages_import_one_way():
    graph = import_graph()
    wrong = [
        _where(graph, module, target)
        for module, edges in sorted(graph.items())
        for target in sorted(edges)
        if (src := module.split(".")[0]) != (dst := target.split(".")[0])
        and dst not in MAY_IMPORT[src]
        and (module, target) not in ALLOWED_PACKAGE_EDGES
    ]
    assert not wrong, (
        "imports against pipelines → cluster → index_builder → adir_ops (adir_storage below):\n" + "\n".join(wrong)
    )


def test_the_evaluation_package_imports_in_its_declared_order():
    """config, csv_cells → arms → run_folder, statistics, views → metrics → evaluation → tables → report_tables → report → outputs."""
    order = [
        "config",
        "csv_cells",
        "arms",
        "run_folder",
        "statistics",
        "views",
        "metrics",
        "evaluation",
        "tables",
        "report_tables",
        "report",
        "outputs",
    ]
    rank = {f"pipelines.evaluation.{name}": i for i, name in enumerate(order)}
    graph = import_graph()
    assert set(rank) | {"pipelines.evaluation"} == {m for m in graph if m.startswith("pipelines.evaluation")}
    upward = [
        _where(graph, module, target)
        for module in rank
        for target in graph[module]
        if target.startswith("pipelines.evaluation") and (target not in rank or rank[target] >= rank[module])
    ]
    assert not upward, "an evaluation module imports one at or above its own level:\n" + "\n".join(upward)


def test_bench_never_imports_tests_and_the_packages_import_neither():
    """bench/ runs from a checkout without the suite's fixtures; the packages ship in a wheel without either."""
    wrong = []
    for folder, forbidden in (("bench", {"tests"}), *((p, {"tests", "bench"}) for p in PACKAGES)):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and not node.level
                    else []
                )
                wrong += [
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {n}"
                    for n in names
                    if n.split(".")[0] in forbidden
                ]
    assert not wrong, "\n".join(wrong)

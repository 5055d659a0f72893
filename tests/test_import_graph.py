"""The product's imports run one way (README "Layout"): genas.core <- genas <- backbones <- {detection,
segmentation, robustness} <- {report, suite}, with no cycle anywhere. Read with ``ast`` from the source files, lazy
(function-level) imports included, so a violation fails here before anyone imports anything."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

from conftest import REPO

PACKAGES = ("genas", "backbones", "detection", "segmentation", "robustness", "report", "suite")
# Layer of each top-level part; a module may import its own layer and the layers below it.
LAYERS = {"genas.core": 0, "genas": 1, "backbones": 2, "detection": 3, "segmentation": 3, "robustness": 3,
          "report": 4, "suite": 4}
# suite runs the task command lines in subprocesses: it may import everything below it, and report nothing of it.
# What the report may import from the project: it reads result files. backbones is allowed for one job: the
# size (params / MACs) of a registered timm model that no result file states.
REPORT_ALLOWED = ("genas.core", "genas.plots", "genas.cost", "backbones", "report")
TASK_FRAMEWORKS = ("detectron2", "mmseg", "mmengine", "mmcv")
LEAVES = ("genas.spaces.darts.genotype", "genas.core.errors")  # import nothing of the project


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def product_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imported_names(path: Path, this: str) -> set[str]:
    """Absolute names imported anywhere in the file: ``import a.b`` gives ``a.b``; ``from a import b`` gives
    ``a.b`` (a submodule or an attribute of ``a``: :func:`project_targets` tells them apart)."""
    names: set[str] = set()
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def project_targets(names: set[str], modules: dict[str, Path]) -> set[str]:
    """The most specific project module each imported name refers to (``a.b`` is module ``a.b`` when it is
    one, else an attribute of module ``a``)."""
    out = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def part_of(module: str) -> str:
    return "genas.core" if module == "genas.core" or module.startswith("genas.core.") else module.split(".")[0]


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    modules = product_modules()
    g = nx.DiGraph()
    for name, path in modules.items():
        g.add_node(name, external=imported_names(path, name))
        for target in project_targets(g.nodes[name]["external"], modules) - {name}:
            g.add_edge(name, target)
    return g


def test_the_graph_covers_the_product(graph):
    for module in ("genas.search", "genas.core.io", "genas.spaces.darts.network", "backbones.darts_net",
                   "robustness.eval", "report.table", "detection.train_net", "segmentation.runner"):
        assert module in graph, module
    assert graph.has_edge("genas.search", "genas.core.config")  # edges are found at all


def test_no_import_cycle(graph):
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_imports_follow_the_arrows(graph):
    wrong = []
    for source, target in graph.edges:
        src, dst = part_of(source), part_of(target)
        if LAYERS[dst] > LAYERS[src] or (LAYERS[dst] == LAYERS[src] and src != dst):
            wrong.append(f"{source} -> {target}")
        if src == "report" and not any(target == a or target.startswith(a + ".") for a in REPORT_ALLOWED):
            wrong.append(f"{source} -> {target} (the report reads files: {REPORT_ALLOWED})")
    assert not wrong, "imports against the arrows:\n" + "\n".join(sorted(wrong))


def test_the_nas_core_imports_no_task_framework(graph):
    wrong = [f"{m} imports {name}" for m in graph if part_of(m) in ("genas", "genas.core")
             for name in graph.nodes[m]["external"] if name.split(".")[0] in TASK_FRAMEWORKS]
    assert not wrong, wrong


def test_leaves_import_nothing_of_the_project(graph):
    for leaf in LEAVES:
        assert not list(graph.successors(leaf)), (leaf, list(graph.successors(leaf)))


def test_the_checker_catches_a_violation(tmp_path):
    """The walker sees function-level and relative imports (a check that cannot fail proves nothing)."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from backbones import darts_net\n    from .sibling import x\n")
    names = imported_names(path, "genas.spaces.probe")
    modules = product_modules()
    assert "backbones.darts_net" in project_targets(names, modules)
    assert "genas.spaces.sibling.x" in names
    assert LAYERS[part_of("backbones.darts_net")] > LAYERS[part_of("genas.spaces.probe")]  # the rule flags it

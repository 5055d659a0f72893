"""Figures that let people look rather than read: cell diagrams (paper Figs. 5-7), the search's best-score
curve and loss-versus-sigma curvature plots (paper Figs. 2-3); the report's bar chart (:mod:`report.plots`)
uses the same saving rules.

Drawing stack: matplotlib + networkx. A cell is a networkx ``DiGraph`` placed left to right on its
topological generations (``networkx.topological_generations``: the ranks graphviz's ``dot`` gives the DARTS
figures), its edges bent around the nodes they skip, and drawn with networkx's matplotlib drawers. Both are pip dependencies of the suite
(pyproject.toml), so plots work in any virtual environment or CI job with no system package (graphviz
would need ``apt install graphviz`` for its ``dot`` binary). Figures are ``matplotlib.figure.Figure`` objects
rendered off-screen (no pyplot state, no GUI backend) and written atomically; the suffix of the output path
picks the format (``.png``, ``.svg`` or ``.pdf``).

Command line::

    python -m genas.plots cell GENOTYPE --out cell.png [--cell normal|reduce|both]
    python -m genas.plots curvature --scores scores.csv [--ground-truth nb201.csv] [--k 3] --out curv.png
    python -m genas.plots best-score search_log.csv --out best.png

``GENOTYPE`` is anything :func:`read_architecture` reads: a published name (``genas_flatness_cifar100``),
a ``Genotype(...)`` string, a genotype JSON file, a search ``summary.json`` or an NB201 arch string.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from genas.core.errors import UsageError, usage_errors
from genas.core.io import atomic_write
from genas.core.results import read_result
from genas.nb201_eval import read_ground_truth_column
from genas.spaces import darts, nb201

__all__ = [
    "read_architecture", "architecture_key", "cell_graphs", "plot_cell", "plot_best_score", "read_loss_curves",
    "pick_top_middle_bottom", "select_curves", "plot_loss_curvature", "figure_path", "save_figure", "short_label", "FIGURE_FORMATS",
]

FIGURE_FORMATS = (".png", ".svg", ".pdf")
# Node colours of the DARTS paper's cell figures: inputs green, intermediate nodes blue, output yellow.
_INPUT_COLOUR, _NODE_COLOUR, _OUTPUT_COLOUR = "#b4eeb4", "#add8e6", "#eee8aa"
# Cell layouts stack nodes one data unit apart, drawn _INCHES_PER_UNIT inches wide; a node of
# _NODE_SIZE points^2 (diameter sqrt(1100) pt = 0.46 in) is then _NODE_RADIUS units in radius.
_NODE_SIZE, _INCHES_PER_UNIT = 1100, 1.6
_NODE_RADIUS = math.sqrt(_NODE_SIZE) / 72 / 2 / _INCHES_PER_UNIT
_LAYER_GAP = 1.5  # horizontal distance between generations, in units (room for an op label)
_ZIGZAG = 0.45  # vertical offset of a lone node, in units
_LABEL_SPACING = 0.45  # least distance between two edge labels' centres, in units
# Edge curvatures tried in order (smallest bend first, both sides) until an edge is clear.
_BENDS = (0.08, -0.08, 0.18, -0.18, 0.3, -0.3, 0.42, -0.42, 0.55, -0.55, 0.7, -0.7)
_GROUP_COLOURS = {"top": "tab:green", "middle": "tab:orange", "bottom": "tab:red"}
NB201_GT_COLUMN = "CIFAR10TestAccuracy200Epochs"


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------
def figure_path(out_path: str | os.PathLike) -> Path:
    path = Path(out_path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise ValueError(f"cannot write a figure to {path}: the suffix must be one of {FIGURE_FORMATS}")
    return path


def save_figure(fig: Figure, out_path: Path) -> Path:
    """Write ``fig`` atomically in the format of ``out_path``'s suffix."""
    return atomic_write(out_path, lambda tmp: fig.savefig(tmp, format=out_path.suffix[1:].lower(), dpi=150,
                                                          bbox_inches="tight"))


# --------------------------------------------------------------------------------------------------
# Cell diagrams
# --------------------------------------------------------------------------------------------------
def read_architecture(spec: Any) -> tuple[str, Any]:
    """``("darts", Genotype)`` or ``("nb201", 6-int arch)`` from any form the suite writes or a user types.

    Accepts a :class:`~genas.spaces.darts.Genotype`; anything :func:`genas.spaces.darts.parse_genotype`
    reads (published name, ``Genotype(...)`` string, genotype dict/JSON, 28-int encoding); an NB201 arch
    string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` or 6-int arch; a dict with an ``arch`` key (what
    ``SearchSpace.to_json`` writes); and the path of a JSON file holding any of these, including a search
    result (``genas-result/1``) whose ``meta`` holds ``genotype`` or ``arch``.
    """
    if isinstance(spec, darts.Genotype):
        return "darts", darts.parse_genotype(spec)
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and spec.strip().endswith(".json")):
        return _architecture_from_file(Path(spec))
    if isinstance(spec, Mapping):
        return _architecture_from_dict(spec, source="genotype dict")
    if isinstance(spec, str) and spec.strip().startswith("|"):
        return "nb201", nb201.parse_arch_string(spec)
    if isinstance(spec, Sequence) and not isinstance(spec, str) and len(spec) == len(nb201.EDGES):
        return "nb201", nb201.validate_arch(spec)
    return "darts", darts.parse_genotype(spec)


def architecture_key(value: Any) -> str | None:
    """A canonical text of an architecture (DARTS 28-int encoding, NB201 genes), or ``None`` when ``value``
    is not one (e.g. a model name that is no published genotype)."""
    if value is None:
        return None
    try:
        space, arch = read_architecture(value)
    except (ValueError, TypeError):
        return None
    genes = darts.encode(arch) if space == "darts" else arch
    return f"{space}:" + ",".join(map(str, genes))


def _architecture_from_file(path: Path) -> tuple[str, Any]:
    if not path.is_file():
        raise ValueError(f"architecture file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, Mapping) and "schema" in data:
        data = read_result(path)["meta"]  # a search result: validated, the architecture is in meta
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a JSON object holding a genotype or an arch, got {type(data).__name__}")
    return _architecture_from_dict(data, source=str(path))


def _architecture_from_dict(data: Mapping[str, Any], source: str) -> tuple[str, Any]:
    if "genotype" in data:
        return "darts", darts.parse_genotype(data["genotype"])
    if "normal" in data:
        return "darts", darts.parse_genotype(dict(data))
    if "arch" in data:
        return read_architecture(data["arch"])
    raise ValueError(f"{source}: no architecture found; expected a 'genotype' (DARTS) or 'arch' (NB201 arch "
                     f"string) key, got keys {sorted(data)}")


def _darts_cell_graph(pairs: Sequence[tuple[str, int]]) -> nx.DiGraph:
    """Inputs ``c_{k-2}``, ``c_{k-1}``; nodes ``0..3`` with an ``op`` per incoming edge; output ``c_{k}``
    fed (concat, no op) by every intermediate node."""
    inputs = (r"$c_{k-2}$", r"$c_{k-1}$")
    output = r"$c_{k}$"
    g = nx.DiGraph()
    g.add_nodes_from(inputs, role="input")
    g.add_nodes_from((str(n) for n in range(darts.NUM_NODES)), role="node")
    g.add_node(output, role="output")
    for k, (op, state) in enumerate(pairs):
        source = inputs[state] if state < 2 else str(state - 2)
        g.add_edge(source, str(k // 2), op=op)
    for n in range(darts.NUM_NODES):
        g.add_edge(str(n), output, op=None)
    return g


def _nb201_cell_graph(arch: Sequence[int]) -> nx.DiGraph:
    """Nodes ``0..3`` (0 = cell input, 3 = output); one edge per non-``none`` gene, labelled with its op."""
    g = nx.DiGraph()
    g.add_nodes_from("0123", role="node")
    g.nodes["0"]["role"], g.nodes["3"]["role"] = "input", "output"
    for (node, src), gene in zip(nb201.EDGES, arch):
        if nb201.OP_NAMES[gene] != "none":
            g.add_edge(str(src), str(node), op=nb201.OP_NAMES[gene])
    return g


def cell_graphs(spec: Any, cell: str = "both") -> list[tuple[str, nx.DiGraph]]:
    """``(title, graph)`` per cell to draw; ``cell`` is ``normal``, ``reduce`` or ``both`` (NB201 has one
    cell, drawn for ``normal`` and ``both``)."""
    if cell not in ("normal", "reduce", "both"):
        raise ValueError(f"cell must be 'normal', 'reduce' or 'both', got {cell!r}")
    space, arch = read_architecture(spec)
    if space == "nb201":
        if cell == "reduce":
            raise ValueError("NAS-Bench-201 has no searched reduction cell (its reductions are fixed ResNet "
                             "blocks); use cell='normal' or 'both'")
        return [("NAS-Bench-201 cell", _nb201_cell_graph(arch))]
    cells = ("normal", "reduce") if cell == "both" else (cell,)
    titles = {"normal": "Normal cell", "reduce": "Reduction cell"}
    return [(titles[c], _darts_cell_graph(getattr(arch, c))) for c in cells]


@dataclass(frozen=True)
class _CellLayout:
    """Node positions (data units, equal aspect) and the ``arc3`` curvature of each edge."""

    pos: dict[str, np.ndarray]
    bend: dict[tuple[str, str], float]
    lower: np.ndarray  # bounding box of nodes and curves
    upper: np.ndarray


def _arc(p0: np.ndarray, p1: np.ndarray, rad: float, n: int = 32) -> np.ndarray:
    """Points of matplotlib's ``arc3,rad=...`` connection: a quadratic Bezier through the control point
    ``midpoint + rad * (dy, -dx)``."""
    d = p1 - p0
    control = (p0 + p1) / 2 + rad * np.array([d[1], -d[0]])
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * control + t ** 2 * p1


def _layers(g: nx.DiGraph) -> dict[str, int]:
    """Column of each node: inputs 0, a node one more than its furthest input (longest path, in
    ``networkx.topological_sort`` order), the output alone after every other node (also when, in an NB201
    cell of ``none`` edges, nothing reaches it)."""
    layers: dict[str, int] = {}
    for n in nx.topological_sort(g):
        if g.nodes[n]["role"] != "output":
            layers[n] = 0 if g.nodes[n]["role"] == "input" else 1 + max((layers[p] for p in g.predecessors(n)),
                                                                       default=0)
    last = max(layers.values()) + 1
    return layers | {n: last for n in g.nodes if g.nodes[n]["role"] == "output"}


def _layout_cell(g: nx.DiGraph) -> _CellLayout:
    """Left to right like graphviz ``dot`` in the paper's figures.

    x = :func:`_layers`; nodes sharing a column are stacked one unit apart in the order of their inputs' mean
    height (dot's barycentre rule: fewer crossings); a lone node between inputs and output sits alternately
    above and below the axis so that a chain does not hide the edges skipping over it. Edges are placed
    shortest first, each with the smallest curvature that keeps its curve clear of the other nodes and its
    label (at the curve's middle) clear of the labels placed before.
    """
    layer_of = _layers(g)
    last = max(layer_of.values())
    order = {n: i for i, n in enumerate(g.nodes)}  # ties keep the graph's order (c_{k-2} above c_{k-1})
    pos: dict[str, np.ndarray] = {}
    for layer in range(last + 1):
        nodes = sorted((n for n in g.nodes if layer_of[n] == layer),
                       key=lambda n: (-np.mean([pos[p][1] for p in g.predecessors(n)] or [0.0]), order[n]))
        for i, n in enumerate(nodes):
            y = (len(nodes) - 1) / 2 - i
            if len(nodes) == 1 and 0 < layer < last:
                y = _ZIGZAG if layer % 2 else -_ZIGZAG
            pos[n] = np.array([_LAYER_GAP * layer, y])
    bend: dict[tuple[str, str], float] = {}
    labels: list[np.ndarray] = []
    curves = [np.array(list(pos.values()))]
    for u, v in sorted(g.edges, key=lambda e: (layer_of[e[1]] - layer_of[e[0]], layer_of[e[0]])):
        others = np.array([p for n, p in pos.items() if n not in (u, v)])
        best, best_gap = (_BENDS[0], None), -math.inf
        for rad in _BENDS:
            curve = _arc(pos[u], pos[v], rad)
            node_gap = np.linalg.norm(curve[:, None, :] - others[None], axis=-1).min() / (1.4 * _NODE_RADIUS)
            middle = curve[len(curve) // 2]
            label_gap = (min(np.linalg.norm(middle - m) for m in labels) / _LABEL_SPACING) if labels else math.inf
            gap = min(node_gap, label_gap)
            if gap > best_gap:
                best, best_gap = (rad, curve), gap
            if gap >= 1.0:
                break
        rad, curve = best
        bend[(u, v)] = rad
        curves.append(curve)
        if g.edges[u, v]["op"] is not None:
            labels.append(curve[len(curve) // 2])
    every = np.concatenate(curves)
    return _CellLayout(pos, bend, every.min(axis=0) - 1.2 * _NODE_RADIUS, every.max(axis=0) + 1.2 * _NODE_RADIUS)


def _draw_cell(ax: Any, title: str, g: nx.DiGraph, layout: _CellLayout) -> None:
    colours = {"input": _INPUT_COLOUR, "node": _NODE_COLOUR, "output": _OUTPUT_COLOUR}
    artists = [nx.draw_networkx_nodes(g, layout.pos, ax=ax, node_size=_NODE_SIZE, edgecolors="black",
                                      node_color=[colours[g.nodes[n]["role"]] for n in g.nodes])]
    artists += nx.draw_networkx_labels(g, layout.pos, ax=ax, font_size=11).values()
    for rad in sorted(set(layout.bend.values())):
        style = f"arc3,rad={rad}"
        edges = [e for e, r in layout.bend.items() if r == rad]
        ops = [e for e in edges if g.edges[e]["op"] is not None]
        concat = [e for e in edges if g.edges[e]["op"] is None]
        artists += nx.draw_networkx_edges(g, layout.pos, ax=ax, edgelist=ops, node_size=_NODE_SIZE, arrowsize=14,
                                          connectionstyle=style, width=1.3)
        artists += nx.draw_networkx_edges(g, layout.pos, ax=ax, edgelist=concat, node_size=_NODE_SIZE,
                                          arrowsize=12, connectionstyle=style, edge_color="0.6", style="dashed")
        nx.draw_networkx_edge_labels(g, layout.pos, ax=ax, edge_labels={e: g.edges[e]["op"] for e in ops},
                                     connectionstyle=style, font_size=8, clip_on=False,
                                     bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    for artist in artists:
        artist.set_clip_on(False)  # the limits are the layout's bounding box; node discs may reach past it
    ax.set_xlim(layout.lower[0], layout.upper[0])
    ax.set_ylim(layout.lower[1], layout.upper[1])
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.set_axis_off()


def plot_cell(genotype_or_arch: Any, out_path: str | os.PathLike, cell: str = "both") -> Path:
    """Draw the cell(s) of a DARTS genotype or an NB201 architecture (see :func:`read_architecture`) to a
    PNG/SVG/PDF chosen by the suffix of ``out_path``; ``cell='both'`` stacks normal over reduction."""
    path = figure_path(out_path)
    graphs = cell_graphs(genotype_or_arch, cell)
    layouts = [_layout_cell(g) for _, g in graphs]
    sizes = [(lay.upper - lay.lower) * _INCHES_PER_UNIT for lay in layouts]
    fig = Figure(figsize=(max(w for w, _ in sizes), sum(h for _, h in sizes) + 0.5 * len(sizes)))
    axes = fig.subplots(len(graphs), 1, squeeze=False, height_ratios=[h for _, h in sizes])[:, 0]
    for ax, (title, g), layout in zip(axes, graphs, layouts):
        _draw_cell(ax, title, g, layout)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
# Best-score curve
# --------------------------------------------------------------------------------------------------
def _finite_or_nan(values: Iterable[Any]) -> np.ndarray:
    out = np.array([float(v) if v not in (None, "") else math.nan for v in values], dtype=float)
    out[~np.isfinite(out)] = math.nan  # -inf (an all-diverged generation) cannot be drawn
    return out


def _read_history(history: str | os.PathLike | Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(iterations, best, mean_topk or None)`` from a history CSV path, a list of history rows
    (:class:`genas.evolution.SearchOutcome.history`) or a list of per-iteration best scores."""
    if isinstance(history, (str, os.PathLike)):
        path = Path(history)
        if not path.is_file():
            raise ValueError(f"search history not found: {path}")
        with open(path, newline="", encoding="utf-8") as f:
            rows: list[Any] = list(csv.DictReader(f))
        if rows and "best_score" not in rows[0]:
            raise ValueError(f"{path}: no 'best_score' column (columns: {list(rows[0])}); expected the search's "
                             f"history CSV with iteration,best_score[,mean_topk_score]")
        source = str(path)
    else:
        rows, source = list(history), "history"
    if not rows:
        raise ValueError(f"{source}: the search history is empty (no finished generation)")
    if isinstance(rows[0], Mapping):
        best = _finite_or_nan(r["best_score"] for r in rows)
        iterations = np.array([int(r.get("iteration", i + 1)) for i, r in enumerate(rows)])
        mean = _finite_or_nan(r["mean_topk_score"] for r in rows) if "mean_topk_score" in rows[0] else None
    else:
        best, iterations, mean = _finite_or_nan(rows), np.arange(1, len(rows) + 1), None
    if np.isnan(best).all():
        raise ValueError(f"{source}: no finite best score to plot (every candidate diverged)")
    return iterations, best, mean


def plot_best_score(search_log_csv_or_list: str | os.PathLike | Sequence[Any], out_png: str | os.PathLike) -> Path:
    """Best score found so far (and the top-k mean when logged) per search iteration."""
    path = figure_path(out_png)
    iterations, best, mean = _read_history(search_log_csv_or_list)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(iterations, best, marker="o", label="best score")
    if mean is not None and not np.isnan(mean).all():
        ax.plot(iterations, mean, linestyle="--", marker=".", label="top-k mean")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("score (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
# Loss curvature (validation loss versus sigma)
# --------------------------------------------------------------------------------------------------
def read_loss_curves(scores_csv: str | os.PathLike,
                     sigmas: Sequence[float] | None = None) -> tuple[list[float], list[dict[str, Any]]]:
    """``(sigmas, curves)`` from the search's ``scores.csv``: columns ``arch``, ``key``, ``score`` and one
    ``loss_sigma_<sigma>`` per perturbation (``loss_sigma_0.002``, as :mod:`genas.search` writes them).

    Each curve is ``{"arch", "key", "score", "losses": [L_1..L_t]}`` in increasing sigma; architectures whose
    losses are missing or non-finite (a diverged candidate) are left out. ``sigmas`` overrides the values in
    the column names (for tables whose loss columns are in sigma order but not named by value).
    """
    path = Path(scores_csv)
    if not path.is_file():
        raise ValueError(f"scores CSV not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    loss_columns = [c for c in columns if c.startswith("loss_sigma_")]
    if "arch" not in columns or "score" not in columns or not loss_columns:
        raise ValueError(f"{path}: expected the search's scores CSV with columns arch, score, loss_sigma_<sigma>... "
                         f"(got {columns}); losses are logged only by the flatness-based metrics")
    if sigmas is None:
        try:
            named = [float(c[len("loss_sigma_"):]) for c in loss_columns]
        except ValueError:
            raise ValueError(f"{path}: loss columns {loss_columns} are not named loss_sigma_<sigma value>; "
                             f"pass the sigmas explicitly (--sigmas)") from None
        order = sorted(range(len(named)), key=named.__getitem__)
        loss_columns, sigmas = [loss_columns[i] for i in order], [named[i] for i in order]
    sigmas = [float(s) for s in sigmas]
    if len(sigmas) != len(loss_columns):
        raise ValueError(f"{path} has {len(loss_columns)} loss columns but {len(sigmas)} sigmas were given")
    curves = []
    for row in rows:
        losses = _finite_or_nan(row[c] for c in loss_columns)
        if not np.isnan(losses).any():
            curves.append({"arch": row["arch"], "key": row.get("key") or row["arch"],
                           "score": float(row["score"]), "losses": losses.tolist()})
    return sigmas, curves


def short_label(arch: str, width: int = 40) -> str:
    return arch if len(arch) <= width else arch[: width - 3] + "..."


def pick_top_middle_bottom(ranked: Sequence[Any], k: int) -> dict[str, list[Any]]:
    """The first, central and last ``k`` items of a best-first list (paper Fig. 2's top/middle/bottom-k)."""
    n = len(ranked)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < 3 * k:
        raise ValueError(f"top/middle/bottom-{k} needs at least {3 * k} architectures with finite losses, got {n}; "
                         f"lower k")
    middle = (n - k) // 2
    return {"top": list(ranked[:k]), "middle": list(ranked[middle:middle + k]), "bottom": list(ranked[n - k:])}


def select_curves(curves: Sequence[dict[str, Any]], archs: Sequence[str] | None = None,
                  truth: Mapping[str, float] | None = None, k: int = 3) -> list[tuple[str, dict[str, Any], float]]:
    """``(group, curve, value)`` of the curves to plot: ``archs`` (arch strings or keys; group "", value the
    score); else the top/middle/bottom-``k`` by ``truth`` (arch string -> ground-truth accuracy; value the
    accuracy); else by score. Isomorphic architectures (one ``key``) count once, by their best member."""
    if archs is not None:
        by_name = {c["arch"]: c for c in curves} | {c["key"]: c for c in curves}
        unknown = [a for a in archs if a not in by_name]
        if unknown:
            raise ValueError(f"no finite losses for {unknown} (not scored, or diverged)")
        return [("", by_name[a], by_name[a]["score"]) for a in archs]
    if truth is not None:
        valued = [(truth[c["arch"]], c) for c in curves if c["arch"] in truth]
        if not valued:
            raise ValueError("none of the scored architectures is in the ground-truth table (column "
                             "ArchitectureString): is it an NB201 search?")
    else:
        valued = [(c["score"], c) for c in curves]
    valued.sort(key=lambda vc: (-vc[0], vc[1]["arch"]))
    seen: set[str] = set()  # an exhaustive NB201 search writes every member of a class with the class's losses
    ranked = [(v, c) for v, c in valued if not (c["key"] in seen or seen.add(c["key"]))]
    return [(group, c, v) for group, picked in pick_top_middle_bottom(ranked, k).items() for v, c in picked]


def plot_loss_curvature(scores_csv: str | os.PathLike, out_png: str | os.PathLike, archs: Sequence[str] | None = None,
                        ground_truth_csv: str | os.PathLike | None = None, k: int = 3,
                        sigmas: Sequence[float] | None = None, gt_column: str = NB201_GT_COLUMN) -> Path:
    """Validation loss versus sigma (paper Figs. 2-3) for chosen architectures of a search's ``scores.csv``.

    Which curves (:func:`select_curves`): ``archs`` (e.g. the picks of several searches, Fig. 3); else the
    top/middle/bottom-``k`` by NAS-Bench-201 ground truth (``gt_column`` of ``ground_truth_csv``, Fig. 2);
    else the top/middle/bottom-``k`` by search score.
    """
    path = figure_path(out_png)
    sigmas, curves = read_loss_curves(scores_csv, sigmas)
    truth = read_ground_truth_column(ground_truth_csv, gt_column) if ground_truth_csv is not None and archs is None else None
    try:
        chosen = select_curves(curves, archs, truth, k)
    except ValueError as e:
        raise ValueError(f"{scores_csv}: {e}") from None
    title = f"ground truth: {gt_column}" if truth is not None else "search score"
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    styles = ("-", "--", ":", "-.")
    for i, (group, curve, value) in enumerate(chosen):
        label = f"{group}-{k}: {value:.4g}" if group else f"{short_label(curve['arch'])}: {value:.4g}"
        ax.plot(sigmas, curve["losses"], marker="o", color=_GROUP_COLOURS.get(group, f"C{i % 10}"),
                linestyle=styles[i % k % len(styles)] if group else "-", alpha=0.85, label=label)
    ax.set_xlabel(r"$\sigma$ (std of the Gaussian weight perturbation)")
    ax.set_ylabel("validation loss")
    if len(sigmas) > 1 and sigmas[-1] / sigmas[0] > 20:
        ax.set_xscale("log")  # sigmas spanning decades (e.g. 1e-5..1e-4)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title=title, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m genas.plots", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cell", help="draw the cell(s) of a genotype or NB201 architecture")
    c.add_argument("genotype", help="published name, Genotype(...) string, genotype/summary JSON file, or NB201 "
                                    "arch string")
    c.add_argument("--cell", default="both", choices=("normal", "reduce", "both"))
    c.add_argument("--out", required=True, help="output .png/.svg/.pdf")
    v = sub.add_parser("curvature", help="validation loss versus sigma (paper Figs. 2-3)")
    v.add_argument("--scores", required=True, help="the search's scores CSV")
    v.add_argument("--ground-truth", default=None, help="NAS-Bench-201 table (ArchitectureString + accuracies)")
    v.add_argument("--gt-column", default=NB201_GT_COLUMN, help="accuracy column of --ground-truth")
    v.add_argument("--archs", nargs="+", default=None, help="plot these arch strings/keys instead of top/mid/bottom-k")
    v.add_argument("--k", type=int, default=3)
    v.add_argument("--sigmas", type=float, nargs="+", default=None, help="sigma of each loss column")
    v.add_argument("--out", required=True)
    b = sub.add_parser("best-score", help="best score per search iteration")
    b.add_argument("history", help="the search's history CSV (iteration,best_score[,mean_topk_score])")
    b.add_argument("--out", required=True)
    return p


class PlotInputError(UsageError):
    """An input of the plotting CLI that cannot be read or drawn."""


@usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "cell":
            out = plot_cell(args.genotype, args.out, cell=args.cell)
        elif args.command == "curvature":
            out = plot_loss_curvature(args.scores, args.out, archs=args.archs, ground_truth_csv=args.ground_truth,
                                      k=args.k, sigmas=args.sigmas, gt_column=args.gt_column)
        else:
            out = plot_best_score(args.history, args.out)
    except ValueError as e:  # a genotype, scores or history file that cannot be read
        raise PlotInputError(str(e)) from None
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

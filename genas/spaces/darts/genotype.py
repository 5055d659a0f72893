"""DARTS genotypes: their text/JSON forms and the reference 28-integer encoding (a leaf: imports nothing of
the project, so every other DARTS module and the backbones can build on it).

A cell has two inputs (indices 0, 1: the outputs of the two previous cells) and four intermediate nodes
(indices 2..5); node ``j`` (0-based among the four) may read any of the ``j + 2`` earlier states and keeps
exactly two of them, each through one op. The cell output concatenates nodes 2..5.

Two equivalent forms of one architecture:

* a :data:`Genotype` (what retraining, backbones and papers use): for each cell type a list of 8
  ``(op_name, input_index)`` pairs, two per node;
* the reference integer encoding (what the search mutates): 28 ints, normal cell's 14 edges then the
  reduce cell's 14, each an index into :data:`PRIMITIVES` with 0 = ``none`` = edge absent. Edges are ordered
  node0 <- {0, 1}, node1 <- {0, 1, 2}, node2 <- {0..3}, node3 <- {0..4}.

:func:`decode` lists each node's pair in edge order (ascending input index), so ``encode(decode(x)) == x``
and the encoding itself is the canonical form of a genotype.
"""
from __future__ import annotations

import ast
import json
import os
from collections import namedtuple
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "PRIMITIVES", "Genotype", "CONCAT", "NUM_NODES", "EDGES_PER_CELL", "NUM_GENES", "NODE_EDGES",
    "parse_genotype", "format_genotype", "genotype_to_json", "validate_genotype",
    "encode", "decode", "CELL_TYPES", "EDGE_INPUT",
]

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

NUM_NODES = 4
CONCAT: list[int] = [2, 3, 4, 5]
CELL_TYPES = ("normal", "reduce")


def _node_edges() -> tuple[tuple[tuple[int, int], ...], ...]:
    """For each node, its ``(edge_index, input_index)`` pairs in the reference edge order."""
    nodes, start = [], 0
    for node in range(NUM_NODES):
        n_inputs = node + 2
        nodes.append(tuple((start + i, i) for i in range(n_inputs)))
        start += n_inputs
    return tuple(nodes)


NODE_EDGES = _node_edges()
EDGES_PER_CELL = sum(len(edges) for edges in NODE_EDGES)  # 14
NUM_GENES = 2 * EDGES_PER_CELL  # 28
#: input index of each of the 14 edges of a cell
EDGE_INPUT: tuple[int, ...] = tuple(i for edges in NODE_EDGES for _, i in edges)


# --------------------------------------------------------------------------------------------------
# Genotype validation and (de)serialisation
# --------------------------------------------------------------------------------------------------
def _normalise_pairs(pairs: Any, cell: str) -> list[tuple[str, int]]:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise ValueError(f"genotype {cell}: expected a list of 8 (op_name, input_index) pairs, got {pairs!r}")
    out = []
    for k, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"genotype {cell}[{k}]: expected an (op_name, input_index) pair, got {pair!r}")
        op, idx = pair
        if not isinstance(op, str):
            raise ValueError(f"genotype {cell}[{k}]: op name must be a string, got {op!r}")
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
            raise ValueError(f"genotype {cell}[{k}]: input index must be an int, got {idx!r}")
        out.append((op, int(idx)))
    return out


def validate_genotype(g: Genotype) -> Genotype:
    """Check ``g`` is a cell of the DARTS space and return it normalised (lists of ``(str, int)`` tuples,
    concat ``[2, 3, 4, 5]``). Raises ``ValueError`` naming the cell, the node and the problem."""
    if not isinstance(g, Genotype):
        raise ValueError(f"expected a Genotype, got {type(g).__name__}; use parse_genotype() to read other forms")
    fields: dict[str, Any] = {}
    for cell in CELL_TYPES:
        pairs = _normalise_pairs(getattr(g, cell), cell)
        if len(pairs) != 2 * NUM_NODES:
            raise ValueError(f"genotype {cell}: each of the {NUM_NODES} nodes needs exactly 2 inputs, so "
                             f"{2 * NUM_NODES} (op, input) pairs are expected; got {len(pairs)}")
        for k, (op, idx) in enumerate(pairs):
            node = k // 2
            if op not in PRIMITIVES:
                raise ValueError(f"genotype {cell}, node {node}: unknown op {op!r}; valid ops: {list(PRIMITIVES)}")
            if op == "none":
                raise ValueError(f"genotype {cell}, node {node}: 'none' cannot be a kept op (it means the edge "
                                 f"is absent); choose one of {list(PRIMITIVES[1:])}")
            if not 0 <= idx < node + 2:
                raise ValueError(f"genotype {cell}, node {node}: input index {idx} out of range; node {node} "
                                 f"(state {node + 2}) may read states 0..{node + 1}")
        for node in range(NUM_NODES):
            (_, a), (_, b) = pairs[2 * node: 2 * node + 2]
            if a == b:
                raise ValueError(f"genotype {cell}, node {node}: both inputs read state {a}; a node needs exactly "
                                 f"2 distinct inputs (one op per edge)")
        concat = getattr(g, f"{cell}_concat")
        try:
            concat = [int(c) for c in concat]
        except (TypeError, ValueError):
            raise ValueError(f"genotype {cell}_concat: expected {CONCAT}, got {concat!r}") from None
        if concat != CONCAT:
            raise ValueError(f"genotype {cell}_concat: the DARTS space concatenates all intermediate nodes "
                             f"{CONCAT}, got {concat}")
        fields[cell], fields[f"{cell}_concat"] = pairs, list(CONCAT)
    return Genotype(**fields)


def format_genotype(g: Genotype) -> str:
    """``Genotype(normal=[('skip_connect', 0), ...], normal_concat=[2, 3, 4, 5], ...)``; read back by
    :func:`parse_genotype` (and the same text the reference ``genotypes.py`` files use)."""
    g = validate_genotype(g)
    return (f"Genotype(normal={g.normal!r}, normal_concat={g.normal_concat!r}, "
            f"reduce={g.reduce!r}, reduce_concat={g.reduce_concat!r})")


def genotype_to_json(g: Genotype) -> dict[str, Any]:
    """``{"normal": [[op, idx], ...], "normal_concat": [2, 3, 4, 5], "reduce": ..., "reduce_concat": ...}``."""
    g = validate_genotype(g)
    return {field: [list(p) for p in value] if field in CELL_TYPES else list(value)
            for field, value in g._asdict().items()}


def _literal(node: ast.AST) -> Any:
    """``ast.literal_eval`` that also accepts ``range(a, b)`` (how reference genotype files write concat)."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
            and not node.keywords):
        return list(range(*(int(_literal(a)) for a in node.args)))
    return ast.literal_eval(node)


def _genotype_from_repr(text: str) -> Genotype:
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"cannot parse genotype string {text[:80]!r}...: {e.msg}") from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, (ast.Name, ast.Attribute))
            and (getattr(call.func, "id", None) or getattr(call.func, "attr", None)) == "Genotype"):
        raise ValueError(f"expected 'Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])', "
                         f"got {text[:80]!r}")
    try:
        args = [_literal(a) for a in call.args]
        kwargs = {kw.arg: _literal(kw.value) for kw in call.keywords}
        return Genotype(*args, **kwargs)
    except (ValueError, TypeError, SyntaxError) as e:
        raise ValueError(f"malformed genotype string {text[:80]!r}...: {e}") from None


def _genotype_from_dict(d: dict, names: Mapping[str, Genotype] | None) -> Genotype:
    if "genotype" in d and isinstance(d["genotype"], (dict, str)):
        return parse_genotype(d["genotype"], names)
    missing = [f for f in Genotype._fields if f not in d]
    if missing:
        raise ValueError(f"genotype dict is missing {missing}; expected keys {list(Genotype._fields)} "
                         f"(or a 'genotype' key holding them), got {sorted(d)}")
    return Genotype(**{f: d[f] for f in Genotype._fields})


def parse_genotype(obj: Any, names: Mapping[str, Genotype] | None = None) -> Genotype:
    """Read a genotype from any of the forms the suite meets, validated and normalised.

    Accepts a :data:`Genotype`; its ``repr`` string (``range(2, 6)`` concat allowed); a dict or JSON string
    ``{"normal": [[op, idx], ...], "normal_concat": [...], "reduce": ..., "reduce_concat": ...}``, also nested
    under a ``"genotype"`` key as the search writes it; the path of such a ``.json`` file; the name of a
    genotype in ``names`` (lower-case name -> genotype; :func:`genas.spaces.darts.parse_genotype` passes the published ones); or the 28-int encoding.
    """
    if isinstance(obj, Genotype):
        return validate_genotype(obj)
    if isinstance(obj, dict):
        return validate_genotype(_genotype_from_dict(obj, names))
    if isinstance(obj, os.PathLike) or (isinstance(obj, str) and obj.strip().endswith(".json")):
        path = Path(obj)
        if not path.is_file():
            raise ValueError(f"genotype file not found: {path}")
        return parse_genotype(json.loads(path.read_text()), names)
    if isinstance(obj, str):
        text = obj.strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"genotype JSON string is malformed: {e}") from None
            return parse_genotype(data, names)
        if "(" in text:
            return validate_genotype(_genotype_from_repr(text))
        if names is not None and text.lower() in names:
            return validate_genotype(names[text.lower()])
        known = f"published genotypes: {sorted(names)}" if names is not None else "names need genas.spaces.darts.parse_genotype"
        raise ValueError(f"unknown genotype name {obj!r}; {known} "
                         f"(or pass a 'Genotype(...)' string, a JSON dict or a .json file)")
    if isinstance(obj, Sequence) and len(obj) == NUM_GENES:
        return decode(obj)
    raise ValueError(f"cannot read a genotype from {type(obj).__name__} {obj!r}")


# --------------------------------------------------------------------------------------------------
# The reference 28-integer encoding
# --------------------------------------------------------------------------------------------------
def _check_ints(ints: Sequence[int]) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in ints)
    except (TypeError, ValueError):
        raise ValueError(f"a DARTS arch is {NUM_GENES} ints, got {ints!r}") from None
    if len(values) != NUM_GENES:
        raise ValueError(f"a DARTS arch is {NUM_GENES} ints (normal 14 edges then reduce 14), got {len(values)}")
    bad = [k for k, v in enumerate(values) if not 0 <= v < len(PRIMITIVES)]
    if bad:
        raise ValueError(f"DARTS arch genes must index PRIMITIVES (0..{len(PRIMITIVES) - 1}); "
                         f"gene {bad[0]} is {values[bad[0]]}")
    return values


def decode(ints: Sequence[int]) -> Genotype:
    """The genotype of a 28-int encoding; each node must have exactly 2 non-``none`` edges."""
    values = _check_ints(ints)
    cells = {}
    for c, cell in enumerate(CELL_TYPES):
        genes = values[c * EDGES_PER_CELL:(c + 1) * EDGES_PER_CELL]
        pairs = []
        for node, edges in enumerate(NODE_EDGES):
            kept = [(PRIMITIVES[genes[e]], i) for e, i in edges if genes[e]]
            if len(kept) != 2:
                raise ValueError(f"{cell} cell, node {node} (edges {edges[0][0]}..{edges[-1][0]}): exactly 2 "
                                 f"non-none edges are needed, got {len(kept)} in "
                                 f"{[genes[e] for e, _ in edges]}; use repair() to fix")
            pairs += kept
        cells[cell] = pairs
    return Genotype(normal=cells["normal"], normal_concat=list(CONCAT),
                    reduce=cells["reduce"], reduce_concat=list(CONCAT))


def encode(genotype: Any, names: Mapping[str, Genotype] | None = None) -> tuple[int, ...]:
    """The 28-int encoding of a genotype (any form :func:`parse_genotype` reads)."""
    g = parse_genotype(genotype, names)
    ints = [0] * NUM_GENES
    for c, cell in enumerate(CELL_TYPES):
        for k, (op, idx) in enumerate(getattr(g, cell)):
            edge, _ = NODE_EDGES[k // 2][idx]
            ints[c * EDGES_PER_CELL + edge] = PRIMITIVES.index(op)
    return tuple(ints)

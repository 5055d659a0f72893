"""The DARTS cell search space: genotypes, their text/JSON forms, the reference 28-integer encoding and
the :class:`DartsSpace` the one-shot search runs on.

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
from typing import Any, Iterable, Sequence

import numpy as np

from genas.spaces.base import Arch, SearchSpace

__all__ = [
    "PRIMITIVES", "Genotype", "CONCAT", "NUM_NODES", "EDGES_PER_CELL", "NUM_GENES", "NODE_EDGES",
    "parse_genotype", "format_genotype", "genotype_to_json", "validate_genotype",
    "encode", "decode", "repair", "DartsSpace",
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


def _genotype_from_dict(d: dict) -> Genotype:
    if "genotype" in d and isinstance(d["genotype"], (dict, str)):
        return parse_genotype(d["genotype"])
    missing = [f for f in Genotype._fields if f not in d]
    if missing:
        raise ValueError(f"genotype dict is missing {missing}; expected keys {list(Genotype._fields)} "
                         f"(or a 'genotype' key holding them), got {sorted(d)}")
    return Genotype(**{f: d[f] for f in Genotype._fields})


def parse_genotype(obj: Any) -> Genotype:
    """Read a genotype from any of the forms the suite meets, validated and normalised.

    Accepts a :data:`Genotype`; its ``repr`` string (``range(2, 6)`` concat allowed); a dict or JSON string
    ``{"normal": [[op, idx], ...], "normal_concat": [...], "reduce": ..., "reduce_concat": ...}``, also nested
    under a ``"genotype"`` key as the search writes it; the path of such a ``.json`` file; the name of a
    published genotype (:data:`genas.genotypes.PUBLISHED`, any case); or the 28-int encoding.
    """
    if isinstance(obj, Genotype):
        return validate_genotype(obj)
    if isinstance(obj, dict):
        return validate_genotype(_genotype_from_dict(obj))
    if isinstance(obj, os.PathLike) or (isinstance(obj, str) and obj.strip().endswith(".json")):
        path = Path(obj)
        if not path.is_file():
            raise ValueError(f"genotype file not found: {path}")
        return parse_genotype(json.loads(path.read_text()))
    if isinstance(obj, str):
        text = obj.strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"genotype JSON string is malformed: {e}") from None
            return parse_genotype(data)
        if "(" in text:
            return validate_genotype(_genotype_from_repr(text))
        from genas.genotypes import PUBLISHED
        if text.lower() in PUBLISHED:
            return validate_genotype(PUBLISHED[text.lower()])
        raise ValueError(f"unknown genotype name {obj!r}; published genotypes: {sorted(PUBLISHED)} "
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


def encode(genotype: Any) -> tuple[int, ...]:
    """The 28-int encoding of a genotype (any form :func:`parse_genotype` reads)."""
    g = parse_genotype(genotype)
    ints = [0] * NUM_GENES
    for c, cell in enumerate(CELL_TYPES):
        for k, (op, idx) in enumerate(getattr(g, cell)):
            edge, _ = NODE_EDGES[k // 2][idx]
            ints[c * EDGES_PER_CELL + edge] = PRIMITIVES.index(op)
    return tuple(ints)


def _edges_of(cell_index: int, node: int) -> list[int]:
    """Gene positions (0..27) of ``node``'s edges in cell ``cell_index`` (0 normal, 1 reduce)."""
    return [cell_index * EDGES_PER_CELL + e for e, _ in NODE_EDGES[node]]


def _draw_node(genes: list[int], positions: list[int], rng: np.random.Generator) -> None:
    """Keep 2 distinct edges of a node uniformly at random, each with a uniform non-``none`` op."""
    for p in positions:
        genes[p] = 0
    for p in rng.choice(positions, size=2, replace=False):
        genes[int(p)] = int(rng.integers(1, len(PRIMITIVES)))


def repair(ints: Sequence[int], rng: np.random.Generator) -> tuple[int, ...]:
    """Make every node keep exactly 2 edges, changing as little as possible.

    Rule (per node, both cells): more than 2 non-``none`` edges -> keep 2 of them chosen uniformly at random
    (their ops unchanged), set the rest to ``none``; fewer than 2 -> add edges chosen uniformly among the
    node's ``none`` edges, each with a uniform non-``none`` op. Nodes with exactly 2 edges are untouched.
    """
    genes = list(_check_ints(ints))
    for c in range(len(CELL_TYPES)):
        for node in range(NUM_NODES):
            positions = _edges_of(c, node)
            kept = [p for p in positions if genes[p]]
            if len(kept) > 2:
                keep = set(int(p) for p in rng.choice(kept, size=2, replace=False))
                for p in kept:
                    if p not in keep:
                        genes[p] = 0
            elif len(kept) < 2:
                empty = [p for p in positions if not genes[p]]
                for p in rng.choice(empty, size=2 - len(kept), replace=False):
                    genes[int(p)] = int(rng.integers(1, len(PRIMITIVES)))
    return tuple(genes)


# --------------------------------------------------------------------------------------------------
# The search space
# --------------------------------------------------------------------------------------------------
class DartsSpace(SearchSpace):
    """The DARTS space over the 28-int encoding: normal and reduce cells searched jointly.

    |space| = (C(2,2)·C(3,2)·C(4,2)·C(5,2) · 7^8)^2 = (1,800 · 5,764,801)^2 ≈ 1.1e20.
    """

    name = "darts"

    @property
    def num_genes(self) -> int:
        return NUM_GENES

    def validate(self, arch: Arch) -> Arch:
        values = _check_ints(arch)
        decode(values)
        return values

    def sample(self, rng: np.random.Generator) -> Arch:
        """Uniform: per node, 2 distinct inputs among its predecessors and a uniform non-``none`` op on each."""
        genes = [0] * NUM_GENES
        for c in range(len(CELL_TYPES)):
            for node in range(NUM_NODES):
                _draw_node(genes, _edges_of(c, node), rng)
        return tuple(genes)

    def mutate(self, arch: Arch, prob: float, rng: np.random.Generator) -> Arch:
        """Each of the 28 edges (normal AND reduce) is re-drawn uniformly over all 8 ops (``none`` included)
        with probability ``prob``; then :func:`repair` restores 2 edges per node."""
        genes = list(self.validate(arch))
        redraw = rng.random(NUM_GENES) < prob
        new = rng.integers(0, len(PRIMITIVES), size=NUM_GENES)
        genes = [int(n) if r else g for g, r, n in zip(genes, redraw, new)]
        return repair(genes, rng)

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover with the node as the unit: each of the 8 nodes (4 normal, 4 reduce) takes all of
        its edges from one parent chosen with probability 1/2. A node's two kept edges stay together, so the
        child is valid with no repair and every child node exists in a parent."""
        a, b = self.validate(a), self.validate(b)
        child = list(a)
        for c in range(len(CELL_TYPES)):
            for node in range(NUM_NODES):
                if rng.random() < 0.5:
                    for p in _edges_of(c, node):
                        child[p] = b[p]
        return tuple(child)

    def key(self, arch: Arch) -> str:
        """The encoding is canonical (one gene per edge, so no pair-order ambiguity): its digits."""
        return ",".join(str(g) for g in self.validate(arch))

    def to_string(self, arch: Arch) -> str:
        return format_genotype(decode(arch))

    def from_string(self, text: str) -> Arch:
        return encode(parse_genotype(text))

    def to_json(self, arch: Arch) -> dict[str, Any]:
        g = decode(arch)
        return {"space": self.name, "genotype": genotype_to_json(g), "arch": format_genotype(g)}

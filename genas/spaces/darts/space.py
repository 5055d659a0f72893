"""The DARTS cell search space the one-shot search runs on: sampling, mutation, crossover and repair over the
reference 28-integer encoding (:mod:`genas.spaces.darts.genotype`)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from genas.spaces.base import Arch, SearchSpace, check_option
from genas.spaces.darts.genotype import (CELL_TYPES, EDGES_PER_CELL, NODE_EDGES, NUM_GENES, NUM_NODES, PRIMITIVES,
                                         _check_ints, decode, encode, format_genotype, genotype_to_json)
from genas.spaces.darts.published import parse_genotype

__all__ = ["DartsSpace", "repair", "CROSSOVERS", "MUTATION_GENES", "MUTATION_OPS"]

CROSSOVERS = ("per_node", "per_gene")
MUTATION_GENES = ("all", "normal")
MUTATION_OPS = ("all", "no_none")


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
    crossover_mode, mutation_genes, mutation_ops = "per_node", "all", "all"  # defaults of __init__ (also for subclasses that skip it)

    def __init__(self, crossover: str | None = None, mutation_genes: str = "all", mutation_ops: str = "all"):
        crossover = check_option("search.crossover", "per_node" if crossover is None else crossover, CROSSOVERS,
                                 self.name)
        check_option("search.mutation_genes", mutation_genes, MUTATION_GENES, self.name)
        check_option("search.mutation_ops", mutation_ops, MUTATION_OPS, self.name)
        self.crossover_mode, self.mutation_genes, self.mutation_ops = crossover, mutation_genes, mutation_ops

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
        with probability ``prob``; then :func:`repair` restores 2 edges per node. With
        ``mutation_genes="normal"`` only the 14 normal-cell genes can change (the reference code's loop, which
        produced the published cells); with ``mutation_ops="no_none"`` a re-drawn gene is never ``none``."""
        genes = list(self.validate(arch))
        redraw = rng.random(NUM_GENES) < prob
        if self.mutation_genes == "normal":
            redraw[EDGES_PER_CELL:] = False
        low = 1 if self.mutation_ops == "no_none" else 0
        new = rng.integers(low, len(PRIMITIVES), size=NUM_GENES)
        genes = [int(n) if r else g for g, r, n in zip(genes, redraw, new)]
        return repair(genes, rng)

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover with the node as the unit: each of the 8 nodes (4 normal, 4 reduce) takes all of
        its edges from one parent chosen with probability 1/2. A node's two kept edges stay together, so the
        child is valid with no repair and every child node exists in a parent.

        ``crossover="per_gene"`` (the reference): each of the 28 genes comes from either parent with
        probability 1/2, then :func:`repair` restores 2 edges per node."""
        a, b = self.validate(a), self.validate(b)
        if self.crossover_mode == "per_gene":
            from_a = rng.random(NUM_GENES) < 0.5
            return repair([x if take_a else y for x, y, take_a in zip(a, b, from_a)], rng)
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

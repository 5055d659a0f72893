"""The NAS-Bench-201 (NATS-Bench topology) search space: architectures, the standalone network, the supernet.

An architecture is a tuple of 6 op indices (into :data:`OP_NAMES`), one per cell edge in the order of
:data:`EDGES`: ``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``. A node is the sum of its incoming edges; node 3 is
the cell output. Its text form is the benchmark's arch string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``,
which is also the only link to a benchmark index (row of the benchmark table): enumeration order here is
lexicographic in the genes, not the benchmark's.

Edges that cannot reach the cell output (their target node only feeds ``none`` edges) are instantiated,
as in the benchmark (so parameter counts match it), but never run: they cannot change the output. An edge
is *active* when its op is not ``none`` and its target node reaches the output; only active edges run,
receive gradients and belong to an architecture's path.
"""
from __future__ import annotations

import functools
import itertools
import operator
from typing import Sequence

import numpy as np

from genas.spaces.base import Arch, SearchSpace, SpaceOptionError, check_option
from genas.spaces.nb201.ops import OP_NAMES

__all__ = [
    "OP_NAMES", "EDGES", "NUM_NODES", "CellPlan", "NB201Space", "parse_arch_string", "format_arch_string",
    "unique_string", "validate_arch", "cell_plan", "enumerate_archs", "unique_archs",
]

EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (node, input node) of each gene
NUM_NODES = 4
ARCH_STRING_FORMAT = "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"

# Per computed node, in order: (node, ((gene, input node), ...)) over its active edges.
CellPlan = tuple[tuple[int, tuple[tuple[int, int], ...]], ...]


def validate_arch(arch: Sequence[int]) -> Arch:
    """``arch`` as a tuple of 6 Python ints in ``[0, 5)``; ``ValueError`` saying which gene is wrong."""
    try:
        genes = tuple(operator.index(g) for g in arch)
    except TypeError as err:
        raise ValueError(f"an NB201 architecture is a sequence of 6 integer op indices, got {arch!r}") from err
    if len(genes) != len(EDGES):
        raise ValueError(f"an NB201 architecture has {len(EDGES)} genes (one per edge node<-input "
                         f"{EDGES}), got {len(genes)}: {arch!r}")
    for gene, value in enumerate(genes):
        if not 0 <= value < len(OP_NAMES):
            node, src = EDGES[gene]
            raise ValueError(f"gene {gene} (edge {node}<-{src}) of {arch!r} is {value}; op indices are "
                             f"0..{len(OP_NAMES) - 1} for {OP_NAMES}")
    return genes


def parse_arch_string(text: str) -> Arch:
    """The architecture of a benchmark arch string; ``ValueError`` naming the malformed part."""
    if not isinstance(text, str):
        raise ValueError(f"an NB201 arch string must be a str like {ARCH_STRING_FORMAT!r}, got {text!r}")
    groups = text.strip().split("+")
    if len(groups) != NUM_NODES - 1:
        raise ValueError(f"NB201 arch string {text!r} has {len(groups)} node groups separated by '+', "
                         f"expected {NUM_NODES - 1} (format {ARCH_STRING_FORMAT!r})")
    genes = []
    for node, group in enumerate(groups, start=1):
        if len(group) < 2 or group[0] != "|" or group[-1] != "|":
            raise ValueError(f"node {node} group {group!r} of NB201 arch string {text!r} must be enclosed "
                             f"in '|' (format {ARCH_STRING_FORMAT!r})")
        entries = group[1:-1].split("|")
        if len(entries) != node:
            raise ValueError(f"node {node} group {group!r} of NB201 arch string {text!r} has {len(entries)} "
                             f"entries, expected {node} (one 'op~input' per input node 0..{node - 1})")
        for src, entry in enumerate(entries):
            op, sep, index = entry.rpartition("~")
            if not sep:
                raise ValueError(f"entry {entry!r} of node {node} in NB201 arch string {text!r} is not 'op~input'")
            if op not in OP_NAMES:
                raise ValueError(f"unknown op {op!r} in entry {entry!r} of node {node} in NB201 arch string "
                                 f"{text!r}; ops are {OP_NAMES}")
            if index != str(src):
                raise ValueError(f"entry {entry!r} of node {node} in NB201 arch string {text!r} has input "
                                 f"index {index!r}, expected {src} (inputs 0..{node - 1} in order)")
            genes.append(OP_NAMES.index(op))
    return tuple(genes)


def format_arch_string(arch: Sequence[int]) -> str:
    """The benchmark arch string of ``arch`` (inverse of :func:`parse_arch_string`)."""
    arch = validate_arch(arch)
    groups = [[] for _ in range(NUM_NODES - 1)]
    for (node, src), gene in zip(EDGES, arch):
        groups[node - 1].append(f"{OP_NAMES[gene]}~{src}")
    return "+".join("|" + "|".join(group) + "|" for group in groups)


def unique_string(arch: Sequence[int]) -> str:
    """The benchmark's isomorphism key of ``arch`` (its ``UniqueString``; 6,466 distinct over the space).

    The cell output is written as an expression of node 0: ``skip_connect`` passes its input's expression,
    another op wraps it as ``(expr)@op``, ``none`` or an op whose input is a single zero term gives ``#``,
    and the terms of a sum are sorted (addition commutes). Equal keys imply the same function (taking, like
    the benchmark, an op of a zero input as zero). The converse fails in a few places, kept for parity with
    the benchmark's 6,466 classes: a zero *sum* (``#+#``) is not folded to ``#``, and a sum passed on by
    ``skip_connect`` stays one term instead of being merged into the sorted sum of the next node.
    """
    arch = validate_arch(arch)
    expressions = ["0"]
    for node in range(1, NUM_NODES):
        terms = []
        for (target, src), gene in zip(EDGES, arch):
            if target != node:
                continue
            op, operand = OP_NAMES[gene], expressions[src]
            if op == "none" or operand == "#":
                terms.append("#")
            elif op == "skip_connect":
                terms.append(operand)
            else:
                terms.append(f"({operand})@{op}")
        expressions.append("+".join(sorted(terms)))
    return expressions[-1]


@functools.lru_cache(maxsize=None)
def cell_plan(arch: Arch) -> CellPlan:
    """The nodes to compute and their active edges (see the module docstring), cached per architecture."""
    arch = validate_arch(arch)
    live_nodes = {NUM_NODES - 1}
    for node in range(NUM_NODES - 2, 0, -1):  # consumers of a node come after it: walk backwards
        if any(src == node and target in live_nodes and gene != 0 for (target, src), gene in zip(EDGES, arch)):
            live_nodes.add(node)
    return tuple(
        (node, tuple((k, src) for k, ((target, src), gene) in enumerate(zip(EDGES, arch))
                     if target == node and gene != 0))
        for node in sorted(live_nodes)
    )


@functools.cache
def enumerate_archs() -> tuple[Arch, ...]:
    """All 5^6 = 15,625 architectures, in lexicographic gene order (not the benchmark's index order)."""
    return tuple(itertools.product(range(len(OP_NAMES)), repeat=len(EDGES)))


@functools.cache
def unique_archs() -> tuple[Arch, ...]:
    """One architecture per :func:`unique_string` (6,466): the first of each class in :func:`enumerate_archs`."""
    first: dict[str, Arch] = {}
    for arch in enumerate_archs():
        first.setdefault(unique_string(arch), arch)
    return tuple(first.values())


CROSSOVERS = ("per_gene", "per_node")
MUTATION_OPS = ("all", "no_none")


class NB201Space(SearchSpace):
    """NAS-Bench-201 genes: 6 edges x 5 ops; SPOS-style sampling, mutation and crossover.

    Options (the config's ``search`` section, see :func:`genas.spaces.get_space`): ``crossover`` ``per_gene``
    (default, as RLNAS) or ``per_node`` (each node takes all its incoming edges from one parent);
    ``mutation_ops`` ``all`` (default: a mutated gene is drawn over all 5 ops) or ``no_none`` (RLNAS: over the 4
    ops other than ``none``); ``mutation_genes`` only ``all`` (NB201 has one cell type).
    """

    name = "nb201"
    crossover_mode, mutation_ops, mutation_genes = "per_gene", "all", "all"  # defaults of __init__ (also for subclasses that skip it)

    def __init__(self, crossover: str | None = None, mutation_ops: str = "all", mutation_genes: str = "all"):
        crossover = check_option("search.crossover", "per_gene" if crossover is None else crossover, CROSSOVERS,
                                 self.name)
        check_option("search.mutation_ops", mutation_ops, MUTATION_OPS, self.name)
        if mutation_genes != "all":
            raise SpaceOptionError(f"search.mutation_genes={mutation_genes!r} is a DARTS option (normal-cell genes "
                                   f"only); NB201 has one cell type: use 'all'")
        self.crossover_mode, self.mutation_ops, self.mutation_genes = crossover, mutation_ops, mutation_genes

    @property
    def num_genes(self) -> int:
        return len(EDGES)

    def validate(self, arch: Arch) -> Arch:
        return validate_arch(arch)

    def sample(self, rng: np.random.Generator) -> Arch:
        return tuple(int(g) for g in rng.integers(0, len(OP_NAMES), size=len(EDGES)))

    def sample_cells(self, rng: np.random.Generator, num_cells: int) -> tuple[Arch, ...]:
        """RLNAS training sampler (``train.sampling=per_cell``): every cell draws its own architecture, node by
        node: the ops of a node's incoming edges are drawn uniformly over the 5 ops, all of them again while
        every one is ``none`` (so each node has a non-``none`` input; node 1's single edge is never ``none``)."""
        cells = []
        for _ in range(num_cells):
            genes = [0] * len(EDGES)
            for node in range(1, NUM_NODES):
                positions = [k for k, (target, _) in enumerate(EDGES) if target == node]
                while True:
                    ops = rng.integers(0, len(OP_NAMES), size=len(positions))
                    if ops.any():
                        break
                for k, op in zip(positions, ops):
                    genes[k] = int(op)
            cells.append(tuple(genes))
        return tuple(cells)

    def mutate(self, arch: Arch, prob: float, rng: np.random.Generator) -> Arch:
        """Each gene is re-drawn uniformly (possibly to the same op, as in SPOS) with probability ``prob``:
        over all 5 ops, or with ``mutation_ops="no_none"`` over the 4 that are not ``none`` (RLNAS)."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mutation probability must be in [0, 1], got {prob}")
        arch = validate_arch(arch)
        redraw = rng.random(len(EDGES)) < prob
        low = 1 if self.mutation_ops == "no_none" else 0
        fresh = rng.integers(low, len(OP_NAMES), size=len(EDGES))
        return tuple(int(f) if r else g for g, r, f in zip(arch, redraw, fresh))

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover: per gene (default, RLNAS), or with ``crossover="per_node"`` per node (a node's
        incoming edges all come from one parent, each parent with probability 1/2)."""
        a, b = validate_arch(a), validate_arch(b)
        if self.crossover_mode == "per_node":
            node_from_a = rng.random(NUM_NODES - 1) < 0.5
            from_a = [node_from_a[target - 1] for target, _ in EDGES]
        else:
            from_a = rng.random(len(EDGES)) < 0.5
        return tuple(x if take_a else y for x, y, take_a in zip(a, b, from_a))

    def key(self, arch: Arch) -> str:
        return unique_string(arch)

    def to_string(self, arch: Arch) -> str:
        return format_arch_string(arch)

    def from_string(self, text: str) -> Arch:
        return parse_arch_string(text)

    def enumerate_archs(self) -> tuple[Arch, ...]:
        return enumerate_archs()

    def unique_archs(self) -> tuple[Arch, ...]:
        return unique_archs()

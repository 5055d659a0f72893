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
import re
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from genas.spaces.base import Arch, SearchSpace, Supernet, check_positions
from genas.spaces.nb201_ops import OP_NAMES, ResNetBasicBlock, make_op

__all__ = [
    "OP_NAMES", "EDGES", "NB201Space", "NB201Network", "NB201Supernet", "build_network", "parse_arch_string",
    "format_arch_string", "unique_string", "enumerate_archs", "unique_archs",
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


def run_cell(x: torch.Tensor, plan: CellPlan, ops: Sequence[nn.Module]) -> torch.Tensor:
    """Output node of a cell: each planned node is the sum of ``ops[gene](input node)`` over its edges."""
    nodes = [x] + [None] * (NUM_NODES - 1)
    for node, edges in plan:
        if not edges:  # every input is 'none': zero, kept in the autograd graph like the benchmark's Zero op
            nodes[node] = x.mul(0.0)
            continue
        (gene, src), *rest = edges
        out = ops[gene](nodes[src])
        for gene, src in rest:
            out = out + ops[gene](nodes[src])
        nodes[node] = out
    return nodes[-1]


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


class NB201Space(SearchSpace):
    """NAS-Bench-201 genes: 6 edges x 5 ops; SPOS-style sampling, mutation and crossover."""

    name = "nb201"

    @property
    def num_genes(self) -> int:
        return len(EDGES)

    def validate(self, arch: Arch) -> Arch:
        return validate_arch(arch)

    def sample(self, rng: np.random.Generator) -> Arch:
        return tuple(int(g) for g in rng.integers(0, len(OP_NAMES), size=len(EDGES)))

    def mutate(self, arch: Arch, prob: float, rng: np.random.Generator) -> Arch:
        """Each gene is re-drawn uniformly (possibly to the same op, as in SPOS) with probability ``prob``."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mutation probability must be in [0, 1], got {prob}")
        arch = validate_arch(arch)
        redraw = rng.random(len(EDGES)) < prob
        fresh = rng.integers(0, len(OP_NAMES), size=len(EDGES))
        return tuple(int(f) if r else g for g, r, f in zip(arch, redraw, fresh))

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        a, b = validate_arch(a), validate_arch(b)
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


class _NB201Macro(nn.Module):
    """The benchmark's macro skeleton: stem Conv3x3+BN; N cells at C, 2C and 4C channels joined by stride-2
    ResNet blocks (all in ``cells``, as in the benchmark); BN-ReLU, global average pool, linear classifier."""

    def __init__(self, make_cell: Callable[[int], nn.Module], num_classes: int, C: int, N: int):
        super().__init__()
        if num_classes < 1 or C < 1 or N < 1:
            raise ValueError(f"NB201 network needs num_classes, C, N >= 1, got {num_classes}, {C}, {N}")
        self.num_classes, self.C, self.N = num_classes, C, N
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        cells: list[nn.Module] = []
        for stage, channels in enumerate((C, 2 * C, 4 * C)):
            if stage:
                cells.append(ResNetBasicBlock(channels // 2, channels))
            cells.extend(make_cell(channels) for _ in range(N))
        self.cells = nn.ModuleList(cells)
        self.num_features = 4 * C
        self.lastact = nn.Sequential(nn.BatchNorm2d(self.num_features), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pooling(self.lastact(x)).flatten(1)
        return x if pre_logits else self.classifier(x)


class InferCell(nn.Module):
    """A fixed cell: ``layers[gene]`` is the edge's op (the benchmark's layout, so parameter names match)."""

    def __init__(self, arch: Arch, channels: int):
        super().__init__()
        self.plan = cell_plan(arch)
        self.layers = nn.ModuleList(make_op(OP_NAMES[g], channels) for g in arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_cell(x, self.plan, self.layers)


class SearchCell(nn.Module):
    """A weight-sharing cell: ``layers[gene][op]`` holds every op of every edge, in :data:`OP_NAMES` order."""

    def __init__(self, channels: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(make_op(name, channels) for name in OP_NAMES) for _ in EDGES)

    def forward(self, x: torch.Tensor, arch: Arch, plan: CellPlan) -> torch.Tensor:
        return run_cell(x, plan, [edge[g] for edge, g in zip(self.layers, arch)])


class NB201Network(_NB201Macro):
    """The standalone benchmark network of one architecture (same parameter names and counts as the
    benchmark's; e.g. 0.129306 M and 0.802426 M for benchmark indices 0 and 1 with 10 classes)."""

    def __init__(self, arch: Arch, num_classes: int = 10, C: int = 16, N: int = 5):
        self.arch = validate_arch(arch)
        super().__init__(functools.partial(InferCell, self.arch), num_classes, C, N)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_network(arch: str | Sequence[int], num_classes: int = 10, C: int = 16, N: int = 5) -> NB201Network:
    """The standalone network of ``arch`` (arch string or gene tuple)."""
    genes = parse_arch_string(arch) if isinstance(arch, str) else validate_arch(arch)
    return NB201Network(genes, num_classes=num_classes, C=C, N=N)


# Supernet state keys of cell ops: cells.<i>.layers.<gene>.<op>.<rest>; the standalone key drops <op>.
_CELL_OP_KEY = re.compile(r"^(cells\.\d+\.layers\.(\d+))\.(\d+)\.(.+)$")


class NB201Supernet(_NB201Macro, Supernet):
    """The one-shot supernet: every edge of every cell holds all five ops; ``forward(x, arch)`` runs only
    the active edges of ``arch`` (``none`` edges and edges that cannot reach the output are skipped).

    Shared parts (stem, reduction blocks, head) have the standalone network's parameter names, and a cell
    op ``cells.i.layers.k.<op>.*`` becomes ``cells.i.layers.k.*``: :meth:`export` builds the standalone
    network of an architecture carrying the supernet's weights and BN statistics.
    """

    def __init__(self, num_classes: int, C: int = 16, N: int = 5):
        super().__init__(SearchCell, num_classes, C, N)
        self.space = NB201Space()
        self._path_names: dict[tuple[Arch, str], list[str]] = {}

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        arch = tuple(arch)
        plan = cell_plan(arch)
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x, arch, plan) if isinstance(cell, SearchCell) else cell(x)
        return self.forward_head(x)

    def path_parameter_names(self, arch: Arch, positions: str = "all") -> list[str]:
        """Parameters the forward of ``arch`` uses, in ``named_parameters()`` order: with ``"all"`` the
        shared parts too, with ``"cells"`` only the ops of active edges. Exactly these get gradients."""
        cache_key = (validate_arch(arch), check_positions(positions))
        if cache_key not in self._path_names:
            arch = cache_key[0]
            active = {gene for _, edges in cell_plan(arch) for gene, _ in edges}
            names = []
            for name, _ in self.named_parameters():
                match = _CELL_OP_KEY.match(name)
                if match is None:
                    if positions == "all":
                        names.append(name)
                elif int(match[2]) in active and int(match[3]) == arch[int(match[2])]:
                    names.append(name)
            self._path_names[cache_key] = names
        return list(self._path_names[cache_key])

    def path_op_names(self, arch: Arch) -> list[str]:
        """Op name of every active edge (``none`` never appears), cell by cell, in gene order:
        3 * N cells x up to 6 edges."""
        arch = validate_arch(arch)
        per_cell = [OP_NAMES[arch[gene]] for _, edges in cell_plan(arch) for gene, _ in edges]
        return per_cell * sum(isinstance(cell, SearchCell) for cell in self.cells)

    def extract_subnet_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The state dict of ``build_network(arch)`` taken from the supernet (tensors shared, not copied)."""
        arch = validate_arch(arch)
        state = {}
        for name, tensor in self.state_dict().items():
            match = _CELL_OP_KEY.match(name)
            if match is None:
                state[name] = tensor
            elif int(match[3]) == arch[int(match[2])]:
                state[f"{match[1]}.{match[4]}"] = tensor
        return state

    def export(self, arch: Arch) -> NB201Network:
        """A standalone network of ``arch`` loaded with the supernet's weights, on the supernet's device and
        dtype and in its train/eval mode."""
        net = build_network(arch, num_classes=self.num_classes, C=self.C, N=self.N)
        net.load_state_dict(self.extract_subnet_state_dict(arch))
        reference = self.classifier.weight
        return net.to(device=reference.device, dtype=reference.dtype).train(self.training)

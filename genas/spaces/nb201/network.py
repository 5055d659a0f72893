"""The standalone NAS-Bench-201 network of one architecture (the benchmark's macro skeleton and inference cell;
parameter names and counts equal the benchmark's)."""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
from torch import nn

from genas.spaces.base import Arch
from genas.spaces.nb201.ops import OP_NAMES, ResNetBasicBlock, make_op
from genas.spaces.nb201.space import NUM_NODES, CellPlan, cell_plan, parse_arch_string, validate_arch

__all__ = ["NB201Network", "build_network", "run_cell"]


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

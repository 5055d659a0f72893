"""The one-shot (SPOS) supernet of the DARTS space: every edge holds all 7 candidate ops, one path runs per step.

Layout follows the DARTS search network (stem -> 3C, ``layers`` cells with reductions at ``layers // 3`` and
``2 * layers // 3``, global pool, Linear). All normal cells share the arch's normal half and all reduction
cells its reduce half, as in DARTS. An edge whose gene is ``none`` is simply absent, so ``none`` has no module.

BN affine defaults to ``True`` (unlike DARTS search, where ``affine=False`` keeps BN scales from competing with
the continuous architecture weights): SPOS has no such weights, each op trains only when its path is sampled,
and the flatness and angle scores of the paper perturb / compare BN affine parameters along with the convs.
"""
from __future__ import annotations

import torch
from torch import nn

from genas.spaces.base import Arch, Supernet, check_positions, unique_in_order
from genas.spaces.darts.genotype import CONCAT, EDGE_INPUT, EDGES_PER_CELL, NODE_EDGES, PRIMITIVES
from genas.spaces.darts.space import DartsSpace
from genas.spaces.darts.ops import OPS, FactorizedReduce
from genas.spaces.ops import ReLUConvBN

__all__ = ["DartsSupernet", "SupernetCell"]

CANDIDATES: tuple[str, ...] = PRIMITIVES[1:]  # 'none' = edge absent


def _param_names(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name, _ in module.named_parameters()]


STRIDED_SKIP = "factorized_reduce"  # path_op_names' name for a skip_connect on a stride-2 edge


class SupernetCell(nn.Module):
    """One DARTS cell holding every candidate op on each of its 14 edges (``edges.K.<op_name>``)."""

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool,
                 affine: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (FactorizedReduce(C_prev_prev, C, affine=affine) if reduction_prev
                            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=affine))
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=affine)
        self.edges = nn.ModuleList(
            nn.ModuleDict({op: OPS[op](C, 2 if reduction and inp < 2 else 1, affine) for op in CANDIDATES})
            for inp in EDGE_INPUT)

    @staticmethod
    def active(genes: Arch) -> list[list[tuple[int, int, str]]]:
        """Per node, its kept ``(edge_index, input_index, op_name)`` in edge order."""
        return [[(e, i, PRIMITIVES[genes[e]]) for e, i in edges if genes[e]] for edges in NODE_EDGES]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, genes: Arch) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in self.active(genes):
            states.append(sum(self.edges[e][op](states[i]) for e, i, op in node))
        return torch.cat([states[j] for j in CONCAT], dim=1)

    def path_parameter_names(self, genes: Arch, prefix: str, positions: str) -> list[str]:
        names = []
        if positions == "all":
            names += _param_names(self.preprocess0, f"{prefix}.preprocess0")
            names += _param_names(self.preprocess1, f"{prefix}.preprocess1")
        for node in self.active(genes):
            for e, _, op in node:
                names += _param_names(self.edges[e][op], f"{prefix}.edges.{e}.{op}")
        return names


class DartsSupernet(Supernet):
    """SPOS supernet over :class:`~genas.spaces.darts.DartsSpace` (CIFAR-sized: stem at stride 1).

    ``forward(x, arch)`` with ``arch`` the 28-int encoding runs only the 2 chosen ops of each node.
    """

    def __init__(self, num_classes: int, C: int = 16, layers: int = 8, stem_multiplier: int = 3,
                 affine: bool = True, in_chans: int = 3):
        super().__init__()
        if layers < 3:
            raise ValueError(f"layers must be >= 3 (two reduction cells at layers//3 and 2*layers//3), got {layers}")
        self.space = DartsSpace()
        self.num_classes = num_classes
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_chans, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        self.reduction_layers = (layers // 3, 2 * layers // 3)
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        cells, reduction_prev = [], False
        for i in range(layers):
            reduction = i in self.reduction_layers
            if reduction:
                C_curr *= 2
            cells.append(SupernetCell(C_prev_prev, C_prev, C_curr, reduction, reduction_prev, affine))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, len(CONCAT) * C_curr
        self.cells = nn.ModuleList(cells)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def _cell_genes(self, arch: Arch) -> tuple[Arch, Arch]:
        arch = self.space.validate(arch)
        return arch[:EDGES_PER_CELL], arch[EDGES_PER_CELL:]

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        normal, reduce = self._cell_genes(arch)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def path_parameter_names(self, arch: Arch, positions: str = "all") -> list[str]:
        positions = check_positions(positions)
        normal, reduce = self._cell_genes(arch)
        names = _param_names(self.stem, "stem") if positions == "all" else []
        for k, cell in enumerate(self.cells):
            names += cell.path_parameter_names(reduce if cell.reduction else normal, f"cells.{k}", positions)
        if positions == "all":
            names += _param_names(self.classifier, "classifier")
        return unique_in_order(names)

    def path_op_names(self, arch: Arch) -> list[str]:
        """8 op names per cell (its nodes' kept edges in edge order), cells in network order. A skip on a
        stride-2 edge of a reduction cell is a ``FactorizedReduce`` with weights, so it is named
        ``factorized_reduce``: the angle score adds identity constants only for true (parameter-free) skips."""
        normal, reduce = self._cell_genes(arch)
        return [STRIDED_SKIP if cell.reduction and i < 2 and op == "skip_connect" else op
                for cell in self.cells for node in cell.active(reduce if cell.reduction else normal)
                for _, i, op in node]

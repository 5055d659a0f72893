"""The one-shot (SPOS) supernet of the DARTS space: every edge holds all 7 candidate ops, one path runs per step.

Layout follows the DARTS search network (stem -> 3C, ``layers`` cells with reductions at ``layers // 3`` and
``2 * layers // 3``, global pool, Linear). All normal cells share the arch's normal half and all reduction
cells its reduce half, as in DARTS. An edge whose gene is ``none`` is simply absent, so ``none`` has no module.

BN affine defaults to ``True`` (unlike DARTS search, where ``affine=False`` keeps BN scales from competing with
the continuous architecture weights): SPOS has no such weights, each op trains only when its path is sampled,
and the flatness and angle scores of the paper perturb / compare BN affine parameters along with the convs.
"""
from __future__ import annotations

import functools
import re
from typing import Mapping

import torch
from torch import nn

from genas.spaces.base import Arch, Supernet, check_positions, unique_in_order
from genas.spaces.darts.genotype import CONCAT, EDGE_INPUT, EDGES_PER_CELL, NODE_EDGES, PRIMITIVES
from genas.spaces.darts.space import DartsSpace
from genas.spaces.darts.ops import OPS, FactorizedReduce
from genas.spaces.ops import ReLUConvBN
from genas.spaces.pooling import AvgPool2d

__all__ = ["DartsSupernet", "SupernetCell"]

CANDIDATES: tuple[str, ...] = PRIMITIVES[1:]  # 'none' = edge absent
POOLS = ("max_pool_3x3", "avg_pool_3x3")

# Paths of the reference angle vector (GeNAS evolution_search config.paths): every path from an input node
# (0, 1) through increasing intermediate nodes (2..5) to each intermediate node, in the reference's order.
REFERENCE_ANGLE_PATHS: tuple[tuple[int, ...], ...] = (
    (0, 2, 3, 4, 5), (0, 2, 3, 5), (0, 2, 4, 5), (0, 2, 5), (0, 3, 4, 5), (0, 3, 5), (0, 4, 5), (0, 5),
    (1, 2, 3, 4, 5), (1, 2, 3, 5), (1, 2, 4, 5), (1, 2, 5), (1, 3, 4, 5), (1, 3, 5), (1, 4, 5), (1, 5),
    (0, 2, 3, 4), (0, 2, 4), (0, 3, 4), (0, 4), (1, 2, 3, 4), (1, 2, 4), (1, 3, 4), (1, 4),
    (0, 2, 3), (0, 3), (1, 2, 3), (1, 3), (0, 2), (1, 2))
_NODE_OFFSET = {2: 0, 3: 2, 4: 5, 5: 9}  # edge index of input k -> node j is k + offset(j)
# Reference supernet keys of an edge op: cells.K._ops.EDGE._ops.PRIMITIVE_INDEX.rest
_REFERENCE_OP_KEY = re.compile(r"^(cells\.\d+)\._ops\.(\d+)\._ops\.(\d+)\.(.+)$")


def _param_names(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name, _ in module.named_parameters()]


@functools.lru_cache(maxsize=4096)
def _active(genes: Arch) -> tuple[tuple[tuple[int, int, str], ...], ...]:
    """:meth:`SupernetCell.active` of a gene tuple, computed once per cell architecture."""
    return tuple(tuple((e, i, PRIMITIVES[genes[e]]) for e, i in edges if genes[e]) for edges in NODE_EDGES)


STRIDED_SKIP = "factorized_reduce"  # path_op_names' name for a skip_connect on a stride-2 edge


class SupernetCell(nn.Module):
    """One DARTS cell holding every candidate op on each of its 14 edges (``edges.K.<op_name>``)."""

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool,
                 affine: bool, pool_bn: bool = False):
        super().__init__()
        self.reduction = reduction
        self.channels = C
        self.preprocess0 = (FactorizedReduce(C_prev_prev, C, affine=affine) if reduction_prev
                            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=affine))
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=affine)

        def make(op: str, stride: int) -> nn.Module:
            if op == "avg_pool_3x3":  # OPS' pooling with the fast path of genas.spaces.pooling (same function)
                module = AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
            else:
                module = OPS[op](C, stride, affine)
            if pool_bn and op in POOLS:  # the reference MixedOp: pooling -> BatchNorm
                module = nn.Sequential(module, nn.BatchNorm2d(C, affine=affine))
            return module

        self.edges = nn.ModuleList(
            nn.ModuleDict({op: make(op, 2 if reduction and inp < 2 else 1) for op in CANDIDATES})
            for inp in EDGE_INPUT)

    @staticmethod
    def active(genes: Arch) -> list[list[tuple[int, int, str]]]:
        """Per node, its kept ``(edge_index, input_index, op_name)`` in edge order."""
        return [list(node) for node in _active(tuple(genes))]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, genes: Arch) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in _active(tuple(genes)):
            # the node's edges added directly (Python's sum() would first add a 0: one more kernel per node)
            out = None
            for e, i, op in node:
                y = self.edges[e][op](states[i])
                out = y if out is None else out + y
            states.append(out)
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
                 affine: bool = True, in_chans: int = 3, pool_bn: bool = False):
        super().__init__()
        self.pool_bn = pool_bn
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
            cells.append(SupernetCell(C_prev_prev, C_prev, C_curr, reduction, reduction_prev, affine, pool_bn))
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

    # ------------------------------------------------------------------------------------------------
    # Interop with the reference supernet (GeNAS / RLNAS super_model.Network) and its angle vector
    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def convert_reference_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reference keys ``cells.K._ops.E._ops.IDX.rest`` (IDX into the 8 PRIMITIVES) as this supernet's
        ``cells.K.edges.E.<op name>.rest``; every other key (stem, preprocess, classifier) is named alike.
        A pooling op's BN (``_ops.1.1.*`` / ``_ops.2.1.*``) lands in ``edges.E.<pool>.1.*``, which exists with
        ``pool_bn=True`` only."""
        out = {}
        for name, tensor in state.items():
            match = _REFERENCE_OP_KEY.match(name)
            if match is not None and int(match[3]) < len(PRIMITIVES):
                name = f"{match[1]}.edges.{match[2]}.{PRIMITIVES[int(match[3])]}.{match[4]}"
            out[name] = tensor
        return out

    @staticmethod
    def is_reference_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
        return any(_REFERENCE_OP_KEY.match(k) for k in state)

    def reference_angle_vector(self, weights: Mapping[str, torch.Tensor], arch: Arch) -> torch.Tensor:
        """The reference DARTS angle vector (GeNAS ``cand_evaluator.get_arch_vector``) of ``arch`` from
        ``weights`` (names of this supernet), float64 on the CPU.

        Per cell, for each of the 30 :data:`REFERENCE_ANGLE_PATHS` without a ``none`` edge, the weights of
        its edges (an edge shared by several paths is repeated once per path): pooling = a C x 3 x 3 kernel of
        1/9 plus its pool-BN scale and shift (with ``pool_bn``); a stride-1 skip = ``eye(C)``; a stride-2 skip
        = its FactorizedReduce weights and BN; sep_conv = its 4 convs, then its 2 BNs' scale and shift;
        dil_conv = its 2 convs, then its BN scale twice (the reference's quirk: the shift never appears).
        Then the stem conv and BN, each cell's preprocess0/1 (conv + BN scale/shift) and the classifier weight
        (no bias). Entries absent from this supernet (BN scale/shift with ``affine=False``) are left out.
        """
        normal, reduce = self._cell_genes(arch)

        def w(*names: str) -> list[torch.Tensor]:
            return [weights[n].detach().reshape(-1).to("cpu", torch.float64) for n in names if n in weights]

        def preprocess(prefix: str, module: nn.Module) -> list[torch.Tensor]:
            if isinstance(module, FactorizedReduce):
                return w(f"{prefix}.conv_1.weight", f"{prefix}.conv_2.weight", f"{prefix}.bn.weight",
                         f"{prefix}.bn.bias")
            return w(f"{prefix}.op.1.weight", f"{prefix}.op.2.weight", f"{prefix}.op.2.bias")

        cell_parts: list[torch.Tensor] = []
        extra = w("stem.0.weight", "stem.1.weight", "stem.1.bias")
        for k, cell in enumerate(self.cells):
            genes = reduce if cell.reduction else normal
            extra += preprocess(f"cells.{k}.preprocess0", cell.preprocess0)
            extra += preprocess(f"cells.{k}.preprocess1", cell.preprocess1)
            C = cell.channels
            for path in REFERENCE_ANGLE_PATHS:
                pieces: list[torch.Tensor] = []
                for src, node in zip(path, path[1:]):
                    edge = src + _NODE_OFFSET[node]
                    op = PRIMITIVES[genes[edge]]
                    p = f"cells.{k}.edges.{edge}.{op}"
                    if op == "none":
                        pieces = []
                        break
                    if op in POOLS:
                        pieces += [torch.full((C * 9,), 1.0 / 9.0, dtype=torch.float64),
                                   *w(f"{p}.1.weight", f"{p}.1.bias")]
                    elif op == "skip_connect":
                        if isinstance(cell.edges[edge][op], FactorizedReduce):
                            pieces += preprocess(p, cell.edges[edge][op])
                        else:
                            pieces.append(torch.eye(C, dtype=torch.float64).reshape(-1))
                    elif op.startswith("sep_conv"):
                        pieces += w(*(f"{p}.op.{i}.weight" for i in (1, 2, 5, 6)))
                        pieces += w(f"{p}.op.3.weight", f"{p}.op.3.bias", f"{p}.op.7.weight", f"{p}.op.7.bias")
                    else:  # dil_conv
                        pieces += w(f"{p}.op.1.weight", f"{p}.op.2.weight")
                        pieces += w(f"{p}.op.3.weight", f"{p}.op.3.weight")
                cell_parts += pieces
        extra += w("classifier.weight")
        return torch.cat(cell_parts + extra)

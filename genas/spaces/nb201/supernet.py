"""The NAS-Bench-201 one-shot supernet (every edge holds all five ops; SPOS trains one path per step)."""
from __future__ import annotations

import re

import torch
from torch import nn

from genas.spaces.base import Arch, Supernet, check_positions
from genas.spaces.nb201.network import NB201Network, _NB201Macro, build_network, run_cell
from genas.spaces.nb201.ops import OP_NAMES, make_op
from genas.spaces.nb201.space import EDGES, CellPlan, NB201Space, cell_plan, validate_arch

__all__ = ["NB201Supernet", "SearchCell"]


class SearchCell(nn.Module):
    """A weight-sharing cell: ``layers[gene][op]`` holds every op of every edge, in :data:`OP_NAMES` order."""

    def __init__(self, channels: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(make_op(name, channels) for name in OP_NAMES) for _ in EDGES)

    def forward(self, x: torch.Tensor, arch: Arch, plan: CellPlan) -> torch.Tensor:
        return run_cell(x, plan, [edge[g] for edge, g in zip(self.layers, arch)])


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

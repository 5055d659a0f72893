"""The NAS-Bench-201 one-shot supernet (every edge holds all five ops; SPOS trains one path per step)."""
from __future__ import annotations

import functools
import re
from typing import Mapping, Sequence

import torch
from torch import nn

from genas.spaces.base import Arch, Supernet, check_positions
from genas.spaces.nb201.network import NB201Network, _NB201Macro, build_network, run_cell
from genas.spaces.nb201.ops import OP_NAMES, make_op
from genas.spaces.nb201.space import EDGES, CellPlan, NB201Space, cell_plan, validate_arch

__all__ = ["NB201Supernet", "SearchCell"]


class SearchCell(nn.Module):
    """A weight-sharing cell: ``layers[gene][op]`` holds every op of every edge, in :data:`OP_NAMES` order."""

    def __init__(self, channels: int, affine: bool = True):
        super().__init__()
        self.channels = channels
        self.layers = nn.ModuleList(
            nn.ModuleList(make_op(name, channels, affine) for name in OP_NAMES) for _ in EDGES)

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

    def __init__(self, num_classes: int, C: int = 16, N: int = 5, affine: bool = True):
        super().__init__(functools.partial(SearchCell, affine=affine), num_classes, C, N)
        self.affine = affine
        self.space = NB201Space()
        self._path_names: dict[tuple[Arch, str], list[str]] = {}

    @property
    def num_search_cells(self) -> int:
        return sum(isinstance(cell, SearchCell) for cell in self.cells)

    def forward(self, x: torch.Tensor, arch: Arch | Sequence[Arch]) -> torch.Tensor:
        """Logits of ``arch`` (6 genes, shared by every cell), or of one architecture per search cell
        (a sequence of :attr:`num_search_cells` gene tuples: the RLNAS per-cell training sampler)."""
        arch = tuple(arch)
        if arch and isinstance(arch[0], (tuple, list)):
            per_cell = [tuple(a) for a in arch]
            if len(per_cell) != self.num_search_cells:
                raise ValueError(f"got {len(per_cell)} per-cell architectures for {self.num_search_cells} cells")
        else:
            per_cell = [arch] * self.num_search_cells
        x = self.stem(x)
        k = 0
        for cell in self.cells:
            if isinstance(cell, SearchCell):
                x = cell(x, per_cell[k], cell_plan(per_cell[k]))
                k += 1
            else:
                x = cell(x)
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
        dtype and in its train/eval mode. With ``affine=False`` its cell BNs get scale 1 and shift 0 (the same
        function)."""
        net = build_network(arch, num_classes=self.num_classes, C=self.C, N=self.N)
        state = self.extract_subnet_state_dict(arch)
        for name, tensor in net.state_dict().items():
            if name not in state and name.endswith((".weight", ".bias")) and not self.affine:
                state[name] = torch.ones_like(tensor) if name.endswith(".weight") else torch.zeros_like(tensor)
        net.load_state_dict(state)
        reference = self.classifier.weight
        return net.to(device=reference.device, dtype=reference.dtype).train(self.training)

    # ------------------------------------------------------------------------------------------------
    # Interop with the RLNAS supernet (AutoDL SearchCell layout) and its angle vector
    # ------------------------------------------------------------------------------------------------
    def reference_angle_vector(self, weights: Mapping[str, torch.Tensor], arch: Arch) -> torch.Tensor | None:
        """The RLNAS NB201 angle vector (``exps/angle/weight_angle.py``) of ``arch`` from ``weights`` (names of
        this supernet), float64 on the CPU; ``None`` when every input-to-output path has a ``none`` edge (RLNAS
        then scores the angle 0).

        Head (stem conv, stem BN scale/shift), then for each of the 4 input-to-output paths
        (0-3, 0-2-3, 0-1-2-3, 0-1-3) and each search cell the path's edges: a conv edge adds its conv weight
        only, avg_pool a C x 3 x 3 kernel of 1/9, skip nothing; a path through a ``none`` edge is dropped. The
        two ResNet blocks (conv_a, conv_b with their BN scale/shift, the shortcut conv) appear once, and the
        tail is lastact's BN scale/shift and the classifier weight and bias.
        """
        arch = validate_arch(arch)

        def w(name: str) -> torch.Tensor:
            return weights[name].detach().reshape(-1).to("cpu", torch.float64)

        parts = [w("stem.0.weight"), w("stem.1.weight"), w("stem.1.bias")]
        blocks_added, open_paths = False, 0
        for path in ((0, 3), (0, 2, 3), (0, 1, 2, 3), (0, 1, 3)):
            genes = [EDGES.index((i, j)) for j, i in zip(path, path[1:])]
            if any(arch[g] == 0 for g in genes):
                continue
            open_paths += 1
            for c, cell in enumerate(self.cells):
                if not isinstance(cell, SearchCell):
                    if not blocks_added:
                        parts += [w(f"cells.{c}.{n}") for n in (
                            "conv_a.op.1.weight", "conv_a.op.2.weight", "conv_a.op.2.bias", "conv_b.op.1.weight",
                            "conv_b.op.2.weight", "conv_b.op.2.bias", "downsample.1.weight")]
                    continue
                for g in genes:
                    op = OP_NAMES[arch[g]]
                    if op == "avg_pool_3x3":
                        parts.append(torch.full((cell.channels * 9,), 1.0 / 9.0, dtype=torch.float64))
                    elif op.startswith("nor_conv"):
                        parts.append(w(f"cells.{c}.layers.{g}.{arch[g]}.op.1.weight"))
            blocks_added = True
        if open_paths == 0:
            return None
        parts += [w("lastact.0.weight"), w("lastact.0.bias"), w("classifier.weight"), w("classifier.bias")]
        return torch.cat(parts)

    @staticmethod
    def convert_reference_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """RLNAS / AutoDL supernet keys (``cells.K.edges.I<-J.OP.*``, ``arch_parameters``) as this supernet's
        (``cells.K.layers.GENE.OP.*``); the op index order (none, skip, conv1x1, conv3x3, avg_pool) is the same."""
        out = {}
        for name, tensor in state.items():
            if name == "arch_parameters":
                continue  # the architecture weights of the search model: unused by uniform sampling
            match = _REFERENCE_EDGE_KEY.match(name)
            if match is not None:
                node, src = int(match[2]), int(match[3])
                if (node, src) not in EDGES:
                    out[name] = tensor  # left as is: reported as unexpected
                    continue
                name = f"{match[1]}.layers.{EDGES.index((node, src))}.{match[4]}"
            out[name] = tensor
        return out

    @staticmethod
    def is_reference_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
        return any(_REFERENCE_EDGE_KEY.match(k) for k in state)


_REFERENCE_EDGE_KEY = re.compile(r"^(cells\.\d+)\.edges\.(\d+)<-(\d+)\.(.+)$")

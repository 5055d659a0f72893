"""Parameter and FLOP counts of a candidate's standalone network, for search constraints and result tables.

The count is of the network the candidate becomes after the search (NAS-Bench-201: the benchmark network,
C=16, N=5; DARTS: the 20-cell CIFAR network, C=36, :mod:`genas.spaces.darts.network`), not of its path in the supernet, so a
``max_params`` limit means what a paper's table means. Counting is done by fvcore; one fused multiply-add counts
as one FLOP (i.e. MACs, the unit NAS papers report as "FLOPs"), and only the multiply-add operators
(:data:`MAC_OPS`: convolutions and linear layers) are counted, as in the papers: fvcore's plain total also
counts BatchNorm, which adds about 1.5% on the DARTS networks (genas_c100: 588.8M instead of 579.5M).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from genas.spaces.base import Arch, SearchSpace

__all__ = ["import_fvcore_nn", "EVAL_NETWORK", "MAC_OPS", "NetworkCost", "standalone_builder", "count_params", "count_macs", "CostConstraint"]

#: fvcore operator groups that are multiply-adds
MAC_OPS = ("conv", "linear", "matmul", "addmm", "bmm", "einsum")

#: Standalone (evaluation) sizes of each space's networks.
NB201_EVAL = {"C": 16, "N": 5}
DARTS_CIFAR_EVAL = {"C": 36, "layers": 20}
#: What the params / MACs of a space describe, for printouts (not the supernet path's own size).
EVAL_NETWORK = {"nb201": "the C=16, N=5 benchmark network", "darts": "the 20-cell C=36 CIFAR network"}


def import_fvcore_nn():
    """``fvcore.nn``, imported on first use: importing it runs ``torch.jit.script`` on its focal losses, which
    prints torch's ``torch.jit.script`` deprecation ``FutureWarning``; that one warning is silenced here only.
    Detectron2 imports ``fvcore.nn`` too (``detectron2.engine``): :mod:`detection` calls this first."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        import fvcore.nn
    return fvcore.nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (fvcore ``parameter_count``; buffers such as BN statistics excluded)."""
    return int(import_fvcore_nn().parameter_count(model)[""])


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds (fvcore, :data:`MAC_OPS` only) of one forward pass of one image of ``input_shape`` (C, H, W)."""
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's tracer warns about torch.jit deprecations and no-op ops
        analysis = import_fvcore_nn().FlopCountAnalysis(model, torch.zeros(1, *input_shape))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(sum(n for op, n in analysis.by_operator().items() if op in MAC_OPS))


def standalone_builder(space: SearchSpace, num_classes: int) -> Callable[[Arch], nn.Module]:
    """``arch -> nn.Module``: the standalone network of ``arch`` in ``space`` at its evaluation size.

    Built from :mod:`genas.spaces` only (the DARTS retraining networks live in :mod:`genas.spaces.darts.network`).
    """
    if space.name == "nb201":
        from genas.spaces.nb201 import build_network
        return lambda arch: build_network(arch, num_classes=num_classes, **NB201_EVAL)
    if space.name == "darts":
        from genas.spaces.darts.genotype import decode
        from genas.spaces.darts.network import NetworkCIFAR
        return lambda arch: NetworkCIFAR(decode(arch), num_classes=num_classes, **DARTS_CIFAR_EVAL)
    raise ValueError(f"no standalone network is known for space {space.name!r}")


@dataclass
class NetworkCost:
    """Params and FLOPs of candidates' standalone networks, each counted once per architecture (building a
    network takes ~0.1 s and tracing its FLOPs seconds, and the search asks repeatedly). Cached by the exact
    genes, not :meth:`SearchSpace.key`: isomorphic NB201 cells compute one function but their standalone
    networks hold different ops (a conv on a dead edge still has its weights)."""

    space: SearchSpace
    num_classes: int
    input_shape: tuple[int, ...] = (3, 32, 32)

    def __post_init__(self) -> None:
        self._build = standalone_builder(self.space, self.num_classes)
        self._params: dict[tuple[int, ...], int] = {}
        self._flops: dict[tuple[int, ...], int] = {}

    def params(self, arch: Arch) -> int:
        key = tuple(int(g) for g in self.space.validate(arch))
        if key not in self._params:
            with torch.device("meta"):  # shapes only: no weight initialisation, no memory
                self._params[key] = count_params(self._build(arch))
        return self._params[key]

    def flops(self, arch: Arch) -> int:
        key = tuple(int(g) for g in self.space.validate(arch))
        if key not in self._flops:
            self._flops[key] = count_macs(self._build(arch), self.input_shape)
        return self._flops[key]


@dataclass
class CostConstraint:
    """``arch -> bool``: the standalone network has at most ``max_params`` parameters and ``max_flops`` FLOPs
    (``None``: no limit). The cheap params test runs first so FLOPs are traced only for candidates it passes."""

    cost: NetworkCost
    max_params: float | None = None
    max_flops: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_params", "max_flops"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"search.{name} must be a positive number (e.g. 1.0e6) or null, got {value!r}")

    @property
    def active(self) -> bool:
        return self.max_params is not None or self.max_flops is not None

    def __call__(self, arch: Arch) -> bool:
        if self.max_params is not None and self.cost.params(arch) > self.max_params:
            return False
        return self.max_flops is None or self.cost.flops(arch) <= self.max_flops

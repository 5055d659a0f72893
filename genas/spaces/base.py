"""What every search space and every one-shot supernet of the suite provides.

The supernet trainer, the scorers and the search only talk to these two interfaces, so NAS-Bench-201 and
DARTS (and any space added later) share one training loop, one perturbation evaluator and one evolution.

An architecture (``Arch``) is a tuple of ints, one per gene. Randomness always comes from a
``numpy.random.Generator`` passed in by the caller (its state is saved for resumable runs).
"""
from __future__ import annotations

import abc
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from genas.core.errors import UsageError

Arch = tuple  # tuple[int, ...]

__all__ = ["Arch", "SearchSpace", "Supernet", "SpaceOptionError", "LayoutError", "check_option"]


class SpaceOptionError(UsageError):
    """A search-space or supernet option that does not exist or does not apply to the space."""


def check_option(setting: str, value: str, choices: tuple[str, ...], space: str) -> str:
    """``value`` when it is one of ``choices``; else :class:`SpaceOptionError` naming ``setting`` and ``space``."""
    if value not in choices:
        raise SpaceOptionError(f"{setting} must be one of {choices} for {space}, got {value!r}")
    return value


class LayoutError(UsageError):
    """A checkpoint whose tensors do not fit the supernet (names the first missing / unexpected keys)."""


class SearchSpace(abc.ABC):
    """A discrete architecture space: sampling, mutation, crossover, canonical keys, (de)serialisation."""

    name: str

    @property
    @abc.abstractmethod
    def num_genes(self) -> int: ...

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> Arch:
        """A uniformly sampled valid architecture."""

    @abc.abstractmethod
    def mutate(self, arch: Arch, prob: float, rng: np.random.Generator) -> Arch:
        """Re-draw each gene with probability ``prob`` (every gene, e.g. DARTS normal AND reduce); valid result."""

    @abc.abstractmethod
    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform per-gene crossover of two parents; valid result."""

    @abc.abstractmethod
    def key(self, arch: Arch) -> str:
        """Canonical key: equal for architectures that compute the same function (memo of the search)."""

    @abc.abstractmethod
    def to_string(self, arch: Arch) -> str:
        """Human-readable form (NB201 arch string, DARTS genotype string)."""

    @abc.abstractmethod
    def from_string(self, text: str) -> Arch:
        """Inverse of :meth:`to_string`; clear ``ValueError`` on malformed input."""

    def to_json(self, arch: Arch) -> dict[str, Any]:
        """JSON-able description written by the search (DARTS: genotype readable by ``backbones``)."""
        return {"space": self.name, "arch": self.to_string(arch)}

    @abc.abstractmethod
    def validate(self, arch: Arch) -> Arch:
        """Return ``arch`` as a tuple of ints, raising ``ValueError`` (saying which gene) if it is not in the space."""


class Supernet(nn.Module, abc.ABC):
    """A weight-sharing network over a :class:`SearchSpace`; one architecture's path runs per forward."""

    space: SearchSpace

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        """Logits of the sub-network ``arch``; only modules on its path run (and get gradients)."""

    @abc.abstractmethod
    def path_parameter_names(self, arch: Arch, positions: str = "all") -> list[str]:
        """Names (keys of ``named_parameters()``) of the parameters used by ``arch``, in a fixed order.

        ``positions="all"``: stem, cells, reduction blocks, classifier and BN affine — every weight the
        sub-network uses. ``positions="cells"``: only the parameters of the searched cell ops.
        """

    @abc.abstractmethod
    def path_op_names(self, arch: Arch) -> list[str]:
        """The op name on each active edge of ``arch`` across the whole network, in a fixed order
        (used by the angle score to add constants for parameter-free ops)."""

    def path_parameters(self, arch: Arch, positions: str = "all") -> list[nn.Parameter]:
        params = dict(self.named_parameters())
        return [params[n] for n in self.path_parameter_names(arch, positions)]

    def extra_repr_arch(self, arch: Arch) -> str:  # pragma: no cover - debugging aid
        return self.space.to_string(arch)


def check_positions(positions: str) -> str:
    if positions not in ("all", "cells"):
        raise ValueError(f"positions must be 'all' or 'cells', got {positions!r}")
    return positions


def unique_in_order(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n))]

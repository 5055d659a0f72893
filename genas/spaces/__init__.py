"""Search spaces of the paper (NAS-Bench-201 and DARTS) behind one interface (:mod:`genas.spaces.base`)."""
from __future__ import annotations

from genas.spaces.base import Arch, SearchSpace, Supernet

__all__ = ["Arch", "SearchSpace", "Supernet", "get_space", "build_supernet", "SPACES"]

SPACES = ("nb201", "darts")


def get_space(name: str) -> SearchSpace:
    """The :class:`SearchSpace` called ``name`` (one of :data:`SPACES`)."""
    if name == "nb201":
        from genas.spaces.nb201 import NB201Space
        return NB201Space()
    if name == "darts":
        from genas.spaces.darts import DartsSpace
        return DartsSpace()
    raise ValueError(f"unknown search space {name!r}; choose one of {SPACES}")


def build_supernet(name: str, num_classes: int, **kwargs) -> Supernet:
    """The one-shot supernet of space ``name``; ``kwargs`` are the space's width/depth options
    (NB201: C=16, N=5; DARTS: C=16, layers=8)."""
    if name == "nb201":
        from genas.spaces.nb201 import NB201Supernet
        return NB201Supernet(num_classes=num_classes, **kwargs)
    if name == "darts":
        from genas.spaces.darts.supernet import DartsSupernet
        return DartsSupernet(num_classes=num_classes, **kwargs)
    raise ValueError(f"unknown search space {name!r}; choose one of {SPACES}")

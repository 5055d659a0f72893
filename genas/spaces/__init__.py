"""Search spaces of the paper (NAS-Bench-201 and DARTS) behind one interface (:mod:`genas.spaces.base`)."""
from __future__ import annotations

from genas.spaces.base import Arch, LayoutError, SearchSpace, SpaceOptionError, Supernet
from genas.spaces.checkpoint import init_checkpoint_path, load_supernet
from genas.spaces.registry import (SPACE_OPTIONS, SPACES, SUPERNET_OPTIONS, build_supernet, get_space,
                                   space_options)

__all__ = ["Arch", "SearchSpace", "Supernet", "get_space", "build_supernet", "SPACES", "SPACE_OPTIONS",
           "SUPERNET_OPTIONS", "space_options", "load_supernet", "init_checkpoint_path", "LayoutError",
           "SpaceOptionError"]

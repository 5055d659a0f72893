"""The registry of search spaces: :func:`get_space` and :func:`build_supernet` by name (re-exported by
:mod:`genas.spaces`)."""
from __future__ import annotations

from typing import Any, Mapping

from genas.core.config import SUPERNET_DEFAULTS
from genas.spaces.base import SearchSpace, SpaceOptionError, Supernet

__all__ = ["SPACES", "SPACE_OPTIONS", "SUPERNET_OPTIONS", "space_options", "get_space", "build_supernet"]

SPACES = ("nb201", "darts")
#: Keys of the config's ``search`` section that are options of the search space (its proposal operators).
SPACE_OPTIONS = ("crossover", "mutation_genes", "mutation_ops")
#: Keyword options of each space's supernet (the config's ``supernet`` section).
SUPERNET_OPTIONS = {name: tuple(defaults) for name, defaults in SUPERNET_DEFAULTS.items()}


def space_options(search_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The space options (:data:`SPACE_OPTIONS`) found in a config's ``search`` section."""
    return {k: search_cfg[k] for k in SPACE_OPTIONS if k in search_cfg}


def get_space(name: str, **options: Any) -> SearchSpace:
    """The :class:`SearchSpace` called ``name`` (one of :data:`SPACES`); ``options`` are its proposal options
    (:data:`SPACE_OPTIONS`: ``crossover``, ``mutation_genes``, ``mutation_ops``; :class:`SpaceOptionError`
    when one does not apply to the space)."""
    unknown = sorted(set(options) - set(SPACE_OPTIONS))
    if unknown:
        raise SpaceOptionError(f"unknown search-space option(s) {unknown}; known: {list(SPACE_OPTIONS)}")
    if name == "nb201":
        from genas.spaces.nb201 import NB201Space
        return NB201Space(**options)
    if name == "darts":
        from genas.spaces.darts import DartsSpace
        return DartsSpace(**options)
    raise ValueError(f"unknown search space {name!r}; choose one of {SPACES}")


def build_supernet(name: str, num_classes: int, **kwargs) -> Supernet:
    """The one-shot supernet of space ``name``; ``kwargs`` are the space's options (NB201: C=16, N=5,
    affine=True; DARTS: C=16, layers=8, affine=True, pool_bn=False)."""
    if name in SUPERNET_OPTIONS:
        unknown = sorted(set(kwargs) - set(SUPERNET_OPTIONS[name]))
        if unknown:
            raise SpaceOptionError(f"supernet option(s) {unknown} do not apply to the {name} supernet "
                                   f"(options: {list(SUPERNET_OPTIONS[name])})")
    if name == "nb201":
        from genas.spaces.nb201 import NB201Supernet
        return NB201Supernet(num_classes=num_classes, **kwargs)
    if name == "darts":
        from genas.spaces.darts.supernet import DartsSupernet
        return DartsSupernet(num_classes=num_classes, **kwargs)
    raise ValueError(f"unknown search space {name!r}; choose one of {SPACES}")

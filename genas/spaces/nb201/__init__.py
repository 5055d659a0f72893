"""The NAS-Bench-201 (NATS-Bench topology) space: architectures (:mod:`.space`), ops (:mod:`.ops`), the standalone
network (:mod:`.network`) and the one-shot supernet (:mod:`.supernet`)."""
from genas.spaces.nb201.network import InferCell, NB201Network, build_network
from genas.spaces.nb201.ops import OP_NAMES
from genas.spaces.nb201.space import (EDGES, NUM_NODES, NB201Space, cell_plan, enumerate_archs, format_arch_string,
                                      parse_arch_string, unique_archs, unique_string, validate_arch)
from genas.spaces.nb201.supernet import NB201Supernet

__all__ = [
    "OP_NAMES", "EDGES", "NUM_NODES", "NB201Space", "NB201Network", "NB201Supernet", "InferCell", "build_network",
    "parse_arch_string", "format_arch_string", "unique_string", "validate_arch", "cell_plan", "enumerate_archs",
    "unique_archs",
]

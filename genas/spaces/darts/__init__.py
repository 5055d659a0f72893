"""The DARTS cell space: genotypes and the 28-int encoding (:mod:`.genotype`), published cells (:mod:`.published`),
the search space (:mod:`.space`), ops (:mod:`.ops`), the one-shot supernet (:mod:`.supernet`) and the retrained
networks (:mod:`.network`).

``parse_genotype`` / ``encode`` here also accept a published cell's name."""
from genas.spaces.darts.genotype import (CELL_TYPES, CONCAT, EDGE_INPUT, EDGES_PER_CELL, NODE_EDGES, NUM_GENES,
                                         NUM_NODES, PRIMITIVES, Genotype, decode, format_genotype, genotype_to_json,
                                         validate_genotype)
from genas.spaces.darts.published import PUBLISHED, encode, parse_genotype
from genas.spaces.darts.space import DartsSpace, repair

__all__ = [
    "PRIMITIVES", "Genotype", "CONCAT", "NUM_NODES", "EDGES_PER_CELL", "NUM_GENES", "NODE_EDGES", "CELL_TYPES",
    "EDGE_INPUT", "PUBLISHED", "parse_genotype", "format_genotype", "genotype_to_json", "validate_genotype",
    "encode", "decode", "repair", "DartsSpace",
]

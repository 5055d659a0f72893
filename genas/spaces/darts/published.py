"""Published DARTS-space cells: the four GeNAS cells, the angle-only cell of the GeNAS paper and the
comparison cells of its Tables 3-4.

Pairs are ``(op_name, input_index)``, two per intermediate node, listed in the order the papers / reference
code give them (not always ascending input index; :func:`genas.spaces.darts.decode` lists them ascending).
Look a cell up by name with :data:`PUBLISHED` or :func:`parse_genotype` (the name-aware reader the rest of the
suite uses; :mod:`genas.spaces.darts.genotype` stays a leaf that knows no names).
"""
from __future__ import annotations

from typing import Any

from genas.spaces.darts import genotype as _genotype
from genas.spaces.darts.genotype import CONCAT, Genotype

__all__ = [
    "GENAS_FLATNESS_CIFAR100",
    "GENAS_ANGLE_FLATNESS_CIFAR100",
    "GENAS_FLATNESS_CIFAR10",
    "GENAS_ANGLE_FLATNESS_CIFAR10",
    "ANGLE_CIFAR100",
    "DARTS_V2",
    "PC_DARTS",
    "PC_DARTS_IMAGENET",
    "P_DARTS",
    "DROPNAS",
    "RLNAS",
    "SDARTS_RS",
    "SDARTS_ADV",
    "PUBLISHED",
    "parse_genotype",
    "encode",
]

# GeNAS, flatness (FBS) searched on CIFAR-100; ImageNet C=46, 5.20M params, ~580M MACs (paper Table 3: top-1 76.1).
GENAS_FLATNESS_CIFAR100 = Genotype(
    normal=[
        ('skip_connect', 0), ('sep_conv_5x5', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 2),
        ('sep_conv_3x3', 2), ('sep_conv_5x5', 3),
        ('sep_conv_3x3', 1), ('dil_conv_5x5', 4),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('dil_conv_3x3', 0), ('skip_connect', 1),
        ('avg_pool_3x3', 0), ('sep_conv_5x5', 2),
        ('sep_conv_5x5', 1), ('dil_conv_5x5', 3),
        ('max_pool_3x3', 1), ('max_pool_3x3', 2),
    ],
    reduce_concat=list(CONCAT),
)

# GeNAS, angle + flatness searched on CIFAR-100; ImageNet C=48, 5.41M params, ~603M MACs.
GENAS_ANGLE_FLATNESS_CIFAR100 = Genotype(
    normal=[
        ('skip_connect', 0), ('sep_conv_5x5', 1),
        ('max_pool_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 3),
        ('sep_conv_3x3', 1), ('sep_conv_5x5', 4),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('dil_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('dil_conv_5x5', 1), ('avg_pool_3x3', 2),
        ('max_pool_3x3', 0), ('skip_connect', 1),
        ('sep_conv_3x3', 1), ('dil_conv_5x5', 4),
    ],
    reduce_concat=list(CONCAT),
)

# GeNAS, flatness searched on CIFAR-10; ImageNet C=52, 5.56M params, ~611M MACs.
GENAS_FLATNESS_CIFAR10 = Genotype(
    normal=[
        ('skip_connect', 0), ('dil_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 2),
        ('dil_conv_3x3', 1), ('dil_conv_3x3', 2),
        ('sep_conv_3x3', 3), ('skip_connect', 4),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('sep_conv_5x5', 0), ('avg_pool_3x3', 1),
        ('dil_conv_3x3', 1), ('sep_conv_3x3', 2),
        ('skip_connect', 1), ('dil_conv_3x3', 3),
        ('sep_conv_5x5', 2), ('dil_conv_5x5', 4),
    ],
    reduce_concat=list(CONCAT),
)

# GeNAS, angle + flatness searched on CIFAR-10; ImageNet C=44, 5.34M params, ~594M MACs.
GENAS_ANGLE_FLATNESS_CIFAR10 = Genotype(
    normal=[
        ('sep_conv_5x5', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 0), ('sep_conv_5x5', 1),
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 4),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('dil_conv_5x5', 0), ('dil_conv_5x5', 1),
        ('avg_pool_3x3', 0), ('skip_connect', 1),
        ('sep_conv_3x3', 0), ('max_pool_3x3', 1),
        ('sep_conv_5x5', 3), ('dil_conv_3x3', 4),
    ],
    reduce_concat=list(CONCAT),
)

# Angle (ABS) searched on CIFAR-100, as drawn in the GeNAS paper's Figure 6; ImageNet C=46, ~5.4M params.
ANGLE_CIFAR100 = Genotype(
    normal=[
        ('sep_conv_5x5', 0), ('sep_conv_5x5', 1),
        ('avg_pool_3x3', 0), ('sep_conv_5x5', 1),
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 4),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('skip_connect', 0), ('skip_connect', 1),
        ('skip_connect', 1), ('avg_pool_3x3', 2),
        ('skip_connect', 0), ('dil_conv_5x5', 1),
        ('skip_connect', 0), ('sep_conv_3x3', 4),
    ],
    reduce_concat=list(CONCAT),
)

# DARTS (second order), CIFAR-10 search.
DARTS_V2 = Genotype(
    normal=[
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('skip_connect', 0),
        ('skip_connect', 0), ('dil_conv_3x3', 2),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('max_pool_3x3', 0), ('max_pool_3x3', 1),
        ('skip_connect', 2), ('max_pool_3x3', 1),
        ('max_pool_3x3', 0), ('skip_connect', 2),
        ('skip_connect', 2), ('max_pool_3x3', 1),
    ],
    reduce_concat=list(CONCAT),
)

# PC-DARTS, CIFAR-10 search.
PC_DARTS = Genotype(
    normal=[
        ('sep_conv_3x3', 1), ('skip_connect', 0),
        ('sep_conv_3x3', 0), ('dil_conv_3x3', 1),
        ('sep_conv_5x5', 0), ('sep_conv_3x3', 1),
        ('avg_pool_3x3', 0), ('dil_conv_3x3', 1),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('sep_conv_5x5', 1), ('max_pool_3x3', 0),
        ('sep_conv_5x5', 1), ('sep_conv_5x5', 2),
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 3),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 2),
    ],
    reduce_concat=list(CONCAT),
)

# PC-DARTS, ImageNet search.
PC_DARTS_IMAGENET = Genotype(
    normal=[
        ('skip_connect', 1), ('sep_conv_3x3', 0),
        ('sep_conv_3x3', 0), ('skip_connect', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 3),
        ('sep_conv_3x3', 1), ('dil_conv_5x5', 4),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('sep_conv_3x3', 0), ('skip_connect', 1),
        ('dil_conv_5x5', 2), ('max_pool_3x3', 1),
        ('sep_conv_3x3', 2), ('sep_conv_3x3', 1),
        ('sep_conv_5x5', 0), ('sep_conv_3x3', 3),
    ],
    reduce_concat=list(CONCAT),
)

# P-DARTS.
P_DARTS = Genotype(
    normal=[
        ('skip_connect', 0), ('dil_conv_3x3', 1),
        ('skip_connect', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 3),
        ('sep_conv_3x3', 0), ('dil_conv_5x5', 4),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('avg_pool_3x3', 0), ('sep_conv_5x5', 1),
        ('sep_conv_3x3', 0), ('dil_conv_5x5', 2),
        ('max_pool_3x3', 0), ('dil_conv_3x3', 1),
        ('dil_conv_3x3', 1), ('dil_conv_5x5', 3),
    ],
    reduce_concat=list(CONCAT),
)

# DropNAS, the CIFAR-100 cell used by GeNAS.
DROPNAS = Genotype(
    normal=[
        ('skip_connect', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('max_pool_3x3', 2),
        ('sep_conv_3x3', 1), ('sep_conv_5x5', 2),
        ('sep_conv_5x5', 0), ('sep_conv_5x5', 1),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('max_pool_3x3', 0), ('sep_conv_5x5', 1),
        ('dil_conv_5x5', 2), ('sep_conv_5x5', 1),
        ('dil_conv_5x5', 2), ('dil_conv_5x5', 3),
        ('dil_conv_5x5', 2), ('dil_conv_5x5', 4),
    ],
    reduce_concat=list(CONCAT),
)

# RLNAS, CIFAR-10 search (retrained by GeNAS with C=46).
RLNAS = Genotype(
    normal=[
        ('sep_conv_5x5', 0), ('sep_conv_3x3', 1),
        ('dil_conv_3x3', 0), ('sep_conv_5x5', 2),
        ('sep_conv_3x3', 0), ('dil_conv_5x5', 3),
        ('dil_conv_5x5', 1), ('dil_conv_3x3', 2),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('sep_conv_5x5', 0), ('dil_conv_3x3', 1),
        ('sep_conv_3x3', 0), ('sep_conv_5x5', 2),
        ('dil_conv_3x3', 1), ('sep_conv_3x3', 3),
        ('max_pool_3x3', 1), ('sep_conv_5x5', 2),
    ],
    reduce_concat=list(CONCAT),
)

# SDARTS-RS.
SDARTS_RS = Genotype(
    normal=[
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 0),
        ('sep_conv_5x5', 1), ('skip_connect', 0),
        ('sep_conv_3x3', 3), ('skip_connect', 1),
        ('sep_conv_3x3', 1), ('dil_conv_3x3', 2),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('max_pool_3x3', 0), ('sep_conv_3x3', 1),
        ('skip_connect', 2), ('max_pool_3x3', 0),
        ('dil_conv_5x5', 3), ('max_pool_3x3', 0),
        ('sep_conv_3x3', 2), ('sep_conv_5x5', 3),
    ],
    reduce_concat=list(CONCAT),
)

# SDARTS-ADV.
SDARTS_ADV = Genotype(
    normal=[
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('skip_connect', 0),
        ('sep_conv_5x5', 0), ('dil_conv_3x3', 3),
        ('dil_conv_3x3', 4), ('skip_connect', 0),
    ],
    normal_concat=list(CONCAT),
    reduce=[
        ('max_pool_3x3', 0), ('sep_conv_5x5', 1),
        ('skip_connect', 2), ('max_pool_3x3', 0),
        ('skip_connect', 3), ('skip_connect', 2),
        ('skip_connect', 2), ('sep_conv_5x5', 4),
    ],
    reduce_concat=list(CONCAT),
)

#: lower-case name -> genotype (what ``parse_genotype`` and the backbones' ``--genotype`` look up)
PUBLISHED: dict[str, Genotype] = {
    "genas_flatness_cifar100": GENAS_FLATNESS_CIFAR100,
    "genas_angle_flatness_cifar100": GENAS_ANGLE_FLATNESS_CIFAR100,
    "genas_flatness_cifar10": GENAS_FLATNESS_CIFAR10,
    "genas_angle_flatness_cifar10": GENAS_ANGLE_FLATNESS_CIFAR10,
    "angle_cifar100": ANGLE_CIFAR100,
    "darts_v2": DARTS_V2,
    "pc_darts": PC_DARTS,
    "pc_darts_imagenet": PC_DARTS_IMAGENET,
    "p_darts": P_DARTS,
    "dropnas": DROPNAS,
    "rlnas": RLNAS,
    "sdarts_rs": SDARTS_RS,
    "sdarts_adv": SDARTS_ADV,
}


def parse_genotype(obj: Any) -> Genotype:
    """:func:`genas.spaces.darts.genotype.parse_genotype` that also takes a published cell's name (any case)."""
    return _genotype.parse_genotype(obj, PUBLISHED)


def encode(obj: Any) -> tuple[int, ...]:
    """The 28-int encoding of a genotype in any form :func:`parse_genotype` reads, published names included."""
    return _genotype.encode(obj, PUBLISHED)

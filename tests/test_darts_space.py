"""DARTS space: genotype forms, the reference 28-int encoding, DartsSpace operators and the SPOS supernet."""
from __future__ import annotations

import json
from collections import Counter
from itertools import combinations

import numpy as np
import pytest
import torch

from genas.spaces.darts import published as G
from genas.spaces import build_supernet, get_space
from genas.spaces.darts import (PRIMITIVES, Genotype, decode, encode, format_genotype, genotype_to_json,
                                parse_genotype, repair, validate_genotype)
from genas.spaces.darts.supernet import DartsSupernet

# Reference encodings of the GeNAS cells (facts section 5). Their pairs are listed in edge order (ascending
# input index within each node), so decode() must reproduce the published lists EXACTLY, not only as multisets.
REFERENCE_ENCODINGS = {
    "GENAS_FLATNESS_CIFAR10": (3, 6, 0, 4, 4, 0, 6, 6, 0, 0, 0, 0, 4, 3, 5, 2, 0, 6, 4, 0, 3, 0, 6, 0, 0, 5, 0, 7),
    "GENAS_ANGLE_FLATNESS_CIFAR10": (5, 4, 4, 4, 0, 4, 5, 0, 0, 4, 0, 0, 0, 4, 7, 7, 2, 3, 0, 4, 1, 0, 0, 0, 0, 0, 5, 6),
    "GENAS_FLATNESS_CIFAR100": (3, 5, 0, 4, 4, 0, 0, 4, 5, 0, 4, 0, 0, 7, 6, 3, 2, 0, 5, 0, 5, 0, 7, 0, 1, 1, 0, 0),
    "GENAS_ANGLE_FLATNESS_CIFAR100": (3, 5, 1, 4, 0, 0, 4, 0, 4, 0, 4, 0, 0, 5, 6, 4, 0, 7, 2, 1, 3, 0, 0, 0, 4, 0, 0, 7),
    "ANGLE_CIFAR100": (5, 5, 2, 5, 0, 4, 4, 0, 0, 0, 4, 0, 0, 4, 3, 3, 0, 3, 2, 3, 7, 0, 0, 3, 0, 0, 0, 4),
}
NODE_GENES = [(0, 2), (2, 5), (5, 9), (9, 14)]  # gene slices of the 4 nodes inside one cell's 14


def node_multisets(g: Genotype) -> list[list[tuple[str, int]]]:
    return [sorted(map(tuple, getattr(g, c)[2 * j:2 * j + 2])) for c in ("normal", "reduce") for j in range(4)]


def assert_valid_arch(arch: tuple) -> None:
    assert len(arch) == 28 and all(0 <= g < 8 for g in arch)
    for cell in (arch[:14], arch[14:]):
        for lo, hi in NODE_GENES:
            assert sum(1 for g in cell[lo:hi] if g) == 2, arch


# ---------------------------------------------------------------------------------------------- genotypes
def test_primitives_and_published_names():
    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                          "dil_conv_3x3", "dil_conv_5x5")
    assert sorted(G.PUBLISHED) == sorted([
        "genas_flatness_cifar100", "genas_angle_flatness_cifar100", "genas_flatness_cifar10",
        "genas_angle_flatness_cifar10", "angle_cifar100", "darts_v2", "pc_darts", "pc_darts_imagenet", "p_darts",
        "dropnas", "rlnas", "sdarts_rs", "sdarts_adv"])
    for name, g in G.PUBLISHED.items():
        assert g is getattr(G, name.upper())
        assert validate_genotype(g) == g
        assert parse_genotype(name.upper()) == parse_genotype(name) == g


@pytest.mark.parametrize("name", sorted(REFERENCE_ENCODINGS))
def test_decode_reference_encodings(name):
    ints = REFERENCE_ENCODINGS[name]
    published = getattr(G, name)
    decoded = decode(ints)
    assert decoded.normal == published.normal and decoded.reduce == published.reduce  # exact order
    assert decoded.normal_concat == decoded.reduce_concat == [2, 3, 4, 5]
    assert encode(decoded) == ints
    assert encode(published) == ints


def test_encode_canonicalises_pair_order():
    # DARTS_V2 lists node 0's pairs (sep_conv_3x3 0, sep_conv_3x3 1) but e.g. PC_DARTS lists (sep_conv_3x3 1, skip 0)
    ints = encode(G.PC_DARTS)
    assert ints[:2] == (PRIMITIVES.index("skip_connect"), PRIMITIVES.index("sep_conv_3x3"))
    for g in G.PUBLISHED.values():
        assert node_multisets(decode(encode(g))) == node_multisets(g)
    space = get_space("darts")
    swapped = G.PC_DARTS._replace(normal=[G.PC_DARTS.normal[1], G.PC_DARTS.normal[0]] + G.PC_DARTS.normal[2:])
    assert space.key(encode(swapped)) == space.key(encode(G.PC_DARTS))


def test_genotype_forms_round_trip(tmp_path):
    g = G.GENAS_FLATNESS_CIFAR100
    text = format_genotype(g)
    assert text.startswith("Genotype(normal=[('skip_connect', 0), ('sep_conv_5x5', 1),")
    assert parse_genotype(text) == g
    as_json = genotype_to_json(g)
    assert as_json["normal"][1] == ["sep_conv_5x5", 1] and as_json["reduce_concat"] == [2, 3, 4, 5]
    assert parse_genotype(as_json) == g
    assert parse_genotype(json.dumps(as_json)) == g
    assert parse_genotype({"genotype": as_json}) == g
    assert parse_genotype(json.dumps({"space": "darts", "genotype": as_json, "arch": text})) == g
    path = tmp_path / "best.json"
    path.write_text(json.dumps(get_space("darts").to_json(encode(g))))
    assert parse_genotype(path) == parse_genotype(str(path)) == g
    # reference genotypes.py style: concat written as range(2, 6), module-qualified constructor
    reference = text.replace("[2, 3, 4, 5]", "range(2, 6)").replace("Genotype(", "genotypes.Genotype(")
    assert parse_genotype(reference) == g
    assert parse_genotype(list(encode(g))) == decode(encode(g))


@pytest.mark.parametrize("bad, message", [
    (G.DARTS_V2._replace(normal=[("conv_7x7", 0)] + G.DARTS_V2.normal[1:]), "unknown op 'conv_7x7'"),
    (G.DARTS_V2._replace(normal=[("conv_7x7", 0)] + G.DARTS_V2.normal[1:]), "'sep_conv_3x3'"),  # lists valid ops
    (G.DARTS_V2._replace(reduce=G.DARTS_V2.reduce[:2] + [("max_pool_3x3", 3)] + G.DARTS_V2.reduce[3:]),
     "reduce, node 1: input index 3 out of range"),
    (G.DARTS_V2._replace(normal=G.DARTS_V2.normal[:7]), "exactly 2 inputs"),
    (G.DARTS_V2._replace(normal=[("sep_conv_3x3", 1)] + G.DARTS_V2.normal[1:]), "distinct"),
    (G.DARTS_V2._replace(normal=[("none", 0)] + G.DARTS_V2.normal[1:]), "'none' cannot be a kept op"),
    (G.DARTS_V2._replace(normal_concat=[2, 3, 4]), "normal_concat"),
    ({"normal": G.DARTS_V2.normal}, "missing ['normal_concat', 'reduce', 'reduce_concat']"),
    ("darts_v3", "unknown genotype name 'darts_v3'"),
    ("Genotype(normal=[('sep_conv_3x3', 0)", "cannot parse genotype string"),
    ("{not json", "JSON string is malformed"),
])
def test_invalid_genotypes_raise_clear_errors(bad, message):
    with pytest.raises(ValueError) as err:
        parse_genotype(bad)
    assert message in str(err.value)


DARTS_V2_INTS = encode(G.DARTS_V2)


@pytest.mark.parametrize("ints, message", [
    ((4, 4, 4) + (0,) * 25, "normal cell, node 1 (edges 2..4): exactly 2 non-none edges are needed, got 1"),
    (DARTS_V2_INTS[:19] + (4, 4, 4, 4) + DARTS_V2_INTS[23:], "reduce cell, node 2 (edges 5..8)"),
    ((8,) + (0,) * 27, "gene 0 is 8"),
    ((4,) * 27, "28 ints"),
])
def test_decode_rejects_invalid_encodings(ints, message):
    with pytest.raises(ValueError) as err:
        decode(ints)
    assert message in str(err.value)


def test_repair_rule():
    rng = np.random.default_rng(0)
    valid = encode(G.DARTS_V2)
    assert repair(valid, rng) == valid  # valid nodes untouched
    broken = list(valid)
    broken[9:14] = [5, 6, 7, 1, 0]  # normal node 3: four kept edges
    broken[14:16] = [0, 0]  # reduce node 0: no kept edge
    for _ in range(20):
        fixed = repair(broken, rng)
        assert_valid_arch(fixed)
        kept = [(k, g) for k, g in zip(range(9, 14), fixed[9:14]) if g]
        assert all(broken[k] == g for k, g in kept)  # the 2 survivors keep their ops
        assert fixed[14] and fixed[15]  # node 0 can only re-take both of its inputs
        assert fixed[:9] == valid[:9] and fixed[16:] == valid[16:]


# ---------------------------------------------------------------------------------------------- DartsSpace
def test_sample_is_valid_and_uniform():
    space, rng = get_space("darts"), np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(1500)]
    for a in archs:
        assert_valid_arch(a)
        assert space.validate(a) == a
    ops = Counter(g for a in archs for g in a if g)
    assert set(ops) == set(range(1, 8))
    assert all(abs(n / sum(ops.values()) - 1 / 7) < 0.02 for n in ops.values())
    # node 3 of the reduce cell picks one of C(5, 2) = 10 input pairs uniformly
    pairs = Counter(tuple(i for i, g in enumerate(a[14 + 9:14 + 14]) if g) for a in archs)
    assert set(pairs) == set(combinations(range(5), 2))
    assert all(abs(n / len(archs) - 0.1) < 0.03 for n in pairs.values())


def test_mutate_covers_both_cells_and_stays_valid():
    space, rng = get_space("darts"), np.random.default_rng(2)
    parent = encode(G.GENAS_FLATNESS_CIFAR100)
    assert all(space.mutate(parent, 0.0, rng) == parent for _ in range(20))
    full = [space.mutate(parent, 1.0, rng) for _ in range(100)]
    for child in full:
        assert_valid_arch(child)
    assert sum(c[14:] != parent[14:] for c in full) >= 95
    assert sum(c[:14] != parent[:14] for c in full) >= 95
    light = [space.mutate(parent, 0.1, rng) for _ in range(200)]
    for child in light:
        assert_valid_arch(child)
    changed = sum(c != parent for c in light)
    assert 50 < changed < 200  # some but not all children change at p=0.1
    assert sum(c[14:] != parent[14:] for c in light) > 20


def test_crossover_takes_whole_nodes_from_parents():
    space, rng = get_space("darts"), np.random.default_rng(3)
    a, b = encode(G.DARTS_V2), encode(G.GENAS_FLATNESS_CIFAR10)
    from_b = Counter()
    for _ in range(200):
        child = space.crossover(a, b, rng)
        assert_valid_arch(child)
        for c in (0, 14):
            for j, (lo, hi) in enumerate(NODE_GENES):
                node = child[c + lo:c + hi]
                assert node in (a[c + lo:c + hi], b[c + lo:c + hi])
                from_b[(c, j)] += node == b[c + lo:c + hi] != a[c + lo:c + hi]
    # every node where the parents differ is inherited from b in roughly half the draws
    differing = [(c, j) for c in (0, 14) for j, (lo, hi) in enumerate(NODE_GENES)
                 if a[c + lo:c + hi] != b[c + lo:c + hi]]
    assert len(differing) == 8
    assert all(60 < from_b[k] < 140 for k in differing)


def test_space_string_key_and_json():
    space = get_space("darts")
    arch = encode(G.RLNAS)
    assert space.num_genes == 28
    assert space.from_string(space.to_string(arch)) == arch
    assert space.key(arch) == ",".join(map(str, arch))
    assert space.key(arch) != space.key(encode(G.DARTS_V2))
    out = space.to_json(arch)
    assert out["space"] == "darts" and parse_genotype(out["arch"]) == parse_genotype(out["genotype"]) == decode(arch)
    json.dumps(out)
    with pytest.raises(ValueError, match="exactly 2 non-none edges"):
        space.validate((0,) * 28)


# ---------------------------------------------------------------------------------------------- supernet
SMALL = dict(C=8, layers=5)  # reductions at cells 1 and 3
CANDIDATES = PRIMITIVES[1:]


def op_params(op: str, C: int, stride: int) -> int:
    """Parameter count of one DARTS op with affine BN, from its definition (facts section 4)."""
    bn = 2 * C
    if op in ("max_pool_3x3", "avg_pool_3x3"):
        return 0
    if op == "skip_connect":  # identity, or FactorizedReduce: two 1x1 convs C -> C/2 + BN
        return 0 if stride == 1 else 2 * C * (C // 2) + bn
    k = int(op[-1])
    depthwise_pointwise_bn = k * k * C + C * C + bn
    return 2 * depthwise_pointwise_bn if op.startswith("sep") else depthwise_pointwise_bn


def supernet_params(num_classes: int, C: int, layers: int) -> int:
    stem = 3 * C
    total = 3 * stem * 9 + 2 * stem
    c_pp, c_p, c = stem, stem, C
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        c *= 2 if reduction else 1
        total += (c_pp * c + 2 * c) + (c_p * c + 2 * c)  # preprocess0/1: 1x1 conv (or FactorizedReduce) + BN
        total += sum(op_params(op, c, 2 if reduction and inp < 2 else 1)
                     for node in range(4) for inp in range(node + 2) for op in CANDIDATES)
        c_pp, c_p = c_p, 4 * c
    return total + c_p * num_classes + num_classes


def test_supernet_parameter_count():
    net = build_supernet("darts", 10)  # C=16, layers=8
    assert isinstance(net, DartsSupernet)
    sep3 = net.cells[0].edges[0]["sep_conv_3x3"]
    assert sum(p.numel() for p in sep3.parameters()) == 2 * (16 * 9 + 16 * 16 + 32) == 864
    fr = net.cells[2].edges[0]["skip_connect"]  # stride-2 skip in the first reduction cell, C=32
    assert sum(p.numel() for p in fr.parameters()) == 32 * 32 + 64 == 1088
    assert supernet_params(10, 16, 8) == 1_987_194
    assert sum(p.numel() for p in net.parameters()) == 1_987_194
    small = build_supernet("darts", 100, **SMALL)
    assert sum(p.numel() for p in small.parameters()) == supernet_params(100, **SMALL)


def test_supernet_forward_and_path_gradients():
    torch.manual_seed(0)
    net = build_supernet("darts", 7, **SMALL)
    arch = encode(G.GENAS_FLATNESS_CIFAR100)
    out = net(torch.randn(2, 3, 32, 32), arch)
    assert out.shape == (2, 7)
    out.logsumexp(1).sum().backward()
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None}
    path_all = net.path_parameter_names(arch, positions="all")
    path_cells = net.path_parameter_names(arch, positions="cells")
    assert len(path_all) == len(set(path_all)) and with_grad == set(path_all)
    assert set(path_cells) < set(path_all)
    assert all(".edges." in n for n in path_cells)
    assert {n.split(".")[0] for n in set(path_all) - set(path_cells)} == {"stem", "cells", "classifier"}
    # the cell path holds exactly the chosen ops' weights: normal cells 0, 2, 4 and reduce cells 1, 3
    g = G.GENAS_FLATNESS_CIFAR100
    expected = 0
    for k, reduction in enumerate([False, True, False, True, False]):
        c = 8 * 2 ** sum(k >= r for r in (1, 3))
        for j, (op, inp) in enumerate(g.reduce if reduction else g.normal):
            expected += op_params(op, c, 2 if reduction and inp < 2 else 1)
    assert sum(p.numel() for p in net.path_parameters(arch, positions="cells")) == expected
    ops = net.path_op_names(arch)
    assert len(ops) == 5 * 8
    assert ops[:8] == [op for op, _ in decode(arch).normal]
    assert ops[8:16] == ["factorized_reduce" if op == "skip_connect" and inp < 2 else op
                         for op, inp in decode(arch).reduce]
    with pytest.raises(ValueError, match="positions"):
        net.path_parameter_names(arch, positions="stem")
    with pytest.raises(ValueError, match="exactly 2 non-none edges"):
        net(torch.randn(1, 3, 32, 32), (4,) * 28)

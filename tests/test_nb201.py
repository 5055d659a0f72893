"""NAS-Bench-201 space: arch strings, isomorphism keys vs the benchmark table, exact parameter counts,
supernet paths, export and the evolution operators."""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from genas.spaces import build_supernet, get_space, nb201
from genas.spaces.nb201 import EDGES, OP_NAMES

ARCH_0 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
ARCH_1 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
# Node 1 feeds only 'none' edges, so its conv edge (gene 0) is dead; node 3 sums conv3x3(0) and pool(node 2).
DEAD_EDGE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"
# Edge cases: every node zero; node 1 zero but fed into a conv; the output node reads only node 0.
CORNER_ARCHS = [(0,) * 6, (0, 3, 3, 0, 2, 1), (3, 3, 3, 2, 0, 0), (4, 4, 0, 3, 0, 0)]



def read_benchmark(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def expected_params(arch, num_classes=10, C=16, N=5) -> int:
    """Independent count from per-layer formulas: conv weights, BN weight+bias, linear weight+bias."""
    conv_taps = {"nor_conv_1x1": 1, "nor_conv_3x3": 9}
    total = 3 * 9 * C + 2 * C  # stem conv + BN
    for c in (C, 2 * C, 4 * C):
        total += N * sum(conv_taps[OP_NAMES[g]] * c * c + 2 * c for g in arch if OP_NAMES[g] in conv_taps)
    for c_in, c_out in ((C, 2 * C), (2 * C, 4 * C)):
        total += 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out + c_in * c_out
    return total + 2 * 4 * C + 4 * C * num_classes + num_classes


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomize_bn_statistics(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running stats and affine weights, so eval-mode comparisons test the BN copy too."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


# ----------------------------------------------------------------------------- strings and keys


def test_string_round_trip_all_archs():
    archs = nb201.enumerate_archs()
    assert len(archs) == 5 ** 6 == 15_625
    strings = [nb201.format_arch_string(a) for a in archs]
    assert len(set(strings)) == 15_625
    assert all(nb201.parse_arch_string(s) == a for s, a in zip(strings, archs))
    assert nb201.parse_arch_string(ARCH_1) == (3, 3, 4, 1, 3, 1)


@pytest.mark.parametrize("text, fragment", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|", "2 node groups"),
    (ARCH_1 + "+|none~0|", "4 node groups"),
    ("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv_5x5'"),
    ("|none~0|+|none~0|none~2|+|none~0|none~1|none~2|", "entry 'none~2' of node 2"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "input index '1', expected 0"),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 group '|none~0|'"),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2", "must be enclosed in '|'"),
    ("|none0|+|none~0|none~1|+|none~0|none~1|none~2|", "entry 'none0' of node 1"),
])
def test_malformed_arch_strings(text, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        nb201.parse_arch_string(text)


@pytest.mark.parametrize("arch, fragment", [
    ((0, 1, 2), "has 6 genes"), ((0, 1, 2, 3, 4, 5), "gene 5 (edge 3<-2)"), ((0, 1.5, 2, 3, 4, 0), "integer"),
])
def test_invalid_gene_tuples(arch, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        nb201.build_network(arch)


def test_keys_are_the_benchmark_unique_strings(nb201_csv):
    rows = read_benchmark(nb201_csv)
    assert len(rows) == 15_625
    space = get_space("nb201")
    archs = [space.from_string(r["ArchitectureString"]) for r in rows]
    assert sorted(archs) == list(nb201.enumerate_archs())  # the table holds each architecture once
    assert [space.to_string(a) for a in archs] == [r["ArchitectureString"] for r in rows]
    keys = [space.key(a) for a in archs]
    assert keys == [r["UniqueString"] for r in rows]  # identical keys, hence identical equivalence classes
    assert len(set(keys)) == len({r["UniqueString"] for r in rows}) == 6_466


def test_unique_archs_one_per_class():
    unique = nb201.unique_archs()
    assert len(unique) == 6_466
    assert len({nb201.unique_string(a) for a in unique}) == 6_466
    assert unique[0] == (0,) * 6 and list(unique) == sorted(unique)  # first of each class, lexicographic
    # Hand-checked classes: swapping the commutative inputs of node 2, and a dead edge's op, keep the key.
    assert nb201.unique_string((1, 3, 2, 0, 0, 1)) == nb201.unique_string((1, 2, 3, 0, 0, 1)) == \
        "#+#+(0)@nor_conv_1x1+(0)@nor_conv_3x3"
    # Like the benchmark, a sum passed on by skip_connect stays one term: these equal functions differ.
    assert nb201.unique_string((3, 2, 0, 0, 1, 1)) == "#+#+(0)@nor_conv_1x1+(0)@nor_conv_3x3"
    assert nb201.unique_string((2, 3, 0, 0, 1, 1)) == "#+#+(0)@nor_conv_3x3+(0)@nor_conv_1x1"
    assert nb201.unique_string((3, 3, 0, 1, 0, 4)) == nb201.unique_string((2, 3, 0, 1, 0, 4))
    assert nb201.unique_string((3, 3, 0, 1, 0, 4)) != nb201.unique_string((3, 3, 0, 1, 0, 3))


# ----------------------------------------------------------------------------- standalone network


def test_benchmark_parameter_counts():
    assert count(nb201.build_network(ARCH_0, num_classes=10)) == round(0.129306e6) == expected_params((4, 2, 1, 2, 1, 1))
    assert count(nb201.build_network(ARCH_1, num_classes=10)) == round(0.802426e6)


def test_parameter_counts_match_formula():
    rng = np.random.default_rng(0)
    archs = [tuple(int(g) for g in rng.integers(0, 5, 6)) for _ in range(16)] + CORNER_ARCHS
    for arch in archs:
        assert count(nb201.build_network(arch)) == expected_params(arch), arch
    assert count(nb201.build_network(ARCH_1, num_classes=100, C=8, N=2)) == \
        expected_params(nb201.parse_arch_string(ARCH_1), num_classes=100, C=8, N=2)


def naive_forward(net: nb201.NB201Network, x: torch.Tensor) -> torch.Tensor:
    """The benchmark's cell semantics without any skipping: every edge runs, 'none' multiplies by 0."""
    x = net.stem(x)
    for cell in net.cells:
        if isinstance(cell, nb201.InferCell):
            nodes = [x]
            for node in (1, 2, 3):
                nodes.append(sum(cell.layers[k](nodes[src]) for k, (target, src) in enumerate(EDGES)
                                 if target == node))
            x = nodes[3]
        else:
            x = cell(x)
    return net.forward_head(x)


@pytest.mark.parametrize("arch", [ARCH_1, DEAD_EDGE, *CORNER_ARCHS])
def test_skipping_inactive_edges_keeps_the_function(arch):
    gen = torch.Generator().manual_seed(0)
    net = nb201.build_network(arch, C=4, N=2)
    randomize_bn_statistics(net, gen)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    for mode in (True, False):
        net.train(mode)
        torch.testing.assert_close(net(x), naive_forward(net, x), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- supernet


@pytest.fixture(scope="module")
def supernet() -> nb201.NB201Supernet:
    torch.manual_seed(0)
    net = build_supernet("nb201", num_classes=10, C=4, N=2)
    randomize_bn_statistics(net, torch.Generator().manual_seed(1))
    return net


def test_supernet_forward_shape_and_channels_last():
    net = build_supernet("nb201", num_classes=10).eval()
    assert isinstance(net, nb201.NB201Supernet) and net.space.name == "nb201"
    x = torch.randn(2, 3, 32, 32)
    arch = nb201.parse_arch_string(ARCH_1)
    with torch.no_grad():
        out = net(x, arch)
        out_cl = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), arch)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)
    # Every edge holds all five ops: per stage 5 cells x 6 edges x (conv1x1 + conv3x3 parameters).
    per_edge = {c: (c * c + 2 * c) + (9 * c * c + 2 * c) for c in (16, 32, 64)}
    shared = expected_params((0,) * 6)
    assert count(net) == shared + sum(5 * 6 * p for p in per_edge.values())


@pytest.mark.parametrize("arch", [ARCH_0, ARCH_1, DEAD_EDGE, *CORNER_ARCHS])
def test_export_matches_supernet(supernet, arch):
    genes = nb201.parse_arch_string(arch) if isinstance(arch, str) else arch
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    supernet.eval()
    net = supernet.export(genes)
    assert isinstance(net, nb201.NB201Network) and not net.training
    assert count(net) == expected_params(genes, C=4, N=2)
    with torch.no_grad():
        torch.testing.assert_close(net(x), supernet(x, genes), rtol=0, atol=0)
    state = supernet.extract_subnet_state_dict(genes)
    assert set(state) == set(net.state_dict())


def test_path_parameters_are_exactly_those_with_gradients(supernet):
    supernet.train()
    space = nb201.NB201Space()
    rng = np.random.default_rng(3)
    archs = [space.sample(rng) for _ in range(8)] + [nb201.parse_arch_string(DEAD_EDGE), *CORNER_ARCHS]
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    names = [n for n, _ in supernet.named_parameters()]
    for arch in archs:
        supernet.zero_grad(set_to_none=True)
        supernet(x, arch).square().sum().backward()
        with_grad = [n for n, p in supernet.named_parameters() if p.grad is not None]
        path = supernet.path_parameter_names(arch, positions="all")
        assert path == with_grad, arch  # same set, same (named_parameters) order
        cells = supernet.path_parameter_names(arch, positions="cells")
        assert cells == [n for n in path if ".layers." in n]
        assert len(set(path)) == len(path) and [n for n in names if n in set(path)] == path
    with pytest.raises(ValueError, match="positions"):
        supernet.path_parameter_names(archs[0], positions="stem")


def test_path_names_of_a_dead_edge_arch(supernet):
    arch = nb201.parse_arch_string(DEAD_EDGE)  # active: 2<-0 conv3x3, 3<-0 skip, 3<-2 pool
    assert supernet.path_op_names(arch) == ["nor_conv_3x3", "skip_connect", "avg_pool_3x3"] * 6
    cells = supernet.path_parameter_names(arch, positions="cells")
    assert cells[:3] == ["cells.0.layers.1.3.op.1.weight", "cells.0.layers.1.3.op.2.weight",
                         "cells.0.layers.1.3.op.2.bias"]
    assert len(cells) == 6 * 3  # 6 cells x one conv op x (conv weight, BN weight, BN bias)
    everything = nb201.parse_arch_string(ARCH_0)
    assert supernet.path_op_names(everything) == \
        ["avg_pool_3x3", "nor_conv_1x1", "skip_connect", "nor_conv_1x1", "skip_connect", "skip_connect"] * 6


# ----------------------------------------------------------------------------- evolution operators


def test_sample_is_uniform_over_ops():
    space = get_space("nb201")
    rng = np.random.default_rng(5)
    genes = np.array([space.sample(rng) for _ in range(2000)])
    for column in genes.T:
        counts = np.bincount(column, minlength=5)
        assert counts.min() > 0 and chisquare(counts).pvalue > 1e-3


def test_mutate_and_crossover():
    space = nb201.NB201Space()
    rng = np.random.default_rng(6)
    parent = (3, 3, 4, 1, 3, 1)
    assert all(space.mutate(parent, 0.0, rng) == parent for _ in range(100))
    mutants = np.array([space.mutate(parent, 1.0, rng) for _ in range(2000)])
    for column in mutants.T:  # prob 1: every gene re-drawn uniformly (SPOS), independent of the parent
        assert chisquare(np.bincount(column, minlength=5)).pvalue > 1e-3
    changed = np.mean([space.mutate(parent, 0.1, rng) != parent for _ in range(2000)])
    assert abs(changed - (1 - (1 - 0.1 * 0.8) ** 6)) < 0.04  # a re-draw keeps the op 1 time in 5
    a, b = (0, 1, 2, 3, 4, 0), (1, 2, 3, 4, 0, 1)
    children = np.array([space.crossover(a, b, rng) for _ in range(500)])
    assert ((children == a) | (children == b)).all()
    assert 0.4 < (children == a).mean() < 0.6
    with pytest.raises(ValueError, match="probability"):
        space.mutate(parent, 1.5, rng)


def test_space_interface():
    space = get_space("nb201")
    assert space.num_genes == 6 and space.name == "nb201"
    assert space.to_json((3, 3, 4, 1, 3, 1)) == {"space": "nb201", "arch": ARCH_1}
    assert space.validate([np.int64(3), 3, 4, 1, 3, 1]) == (3, 3, 4, 1, 3, 1)
    assert space.unique_archs() == nb201.unique_archs()

"""Flatness (paper Eq. 4) recomputed by hand on a real small NAS-Bench-201 supernet, every loss L_1..L_t of it.

Nothing of the scorer is used but its fixed batches (the images it evaluates): the path is derived here from the
space's rule, BN statistics are recalibrated here (exact average of per-batch statistics over the recalibration
batches, unperturbed weights), the noise is drawn here as the scorer documents it (genas/scoring/perturbation.py:
parameter ``name`` at sigma index ``i`` gets ``N(0, 1)`` from a torch CPU generator seeded by the first 8 bytes,
little-endian, of ``blake2b("seed|i|name")`` (``|arch`` appended without common random numbers), masked to 63 bits;
``independent``: theta + sigma_i z_i, ``cumulative``: theta_i = theta_{i-1} + (sigma_i - sigma_{i-1}) z_i),
the network runs through a plain functional forward written below, and Eq. 4 is
``F = 1 / (sum_i |(L_{i+1} - L_i) / (sigma_{i+1} - sigma_i)| + alpha |L_1 / sigma_1|)``
(shared/paper/genas_paper.txt, shared/reference/genas_facts.md section 1).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genas.data import build_search_data
from genas.scoring.scorer import ArchScorer
from genas.spaces import build_supernet
from genas.train_supernet import train_step

# (node, input) of genes 0..5 and the op names of gene values 0..4 (the benchmark's order)
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NONE, SKIP, CONV1, CONV3, POOL = range(5)
ARCHS = [
    (3, 1, 2, 4, 3, 0),  # node 2 feeds only a 'none' edge: edges 2<-0 and 2<-1 are off the path
    (2, 0, 1, 3, 4, 1),  # every edge on the path
    (0, 3, 3, 1, 2, 4),  # node 1 has only a 'none' input (zero), and its conv edge 2<-1 still runs
]
# NCHW as the plain forward below (channels_last changes the float summation order of the convolutions: rel 5e-6
# on these losses; tests/test_perturbation.py compares the two layouts)
SCORE = {"recalib_batches": 2, "batch_size_recalib": 32, "eval_batches": 2, "eval_batch_size": 48,
         "sigmas": [0.002, 0.01, 0.02], "alpha": 1.0, "seed": 3, "channels_last": False}


@pytest.fixture(scope="module")
def data():
    return build_search_data({"name": "digits"})


@pytest.fixture(scope="module")
def supernet(data):
    """A C=4, N=1 supernet after 24 SPOS steps on digits (trained weights, BN scale/shift away from 1/0)."""
    torch.manual_seed(0)
    net = build_supernet("nb201", num_classes=10, C=4, N=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rng = np.random.default_rng(0)
    net.train()
    for step in range(24):
        images, labels = zip(*(data.train[(int(i), step)] for i in rng.choice(len(data.train), 32, replace=False)))
        train_step(net, optimizer, torch.stack(images), torch.tensor(labels), net.space.sample(rng), grad_clip=5.0,
                   scaler=scaler)
    return net.eval()


def reaches_output(arch) -> set[int]:
    """Nodes with a path of non-'none' edges to node 3."""
    reach = {3}
    for node in (2, 1, 0):
        if any(arch[g] != NONE and src == node and dst in reach for g, (dst, src) in enumerate(EDGES)):
            reach.add(node)
    return reach


def path_names(net, arch) -> list[str]:
    """Every parameter the sub-network computes with: the macro skeleton (stem, ResNet blocks, last BN,
    classifier) and, in each search cell, the op of each non-'none' edge whose target node reaches the output."""
    reach = reaches_output(arch)
    names = []
    for name, _ in net.named_parameters():
        parts = name.split(".")
        if parts[0] == "cells" and parts[2] == "layers":
            gene, op = int(parts[3]), int(parts[4])
            if op != arch[gene] or arch[gene] == NONE or EDGES[gene][0] not in reach:
                continue
        names.append(name)
    return names


def noise_seed(seed: int, sigma_index: int, name: str, arch=None) -> int:
    text = f"{seed}|{sigma_index}|{name}" + ("" if arch is None else f"|{tuple(arch)}")
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & (2 ** 63 - 1)


class PlainForward:
    """The NB201 network of one architecture as functional ops on a dict of named tensors. ``stats=None``:
    BN in train mode on batch statistics, which it records per BN (for the recalibration); else BN in eval
    mode on ``stats[name] = (mean, var)``."""

    def __init__(self, params: dict[str, torch.Tensor], arch, stats=None):
        self.p, self.arch, self.stats, self.seen = params, arch, stats, {}

    def bn(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w, b = self.p[f"{name}.weight"], self.p[f"{name}.bias"]
        if self.stats is None:
            mean, biased = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
            n = x.numel() // x.shape[1]
            self.seen.setdefault(name, []).append((mean.double(), biased.double() * n / (n - 1)))
        else:
            mean, biased = self.stats[name]
        return (x - mean[:, None, None]) / torch.sqrt(biased[:, None, None] + 1e-5) * w[:, None, None] \
            + b[:, None, None]

    def relu_conv_bn(self, x: torch.Tensor, prefix: str, stride: int = 1) -> torch.Tensor:
        weight = self.p[f"{prefix}.op.1.weight"]
        y = F.conv2d(F.relu(x), weight, stride=stride, padding=weight.shape[-1] // 2)
        return self.bn(y, f"{prefix}.op.2")

    def cell(self, x: torch.Tensor, c: int) -> torch.Tensor:
        nodes = [x]
        for node in (1, 2, 3):
            total = torch.zeros_like(x)  # a node without a non-'none' input is zero
            for gene, (dst, src) in enumerate(EDGES):
                op = self.arch[gene]
                if dst != node or op == NONE:
                    continue
                inp = nodes[src]
                if op == SKIP:
                    out = inp
                elif op == POOL:
                    out = F.avg_pool2d(inp, 3, stride=1, padding=1, count_include_pad=False)
                else:
                    out = self.relu_conv_bn(inp, f"cells.{c}.layers.{gene}.{op}")
                total = total + out
            nodes.append(total)
        return nodes[3]

    def resnet_block(self, x: torch.Tensor, c: int) -> torch.Tensor:
        residual = self.relu_conv_bn(self.relu_conv_bn(x, f"cells.{c}.conv_a", stride=2), f"cells.{c}.conv_b")
        shortcut = F.conv2d(F.avg_pool2d(x, 2, stride=2), self.p[f"cells.{c}.downsample.1.weight"])
        return shortcut + residual

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(F.conv2d(x, self.p["stem.0.weight"], padding=1), "stem.1")
        for c, kind in enumerate(("cell", "block", "cell", "block", "cell")):  # N=1: three stages
            x = self.cell(x, c) if kind == "cell" else self.resnet_block(x, c)
        x = F.relu(self.bn(x, "lastact.0")).mean(dim=(2, 3))
        return F.linear(x, self.p["classifier.weight"], self.p["classifier.bias"])


def losses_by_hand(net, arch, recalib, val, sigmas, seed, noise="independent", common=True) -> list[float]:
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    recording = PlainForward(params, arch)
    with torch.no_grad():
        for x, _ in recalib:
            recording(x)
    # exact recalibration: the average over the batches of each batch's mean and unbiased variance
    stats = {name: tuple(torch.stack(s).mean(0).float() for s in zip(*seen)) for name, seen in recording.seen.items()}
    losses, current = [], dict(params)
    for i, sigma in enumerate(sigmas):
        for name in path_names(net, arch):
            z = torch.randn(params[name].shape, generator=torch.Generator().manual_seed(
                noise_seed(seed, i, name, None if common else arch)))
            if noise == "independent":
                current[name] = params[name] + sigma * z
            else:
                current[name] = current[name] + (sigma - (sigmas[i - 1] if i else 0.0)) * z
        forward = PlainForward(current, arch, stats)
        with torch.no_grad():
            total = sum(F.cross_entropy(forward(x), y, reduction="sum").double() for x, y in val)
        losses.append(float(total) / sum(len(y) for _, y in val))
    return losses


def eq4(losses, sigmas, alpha) -> float:
    slopes = sum(abs((losses[i + 1] - losses[i]) / (sigmas[i + 1] - sigmas[i])) for i in range(len(sigmas) - 1))
    return 1.0 / (slopes + alpha * abs(losses[0] / sigmas[0]))


def test_path_rule_is_the_supernets(supernet):
    for arch in ARCHS:
        assert path_names(supernet, arch) == supernet.path_parameter_names(arch)
    assert not any(".layers.1." in n or ".layers.2." in n for n in path_names(supernet, ARCHS[0]))


@pytest.mark.parametrize("options", [{}, {"common_random_numbers": False}, {"noise": "cumulative"}],
                         ids=["default", "no-common-random-numbers", "cumulative"])
def test_every_loss_and_eq4_by_hand(supernet, data, options):
    scorer = ArchScorer(supernet, {**SCORE, **options}, data.train, data.val, "cpu")
    sigmas = SCORE["sigmas"]
    for arch in ARCHS:
        result = scorer(arch)
        mine = losses_by_hand(supernet, arch, scorer.recalib_batches, scorer.val_batches, sigmas, SCORE["seed"],
                              noise=options.get("noise", "independent"),
                              common=options.get("common_random_numbers", True))
        assert result["losses"] == pytest.approx(mine, rel=1e-6, abs=0)
        assert result["flatness"] == eq4(result["losses"], sigmas, SCORE["alpha"])  # Eq. 4, bit for bit
        assert result["flatness"] == pytest.approx(eq4(mine, sigmas, SCORE["alpha"]), rel=1e-6)
        assert result["score"] == result["flatness"]  # metric flatness
        assert len(set(mine)) == 3 and min(mine) > 0  # three different points of the curve

"""bf16 scoring (``score.amp=bf16``) against fp32: the perturbed losses L_1..L_t within the README's tolerance.

Measured on CPU (a C=4, N=1 NB201 supernet after 24 SPOS steps on digits, 8 architectures, sigmas 2e-3/1e-2/2e-2):
bf16 losses differ from fp32 by up to 2.2e-3 (rel 9.4e-4) where the median L_2 - L_1 gap is 5.8e-3 (the review of
issue 21: up to 0.004 against a median gap of 0.02, Kendall tau 0.94 over 12 architectures). The tolerance: 5e-3.
A difference of the size of the gaps flatness is computed from can reorder candidates, which is why the scorer
refuses bf16 unless ``score.amp_allow_rank_change=true`` (where this version of the scorer has that option).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genas.core.config import DEFAULTS
from genas.data import build_search_data
from genas.scoring.scorer import ArchScorer
from genas.spaces import build_supernet
from genas.train_supernet import train_step

BF16_LOSS_TOL = 5e-3
ARCHS = [(2, 2, 3, 4, 0, 0), (4, 1, 2, 3, 0, 1), (0, 1, 2, 2, 0, 4)]
SCORE = {"recalib_batches": 2, "batch_size_recalib": 32, "eval_batches": 2, "eval_batch_size": 48,
         "sigmas": [0.002, 0.01, 0.02], "seed": 0}


@pytest.fixture(scope="module")
def data():
    return build_search_data({"name": "digits"})


@pytest.fixture(scope="module")
def supernet(data):
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


def test_bf16_perturbed_losses_within_tolerance_of_fp32(supernet, data):
    bf16 = {"amp": "bf16"}
    if "amp_allow_rank_change" in DEFAULTS["score"]:
        bf16["amp_allow_rank_change"] = True
    fp32_scorer = ArchScorer(supernet, SCORE, data.train, data.val, "cpu")
    bf16_scorer = ArchScorer(supernet, {**SCORE, **bf16}, data.train, data.val, "cpu")
    for arch in ARCHS:
        fp32, low = fp32_scorer(arch)["losses"], bf16_scorer(arch)["losses"]
        gaps = [abs(a - b) for a, b in zip(fp32, low)]
        assert 0 < max(gaps) <= BF16_LOSS_TOL, (arch, fp32, low)  # > 0: bf16 did compute

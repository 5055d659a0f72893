"""With the reference options (``score.noise_stream=reference``, ``recal_order=file`` and the preset's others), our
scorer gives the reference code's numbers, not only their distribution: the per-sigma losses and flatness of
GeNAS ``get_cand_wlm`` and the accuracy of ``get_cand_acc``, for several candidates scored in a row on the same
weights, images and seed. The reference side (tests/reference_nets.py) is a transcription of the official code
running on the global torch generator with unshuffled DataLoaders, over a reference-structured network.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from genas.scoring.reference_stream import reference_noise_layout
from genas.scoring.scorer import ArchScorer
from genas.spaces import build_supernet
from genas.spaces.nb201.space import NB201Space
from genas.spaces.darts.space import DartsSpace

from reference_nets import RefNB201Network, RefNetwork, reference_get_cand_acc, reference_get_cand_wlm  # noqa: E402

BATCH = 16
N_TRAIN, N_VAL = 40, 40          # 2 recalibration batches of 16 (32 images); 3 validation batches (16, 16, 8)
RECAL_IMAGES = 2 * BATCH
SIGMAS = [1e-2, 3e-2, 6e-2]
SEED = 3

REFERENCE_SCORE = {
    "metric": "flatness", "sigmas": SIGMAS, "alpha": 1.0, "flatness_eps": 1e-5, "noise": "cumulative",
    "common_random_numbers": False, "fresh_draws": True, "noise_stream": "reference", "recal_order": "file",
    "bn_recal": "reference", "loss_mean": "batches", "val_order": "file", "positions": "all",
    "recalib_batches": RECAL_IMAGES // BATCH, "batch_size_recalib": BATCH,
    "eval_batches": math.ceil(N_VAL / BATCH), "eval_batch_size": BATCH, "seed": SEED, "channels_last": False,
}


def _images(num_classes: int, size: int) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(11)
    train = TensorDataset(torch.randn(N_TRAIN, 3, size, size, generator=g),
                          torch.randint(0, num_classes, (N_TRAIN,), generator=g))
    val = TensorDataset(torch.randn(N_VAL, 3, size, size, generator=g),
                        torch.randint(0, num_classes, (N_VAL,), generator=g))
    return train, val


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Trained-looking weights and BN statistics (not the init's), so that losses move with the noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.3)


def _reference_run(reference, args_of, archs, train, val, metric):
    """The reference's scores of ``archs`` in a row, from the global generator seeded as prepare_seed does."""
    train_loader = DataLoader(train, batch_size=BATCH, shuffle=False)
    val_loader = DataLoader(val, batch_size=BATCH, shuffle=False)
    out = []
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        for arch in archs:
            acc = None
            if metric == "accuracy+flatness":
                acc = reference_get_cand_acc(reference, args_of(arch), train_loader, val_loader, RECAL_IMAGES, N_VAL)
            wlm, losses = reference_get_cand_wlm(reference, args_of(arch), train_loader, val_loader, SIGMAS,
                                                 RECAL_IMAGES, N_VAL)
            out.append((acc, wlm, losses))
    return out


def _assert_equal_runs(ours, theirs):
    for (result, (acc, wlm, losses)) in zip(ours, theirs):
        assert result["losses"] == pytest.approx(losses, rel=1e-6, abs=0)
        assert result["flatness"] == pytest.approx(wlm, rel=1e-6)
        if acc is not None:
            assert result["accuracy"] == pytest.approx(acc, rel=1e-6)


@pytest.mark.parametrize("metric", ["flatness", "accuracy+flatness"])
def test_darts_reference_stream_gives_get_cand_wlm_losses(metric):
    torch.manual_seed(0)
    reference = RefNetwork(4, 10, 3)
    _randomise(reference)
    ours = build_supernet("darts", 10, C=4, layers=3, pool_bn=True, affine=True)
    converted = ours.convert_reference_state_dict(reference.state_dict())
    ours.load_state_dict(converted, strict=True)
    # the stream's order: the reference's named_parameters(), which our supernet registers in the same order
    reference_order = [n for n in ours.convert_reference_state_dict(dict(reference.named_parameters()))]
    assert [name for name, _ in reference_noise_layout(ours)] == reference_order
    train, val = _images(10, 8)
    rng = np.random.default_rng(5)
    archs = [DartsSpace().sample(rng) for _ in range(3)]
    theirs = _reference_run(reference, lambda a: (list(a[:14]), list(a[14:])), archs, train, val, metric)
    scorer = ArchScorer(ours, {**REFERENCE_SCORE, "metric": metric}, train, val, "cpu")
    _assert_equal_runs([scorer(a) for a in archs], theirs)
    assert len({tuple(r[2]) for r in theirs}) == len(archs)  # the stream runs on: other noise per candidate


def test_nb201_reference_stream_gives_get_cand_wlm_losses_on_the_rlnas_supernet():
    torch.manual_seed(0)
    reference = RefNB201Network(4, 1, 10, affine=False)
    _randomise(reference, seed=1)
    ours = build_supernet("nb201", 10, C=4, N=1, affine=False)
    state = ours.convert_reference_state_dict(reference.state_dict())
    ours.load_state_dict(state, strict=True)
    layout = reference_noise_layout(ours)
    reference_params = list(reference.named_parameters())
    assert reference_params[0][0] == "arch_parameters" and layout[0] == (None, (6, 5))
    assert [n for n, _ in layout[1:]] == list(ours.convert_reference_state_dict(dict(reference_params[1:])))
    train, val = _images(10, 8)
    rng = np.random.default_rng(2)
    archs = [NB201Space().sample(rng) for _ in range(4)]
    theirs = _reference_run(reference, lambda a: (tuple(a),), archs, train, val, "flatness")
    scorer = ArchScorer(ours, REFERENCE_SCORE, train, val, "cpu")
    _assert_equal_runs([scorer(a) for a in archs], theirs)


def test_reference_accuracy_equals_get_cand_acc():
    torch.manual_seed(0)
    reference = RefNB201Network(4, 1, 10, affine=False)
    _randomise(reference, seed=2)
    ours = build_supernet("nb201", 10, C=4, N=1, affine=False)
    ours.load_state_dict(ours.convert_reference_state_dict(reference.state_dict()), strict=True)
    train, val = _images(10, 8)
    train_loader, val_loader = DataLoader(train, batch_size=BATCH), DataLoader(val, batch_size=BATCH)
    scorer = ArchScorer(ours, {**REFERENCE_SCORE, "metric": "accuracy"}, train, val, "cpu")
    for arch in [NB201Space().sample(np.random.default_rng(k)) for k in range(3)]:
        expected = reference_get_cand_acc(reference, (tuple(arch),), train_loader, val_loader, RECAL_IMAGES, N_VAL)
        assert scorer(arch)["accuracy"] == pytest.approx(expected, rel=1e-6)


def test_reference_stream_needs_the_reference_supernet_tensors():
    ours = build_supernet("darts", 10, C=4, layers=3, pool_bn=False)
    train, val = _images(10, 8)
    with pytest.raises(ValueError, match="supernet.pool_bn=true"):
        ArchScorer(ours, REFERENCE_SCORE, train, val, "cpu")
    with pytest.raises(ValueError, match="needs score.fresh_draws=true"):
        ArchScorer(build_supernet("nb201", 10, C=4, N=1, affine=False),
                   {**REFERENCE_SCORE, "fresh_draws": False, "common_random_numbers": True}, train, val, "cpu")

"""The perturbation evaluator and ArchScorer on a small real NB201 supernet (C=4, N=1) and sklearn digits."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genas.data import build_search_data
from genas.scoring.perturbation import (PerturbationConfig, fixed_batches, noise_seed, perturbed_losses, recalibrated_bn,
                                top_hessian_eigenvector)
from genas.scoring.scorer import ArchScorer, check_score_config
from genas.spaces import build_supernet

ARCH_A = (3, 1, 2, 4, 3, 0)
ARCH_B = (2, 0, 1, 3, 4, 1)
SMALL = {"recalib_batches": 2, "batch_size_recalib": 32, "eval_batches": 2, "eval_batch_size": 48,
         "sigmas": [0.002, 0.01, 0.02], "seed": 0}


@pytest.fixture(scope="module")
def data():
    return build_search_data({"name": "digits"})


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return build_supernet("nb201", num_classes=10, C=4, N=1).eval()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, f"scoring changed {changed[:5]}"


def scorer_for(supernet, data, **options):
    return ArchScorer(supernet, {**SMALL, **options}, data.train, data.val, "cpu")


def without_time(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seconds"}


def test_fixed_batches_are_seeded_and_sized(data):
    first = fixed_batches(data.val, 3, 10, seed=7, device="cpu")
    again = fixed_batches(data.val, 3, 10, seed=7, device="cpu")
    other = fixed_batches(data.val, 3, 10, seed=8, device="cpu")
    assert [tuple(x.shape) for x, _ in first] == [(10, 3, 32, 32)] * 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])
    whole = fixed_batches(data.val, None, 400, seed=0, device="cpu")
    assert [len(y) for _, y in whole] == [400, 400, len(data.val) - 800]
    assert sorted(torch.cat([y for _, y in whole]).tolist()) == sorted(int(data.val[i][1]) for i in range(len(data.val)))


def test_recalibration_is_exact_cumulative_average_and_restored(supernet, data):
    batches = fixed_batches(data.train, 3, 16, seed=0, device="cpu")
    bn = supernet.stem[1]
    before = snapshot(supernet)
    with recalibrated_bn(supernet, lambda x: supernet(x, ARCH_A), batches):
        assert not supernet.training and bn.momentum == 0.1  # momentum restored right after recalibration
        with torch.no_grad():
            feats = [supernet.stem[0](x) for x, _ in batches]  # the stem BN's inputs
        exact_mean = torch.cat(feats).mean(dim=(0, 2, 3))
        mean_unbiased_var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
        torch.testing.assert_close(bn.running_mean, exact_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, mean_unbiased_var, rtol=1e-5, atol=1e-6)
        assert int(bn.num_batches_tracked) == 3
        # every BN is reset, only the path's see data: edge 1<-0 runs nor_conv_3x3 in ARCH_A, not nor_conv_1x1
        on_path_bn = supernet.cells[0].layers[0][3].op[2]
        off_path_bn = supernet.cells[0].layers[0][2].op[2]
        assert int(on_path_bn.num_batches_tracked) == 3 and int(off_path_bn.num_batches_tracked) == 0
        assert torch.equal(off_path_bn.running_mean, torch.zeros(4))
    assert_unchanged(supernet, before)


@pytest.mark.parametrize("options", [
    {"metric": "accuracy+flatness"},
    {"metric": "flatness", "noise": "cumulative", "common_random_numbers": False},
    {"metric": "flatness", "positions": "cells"},
    {"metric": "flatness", "direction": "hessian", "hessian_iters": 2},
    {"metric": "flatness", "noise": "cumulative", "common_random_numbers": False, "fresh_draws": True,
     "noise_stream": "reference", "supernet_affine": False},
])
def test_scoring_restores_every_supernet_tensor(supernet, data, options):
    options = dict(options)
    if not options.pop("supernet_affine", True):  # the reference NB201 stream needs RLNAS's cell BNs
        torch.manual_seed(0)
        supernet = build_supernet("nb201", num_classes=10, C=4, N=1, affine=False).eval()
    before = snapshot(supernet)
    result = scorer_for(supernet, data, **options)(ARCH_A)
    assert result["finite"] and len(result["losses"]) == 3
    assert_unchanged(supernet, before)


def test_scores_do_not_depend_on_evaluation_order(supernet, data):
    scorer = scorer_for(supernet, data, metric="accuracy+flatness")
    a1, b1 = scorer(ARCH_A), scorer(ARCH_B)
    b2, a2 = scorer(ARCH_B), scorer(ARCH_A)
    assert without_time(a1) == without_time(a2) and without_time(b1) == without_time(b2)
    assert a1["losses"] != b1["losses"]


def test_accuracy_and_loss_match_an_independent_recomputation(supernet, data):
    """Export the sub-network, recalibrate its BN by hand, perturb it with the documented draws: same numbers."""
    scorer = scorer_for(supernet, data, metric="accuracy+flatness", alpha=1.0, gamma=0.5)
    result = scorer(ARCH_A)
    net = supernet.export(ARCH_A)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for x, _ in scorer.recalib_batches:
            net(x)
        net.eval()
        n = sum(len(y) for _, y in scorer.val_batches)
        correct = sum(int((net(x).argmax(1) == y).sum()) for x, y in scorer.val_batches)
        assert result["accuracy"] == correct / n
        # L_1: every parameter of the path + sigma_1 * N(0, 1) drawn from the generator of its supernet name
        name_of = {p.data_ptr(): k for k, p in supernet.named_parameters()}
        path = set(supernet.path_parameter_names(ARCH_A))
        sub = supernet.extract_subnet_state_dict(ARCH_A)
        for key, p in net.named_parameters():
            name = name_of[sub[key].data_ptr()]
            if name in path:
                g = torch.Generator().manual_seed(noise_seed(0, 0, name))
                p.add_(torch.randn(p.shape, generator=g), alpha=0.002)
        loss_1 = sum(float(F.cross_entropy(net(x), y, reduction="sum")) for x, y in scorer.val_batches) / n
    assert result["losses"][0] == pytest.approx(loss_1, rel=1e-5)
    flat = 1 / (abs((result["losses"][1] - result["losses"][0]) / 0.008)
                + abs((result["losses"][2] - result["losses"][1]) / 0.01) + abs(result["losses"][0] / 0.002))
    assert result["flatness"] == pytest.approx(flat, rel=1e-12)
    assert result["score"] == pytest.approx(correct / n + 0.5 * flat / 0.002, rel=1e-12)


def stem_weights_seen(supernet, arch, cfg, batches):
    """The stem conv weight at the first batch of each sigma during perturbed_losses."""
    seen = []
    handle = supernet.stem.register_forward_pre_hook(lambda m, inp: seen.append(m[0].weight.detach().clone()))
    try:
        perturbed_losses(supernet, arch, batches, cfg)
    finally:
        handle.remove()
    return seen[::len(batches)]


@pytest.mark.parametrize("common", [True, False])
def test_common_random_numbers_share_noise_across_archs(supernet, data, common):
    batches = fixed_batches(data.val, 2, 8, seed=0, device="cpu")
    cfg = PerturbationConfig(sigmas=(0.002, 0.01, 0.02), common_random_numbers=common, seed=3)
    original = supernet.stem[0].weight.detach().clone()
    seen_a = stem_weights_seen(supernet, ARCH_A, cfg, batches)
    seen_b = stem_weights_seen(supernet, ARCH_B, cfg, batches)
    assert len(seen_a) == len(seen_b) == 3
    for i, sigma in enumerate(cfg.sigmas):
        if common:
            assert torch.equal(seen_a[i], seen_b[i])
            g = torch.Generator().manual_seed(noise_seed(3, i, "stem.0.weight"))
            expected = original + sigma * torch.randn(original.shape, generator=g)
            torch.testing.assert_close(seen_a[i], expected, rtol=0, atol=1e-7)  # 1 ulp; noise is ~1e-3
        else:
            assert not torch.equal(seen_a[i], seen_b[i])


def test_cumulative_noise_differs_and_equals_independent_for_one_sigma(supernet, data):
    batches = fixed_batches(data.val, 2, 32, seed=0, device="cpu")
    with recalibrated_bn(supernet, lambda x: supernet(x, ARCH_A), batches):
        independent = perturbed_losses(supernet, ARCH_A, batches, PerturbationConfig((0.01, 0.05, 0.1)))
        cumulative = perturbed_losses(supernet, ARCH_A, batches,
                                      PerturbationConfig((0.01, 0.05, 0.1), noise="cumulative"))
        one_ind = perturbed_losses(supernet, ARCH_A, batches, PerturbationConfig((0.05,)))
        one_cum = perturbed_losses(supernet, ARCH_A, batches, PerturbationConfig((0.05,), noise="cumulative"))
    assert independent[0] == cumulative[0]  # the first step is sigma_1 * z_1 in both
    assert independent[1] != cumulative[1] and independent[2] != cumulative[2]
    assert one_ind == one_cum


def test_batched_sigmas_is_refused_with_the_reason():
    from genas.core.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="batched_sigmas was removed .*crashed"):
        load_config(None, ["score.batched_sigmas=true"])
    with pytest.raises(ValueError, match="unknown score option"):
        check_score_config({"batched_sigmas": True})


def test_nonfinite_loss_gives_worst_score_and_is_counted(supernet, data):
    before = snapshot(supernet)
    scorer = scorer_for(supernet, data, metric="flatness", sigmas=[1e6])
    with pytest.warns(RuntimeWarning, match="1 such candidate"):
        result = scorer(ARCH_A)
    assert result["score"] == -math.inf and result["finite"] is False and result["flatness"] is None
    assert scorer.num_nonfinite == 1
    assert_unchanged(supernet, before)


def test_hessian_power_iteration_matches_eigh_of_explicit_hessian():
    """Top eigenvector of the Hessian of a tiny softmax regression vs torch.linalg.eigh of the full Hessian."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    weight = torch.randn(3, 3, generator=gen, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)

    def loss_of(w, b):
        return F.cross_entropy(x @ w.T + b, y)

    eigenvalue, (v_w, v_b) = top_hessian_eigenvector(lambda: [loss_of(weight, bias)], [weight, bias],
                                                      iters=500, tol=1e-12, seed=1)
    hessian = torch.autograd.functional.hessian(loss_of, (weight.detach(), bias.detach()))
    full = torch.cat([torch.cat([hessian[i][j].reshape(weight.numel() if i == 0 else 3, -1) for j in range(2)], 1)
                      for i in range(2)])
    values, vectors = torch.linalg.eigh(full)
    top = vectors[:, values.abs().argmax()]
    found = torch.cat([v_w.reshape(-1), v_b])
    assert float(found.norm()) == pytest.approx(1.0, abs=1e-6)
    assert abs(float(found @ top)) == pytest.approx(1.0, abs=1e-4)
    assert eigenvalue == pytest.approx(float(values.abs().max()), rel=1e-4)
    assert found[found.abs().argmax()] > 0  # the documented sign convention


def test_amp_refused_below_dtype_resolution(supernet, data):
    with pytest.raises(ValueError, match="cannot resolve sigma_1"):
        scorer_for(supernet, data, metric="flatness", amp="bf16", amp_allow_rank_change=True,
                   sigmas=[1e-5, 5e-5, 1e-4])


def test_amp_refused_unless_the_rank_change_is_accepted(supernet, data):
    with pytest.raises(ValueError, match="changes the ranking.*amp_allow_rank_change=true"):
        scorer_for(supernet, data, metric="flatness", amp="bf16")
    result = scorer_for(supernet, data, metric="flatness", amp="bf16", amp_allow_rank_change=True)(ARCH_A)
    assert result["finite"] and len(result["losses"]) == 3


@pytest.mark.parametrize("options, match", [
    ({"metric": "flatness", "sigma": [0.1]}, "unknown score option"),
    ({"metric": "loss"}, "score.metric"),
    ({"metric": "flatness", "noise": "gaussian"}, "score.noise"),
    ({"metric": "flatness", "sigmas": [0.02, 0.01]}, "strictly increasing"),
])
def test_bad_score_config_is_one_clear_error(supernet, data, options, match):
    with pytest.raises(ValueError, match=match):
        scorer_for(supernet, data, **options)


def test_channels_last_scoring_matches_contiguous(supernet, data):
    before = snapshot(supernet)
    plain_net = build_supernet("nb201", num_classes=10, C=4, N=1)
    plain_net.load_state_dict(supernet.state_dict())
    plain_scorer = scorer_for(plain_net, data, metric="accuracy+flatness", channels_last=False)
    plain = plain_scorer(ARCH_B)
    assert plain_net.stem[0].weight.is_contiguous() and plain_scorer.val_batches[0][0].is_contiguous()
    net = build_supernet("nb201", num_classes=10, C=4, N=1)
    net.load_state_dict(supernet.state_dict())
    nhwc_scorer = scorer_for(net, data, metric="accuracy+flatness", channels_last=True)
    nhwc = nhwc_scorer(ARCH_B)
    assert net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not net.stem[0].weight.is_contiguous()
    assert nhwc_scorer.val_batches[0][0].is_contiguous(memory_format=torch.channels_last)
    assert nhwc["accuracy"] == plain["accuracy"]
    assert nhwc["losses"] == pytest.approx(plain["losses"], rel=1e-5)
    assert_unchanged(supernet, before)


def test_scoring_a_candidate_syncs_the_host_once_per_sigma(supernet, data):
    """A GPU stalls at every ``.item()`` / ``float(tensor)``: exact BN recalibration sets the cumulative factor
    1/(k+1) itself (momentum=None makes torch read num_batches_tracked per BN per batch: 297 syncs per NB201
    candidate measured on an H200), and each loss is accumulated on the device and read once."""
    from torch.profiler import ProfilerActivity, profile
    scorer = scorer_for(supernet, data, metric="flatness", channels_last=False)
    scorer(ARCH_A)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = scorer(ARCH_A)
    syncs = sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")
    assert result["finite"] and syncs == len(SMALL["sigmas"])

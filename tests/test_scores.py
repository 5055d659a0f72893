"""Pure score formulas (paper Eq. 3-5) and the RLNAS angle, checked against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from genas.scoring.formulas import angle_between, check_sigmas, combined_score, flatness_from_losses
from genas.scoring.scorer import ArchScorer, path_weight_vector
from genas.spaces import build_supernet

LOSSES = [1.0, 1.2, 1.5]
SIGMAS = [0.1, 0.2, 0.4]


def test_flatness_eq4_hand_computed():
    # slopes |0.2/0.1| = 2 and |0.3/0.2| = 1.5; depth term alpha * |1.0/0.1| = 10 alpha
    assert flatness_from_losses(LOSSES, SIGMAS, alpha=1.0) == pytest.approx(1 / 13.5, rel=1e-12)
    assert flatness_from_losses(LOSSES, SIGMAS, alpha=0.5) == pytest.approx(1 / 8.5, rel=1e-12)
    assert flatness_from_losses(LOSSES, SIGMAS, alpha=0.0) == pytest.approx(1 / 3.5, rel=1e-12)  # Eq. 3


def test_flatness_uses_absolute_slopes_and_single_sigma():
    # a loss that drops then rises: |(-0.5)/0.1| + |1.0/0.2| = 10, plus |2/0.1| = 20
    assert flatness_from_losses([2.0, 1.5, 2.5], SIGMAS) == pytest.approx(1 / 30, rel=1e-12)
    assert flatness_from_losses([0.5], [0.01]) == pytest.approx(1 / 50, rel=1e-12)  # only the depth term
    assert flatness_from_losses([1.0, 1.0], [0.1, 0.2], alpha=0.0) == math.inf  # perfectly flat, no epsilon


@pytest.mark.parametrize("losses, sigmas, alpha, match", [
    ([1.0, 2.0], [0.2, 0.1], 1.0, "strictly increasing"),
    ([1.0, 2.0], [0.1, 0.1], 1.0, "strictly increasing"),
    ([1.0], [0.1, 0.2], 1.0, "one loss per sigma"),
    ([1.0, math.nan], [0.1, 0.2], 1.0, "non-finite"),
    ([1.0, math.inf], [0.1, 0.2], 1.0, "non-finite"),
    ([1.0], [0.1], 0.0, "at least two sigmas"),
    ([1.0], [-0.1], 1.0, "> 0"),
    ([], [], 1.0, "empty"),
])
def test_flatness_rejects_bad_input(losses, sigmas, alpha, match):
    with pytest.raises(ValueError, match=match):
        flatness_from_losses(losses, sigmas, alpha)


def test_check_sigmas_returns_floats():
    assert check_sigmas([1, 2]) == (1.0, 2.0)


def test_combined_score_eq5():
    # S + gamma * (1 / sigma_1) * F = 0.3 + 2 * 10 / 13.5
    assert combined_score(0.3, 1 / 13.5, gamma=2.0, sigma_1=0.1) == pytest.approx(0.3 + 20 / 13.5, rel=1e-12)
    assert combined_score(0.3, 5.0, gamma=0.0, sigma_1=0.1) == 0.3
    with pytest.raises(ValueError, match="sigma_1"):
        combined_score(0.3, 1.0, 1.0, 0.0)


def test_angle_between_known_rotations():
    a = torch.tensor([3.0, 4.0, 0.0])
    theta = math.pi / 6
    rot = torch.tensor([[math.cos(theta), -math.sin(theta), 0.0], [math.sin(theta), math.cos(theta), 0.0],
                        [0.0, 0.0, 1.0]])
    assert angle_between(a, rot @ a) == pytest.approx(theta, abs=1e-7)
    assert angle_between(a, a) == 0.0
    assert angle_between(a, 2.5 * a) == 0.0
    assert angle_between(a, -a) == pytest.approx(math.pi, abs=1e-12)
    assert angle_between(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(math.pi / 4, abs=1e-12)
    with pytest.raises(ValueError, match="zero vector"):
        angle_between(a, torch.zeros(3))
    with pytest.raises(ValueError, match="1-D"):
        angle_between(a, torch.ones(4))


def test_path_weight_vector_adds_rlnas_constants():
    weights = {"w": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([3.0]), "unused": torch.ones(5)}
    vec = path_weight_vector(weights, ["w", "b"], ["avg_pool_3x3", "nor_conv_3x3", "skip_connect", "max_pool_3x3"])
    expected = [1.0, 2.0, 3.0] + [1 / 9] * 9 + [1.0] + [1 / 9] * 9
    assert vec.dtype == torch.float64 and vec.tolist() == pytest.approx(expected, abs=1e-15)
    with pytest.raises(KeyError, match="lacks 1 path parameter"):
        path_weight_vector(weights, ["w", "missing"], [])


@pytest.fixture(scope="module")
def small_supernet():
    torch.manual_seed(0)
    return build_supernet("nb201", num_classes=10, C=4, N=1)


def test_angle_score_of_identical_and_negated_weights(small_supernet):
    arch = (1, 4, 0, 3, 1, 2)  # skip, pool, none, conv3x3, skip, conv1x1
    ops = small_supernet.path_op_names(arch)
    assert sorted(set(ops)) == ["avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3", "skip_connect"]
    same = {k: v.clone() for k, v in small_supernet.state_dict().items()}
    scorer = ArchScorer(small_supernet, {"metric": "angle"}, None, None, "cpu", init_state_dict=same)
    result = scorer(arch)
    assert result["angle"] == 0.0 and result["score"] == 0.0
    assert result["losses"] is None and result["accuracy"] is None and result["flatness"] is None

    # init = -final on every path weight: cos = (|c|^2 - |w|^2) / (|c|^2 + |w|^2), with |c|^2 the squared norm
    # of the constants (1/9 per pooling, 1 per skip), |w|^2 recomputed here from the parameters
    names = small_supernet.path_parameter_names(arch)
    params = dict(small_supernet.named_parameters())
    w2 = sum(float(params[n].detach().double().pow(2).sum()) for n in names)
    c2 = ops.count("avg_pool_3x3") / 9 + ops.count("skip_connect")
    assert ops.count("avg_pool_3x3") == 3 and ops.count("skip_connect") == 6  # 3 cells x (1 pool, 2 skips)
    negated = dict(same)
    negated.update({n: -params[n].detach() for n in names})
    scorer = ArchScorer(small_supernet, {"metric": "angle"}, None, None, "cpu", init_state_dict=negated)
    expected = math.acos((c2 - w2) / (c2 + w2))
    result = scorer(arch)
    assert result["angle"] == pytest.approx(expected, rel=1e-9)
    assert result["score"] == pytest.approx(expected / math.pi, rel=1e-9)


def test_angle_metric_needs_init_weights(small_supernet):
    with pytest.raises(ValueError, match="init_state_dict"):
        ArchScorer(small_supernet, {"metric": "angle+flatness"}, None, None, "cpu")

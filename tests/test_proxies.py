"""Training-free proxies (naswot, synflow) against hand-computed values, and on supernet paths."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genas.scoring.proxies import naswot, naswot_from_codes, naswot_kernel, relu_codes, synflow
from genas.spaces import build_supernet


def _identity_linear(n: int) -> nn.Linear:
    layer = nn.Linear(n, n)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(n))
        layer.bias.zero_()
    return layer


def test_naswot_kernel_counts_agreements():
    codes = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0]], dtype=torch.float64)
    # each pair agrees on exactly one unit; every code agrees with itself on 3
    assert naswot_kernel(codes).tolist() == [[3, 1, 1], [1, 3, 1], [1, 1, 3]]
    # eigenvalues 5, 2, 2
    assert naswot_from_codes(codes) == pytest.approx(math.log(20.0), rel=1e-12)
    assert naswot_from_codes(torch.tensor([[1.0, 0.0], [1.0, 0.0]])) == -math.inf  # identical codes: singular


def test_naswot_two_relu_layers_hand_computed():
    # layer 1 passes x - 0.5 through identity weights: the codes of the first ReLU are the rows of `codes`;
    # layer 2 sums the three ReLU outputs (0.5 each where the code is 1) minus 1.2: 2 * 0.5 - 1.2 < 0 for
    # every image, so the second ReLU adds one unit on which all pairs agree.
    codes = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0]], dtype=torch.float32)
    second = nn.Linear(3, 1)
    with torch.no_grad():
        second.weight.fill_(1.0)
        second.bias.fill_(-1.2)
    net = nn.Sequential(_identity_linear(3), nn.ReLU(), second, nn.ReLU(inplace=True))
    x = codes - 0.5
    got = relu_codes(net, net, x)
    assert got.tolist() == [[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0]]
    # K = [[4,2,2],[2,4,2],[2,2,4]]: eigenvalues 8, 2, 2 -> det 32
    assert naswot(net, x) == pytest.approx(math.log(32.0), rel=1e-12)


def test_synflow_two_layer_net_hand_computed():
    # W1 = [[1,-2],[3,0.5]], b1 = [-1, 2]; w2 = [-2, 1], b2 = 5; all taken as absolute values, input (1, 1).
    # h = |W1| 1 + |b1| = [1+2+1, 3+0.5+2] = [4, 5.5]; R = |w2| . h + |b2| = 8 + 5.5 + 5 = 18.5
    # dR/dw2 = h -> sum |w2 * h| = 13.5; dR/dW1_kj = |w2_k| -> sum |W1| * |w2| = 2*3 + 1*3.5 = 9.5
    # biases are not counted (Conv/Linear weights only): synflow = 13.5 + 9.5 = 23
    first, second = nn.Linear(2, 2), nn.Linear(2, 1)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        first.bias.copy_(torch.tensor([-1.0, 2.0]))
        second.weight.copy_(torch.tensor([[-2.0, 1.0]]))
        second.bias.fill_(5.0)
    net = nn.Sequential(first, nn.ReLU(), second)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert synflow(net, (2,)) == pytest.approx(23.0, rel=1e-12)
    for key, value in net.state_dict().items():  # signs and dtype untouched
        assert torch.equal(value, before[key]) and value.dtype == torch.float32
    # restricted to the first layer: 9.5
    assert synflow(net, (2,), param_names=["0.weight", "0.bias"]) == pytest.approx(9.5, rel=1e-12)


def test_synflow_removes_batch_norm_like_abdelfattah():
    # a BN with strong statistics in between changes nothing: it is an identity for synflow
    first, second = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        second.weight.copy_(torch.tensor([[0.5, -1.0]]))
    bn = nn.BatchNorm1d(2)
    with torch.no_grad():
        bn.running_mean.fill_(7.0)
        bn.running_var.fill_(0.01)
        bn.weight.fill_(-3.0)
    net = nn.Sequential(first, bn, nn.ReLU(inplace=True), second)
    # a linear chain of L layers without biases: each layer's sum of theta * dR/dtheta equals R (Euler)
    # R = 0.5 * 3 + 1 * 7 = 8.5 -> synflow = 2 R = 17
    assert synflow(net, (2,)) == pytest.approx(17.0, rel=1e-12)
    assert bn.running_mean[0] == 7.0 and net.training  # mode and buffers untouched


@pytest.mark.parametrize("arch", [(3, 3, 3, 3, 3, 3), (1, 2, 0, 4, 3, 1), (0, 0, 0, 1, 0, 0)])
def test_proxies_on_supernet_path_equal_standalone_export(arch):
    torch.manual_seed(0)
    supernet = build_supernet("nb201", num_classes=10, C=4, N=1).eval()
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    net = supernet.export(arch).eval()
    names = supernet.path_parameter_names(arch, "all")
    path = synflow(supernet, (3, 8, 8), arch, param_names=names)
    assert path > 0
    assert path == pytest.approx(synflow(net, (3, 8, 8)), rel=1e-9)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert naswot(supernet, x, arch) == pytest.approx(naswot(net, x), rel=1e-12)
    for key, value in supernet.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_synflow_of_a_disconnected_cell_is_zero():
    # node 3 <- node 2 only, and node 2 has no input: the cell outputs zeros, so no weight gets a gradient
    supernet = build_supernet("nb201", num_classes=10, C=4, N=1)
    arch = (0, 0, 0, 0, 0, 1)
    assert synflow(supernet, (3, 8, 8), arch, param_names=supernet.path_parameter_names(arch)) == 0.0


def test_naswot_counts_only_the_path_relus():
    supernet = build_supernet("nb201", num_classes=10, C=4, N=1).eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    # all-skip cells: the ReLUs are the two reduction blocks' (2 each) and the last BN-ReLU
    # units: block1 conv_a in 4x8x8, conv_b in 8x4x4; block2 conv_a in 8x4x4, conv_b in 16x2x2; last 16x2x2
    codes = relu_codes(supernet, lambda inp: supernet(inp, (1,) * 6), x)
    assert codes.shape == (4, 256 + 128 + 128 + 64 + 64)
    # one 3x3 conv edge (gene 0 = node1 <- node0, then node 3 <- node1 via skip) adds one ReLU per cell
    codes = relu_codes(supernet, lambda inp: supernet(inp, (3, 0, 0, 0, 1, 0)), x)
    assert codes.shape == (4, 640 + 4 * 64 + 8 * 16 + 16 * 4)


# --------------------------------------------------------------------------------------------------
# As score.metric values of ArchScorer
# --------------------------------------------------------------------------------------------------
def _tiny_data(n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


def _scorer(metric: str, supernet, **extra):
    from genas.scoring.scorer import ArchScorer
    cfg = {"metric": metric, "recalib_batches": 1, "eval_batches": 1, "eval_batch_size": 16,
           "batch_size_recalib": 16, "channels_last": False, **extra}
    return ArchScorer(supernet, cfg, _tiny_data(seed=1), _tiny_data(seed=2), "cpu")


def test_scorer_synflow_and_its_normalised_combination():
    import numpy as np
    from genas.scoring.formulas import flatness_from_losses
    from genas.scoring.scorer import PROXY_REFERENCE_ARCHS

    torch.manual_seed(0)
    supernet = build_supernet("nb201", num_classes=10, C=4, N=1)
    arch = (3, 2, 1, 3, 0, 4)
    raw = synflow(supernet, (3, 8, 8), arch, param_names=supernet.path_parameter_names(arch))
    alone = _scorer("synflow", supernet)(arch)
    assert alone["log_synflow"] == pytest.approx(math.log(raw), rel=1e-12)
    assert alone["score"] == alone["log_synflow"] and alone["losses"] is None

    combined_scorer = _scorer("synflow+flatness", supernet, gamma=0.5, sigmas=[1e-3, 1e-2])
    rng = np.random.default_rng(0)  # score.seed: the reference architectures
    refs = [rng_arch for rng_arch in (supernet.space.sample(rng) for _ in range(PROXY_REFERENCE_ARCHS))]
    logs = [math.log(v) for v in (synflow(supernet, (3, 8, 8), a, param_names=supernet.path_parameter_names(a))
                                  for a in refs) if v > 0]
    assert combined_scorer.proxy_reference == pytest.approx(sum(logs) / len(logs), rel=1e-12)
    result = combined_scorer(arch)
    flat = flatness_from_losses(result["losses"], [1e-3, 1e-2], 1.0)
    expected = math.log(raw) / combined_scorer.proxy_reference + 0.5 * flat / 1e-3
    assert result["score"] == pytest.approx(expected, rel=1e-12)


def test_scorer_naswot_is_order_independent_and_leaves_the_supernet_unchanged():
    torch.manual_seed(0)
    supernet = build_supernet("nb201", num_classes=10, C=4, N=1)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    scorer = _scorer("naswot", supernet)
    a, b = (3, 3, 3, 3, 3, 3), (1, 0, 2, 4, 1, 0)
    first = [scorer(a)["score"], scorer(b)["score"]]
    second = [scorer(b)["score"], scorer(a)["score"]][::-1]
    assert first == second and all(math.isfinite(v) for v in first)
    # 16 distinct images: K is positive definite, its log-det at most 16 ln(N_A) (Hadamard)
    assert 0 < first[0] <= 16 * math.log(relu_codes(supernet, lambda x: supernet(x, a), torch.randn(2, 3, 8, 8)).shape[1])
    for key, value in supernet.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert _scorer("naswot+flatness", supernet)(a)["naswot"] == first[0]

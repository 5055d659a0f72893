"""The fast paths of issue 19 against the eager paths they replace, on a CPU (a GPU run only times them):

* average pooling as a depthwise convolution (:mod:`genas.spaces.pooling`): ``F.avg_pool2d`` outputs and
  gradients, both supernets' logits / losses / gradients, and the scorer's flatness losses (rel 1e-5);
* the supernet training step (:func:`genas.train_supernet.train_step` with :func:`build_optimizer`): losses and
  weights of several SPOS steps equal a plain step written here by hand (SGD, weight decay, momentum, clipping);
* no host sync in the training step or in the supernets' forward passes;
* the speed options' defaults (a default that is slower on the GPU is a bug).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import TensorDataset

from genas.core.config import DEFAULTS
from genas.spaces import build_supernet, get_space, pooling
from genas.spaces.darts.genotype import PRIMITIVES
from genas.spaces.pooling import AvgPool2d, get_pool_impl, pool_impl, set_pool_impl
from genas.train_supernet import SGD_IMPL, SGD_IMPLS, build_optimizer, train_step

NB201_POOL = 4  # gene of avg_pool_3x3 in OP_NAMES
DARTS_POOL = PRIMITIVES.index("avg_pool_3x3")


@pytest.fixture
def native_pooling_forbidden(monkeypatch):
    """``F.avg_pool2d`` raises: whatever runs inside did not take torch's pooling kernel."""
    def forbidden(*args, **kwargs):
        raise AssertionError("F.avg_pool2d called on the conv path")
    monkeypatch.setattr(F, "avg_pool2d", forbidden)


def _nb201_archs() -> list[tuple[int, ...]]:
    rng = np.random.default_rng(0)
    space = get_space("nb201")
    return [(NB201_POOL,) * 6, (NB201_POOL, 3, 1, NB201_POOL, 2, NB201_POOL)] + [space.sample(rng) for _ in range(2)]


def _darts_archs() -> list[tuple[int, ...]]:
    """A sampled arch with every kept edge turned into avg_pool_3x3 (stride 2 on the reduce cell's input
    edges), and a sampled one as it is."""
    rng = np.random.default_rng(1)
    space = get_space("darts")
    a, b = space.sample(rng), space.sample(rng)
    return [tuple(DARTS_POOL if g else 0 for g in a), b]


# ----------------------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("kernel, stride, padding, count_include_pad",
                         [(3, 1, 1, False), (2, 2, 0, True), (3, 2, 1, False), (3, 1, 1, True)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_pooling_is_avg_pool2d(kernel, stride, padding, count_include_pad, channels_last,
                                    native_pooling_forbidden):
    """NB201's avg_pool_3x3 (count_include_pad=False), the ResNet blocks' 2x2, DARTS's stride-2 pooling: the same
    outputs and input gradients as torch's kernel on odd, non-square maps, in the input's memory format."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 9, 7, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, 5, *_native_avg_pool(x, kernel, stride, padding, True).shape[2:], generator=gen)
    fast = AvgPool2d(kernel, stride, padding, count_include_pad=count_include_pad)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = _native_avg_pool(x_ref, kernel, stride, padding, count_include_pad)
    with pool_impl("conv", "cpu"):
        out = fast(x_fast)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    (g_ref,) = torch.autograd.grad(expected, x_ref, grad)
    (g_fast,) = torch.autograd.grad(out, x_fast, grad)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-5, atol=1e-6)


def _native_avg_pool(x, kernel, stride, padding, count_include_pad):
    """torch's kernel, called through the C++ op (``F.avg_pool2d`` may be patched by the fixture)."""
    return torch._C._nn.avg_pool2d(x, kernel, stride, padding, False, count_include_pad, None)


def test_pool_switch_per_device_type_auto_and_environment(monkeypatch):
    assert pooling.POOL_IMPLS == ("auto", "native", "conv")
    assert get_pool_impl("cpu") == pooling.AUTO["cpu"] and get_pool_impl("cuda") == pooling.AUTO["cuda"]
    with pool_impl("conv", "cpu"):
        assert get_pool_impl("cpu") == "conv" and get_pool_impl("cuda") == pooling.AUTO["cuda"]
        with pool_impl("native"):  # every device type without its own setting
            assert get_pool_impl("cpu") == "conv" and get_pool_impl("mps") == "native"
    assert get_pool_impl("cpu") == pooling.AUTO["cpu"]
    with pytest.raises(ValueError, match="must be one of"):
        set_pool_impl("fast")
    with pool_impl("auto"):  # restores whatever the environment sets below
        monkeypatch.setenv(pooling.ENV_VAR, "cuda=conv, cpu=native")
        pooling._read_env()
        assert (get_pool_impl("cuda"), get_pool_impl("cpu")) == ("conv", "native")
        monkeypatch.setenv(pooling.ENV_VAR, "conv")
        pooling._read_env()
        assert get_pool_impl("xpu") == "conv"
        monkeypatch.setenv(pooling.ENV_VAR, "cuda=quick")
        with pytest.raises(ValueError, match="GENAS_AVG_POOL"):
            pooling._read_env()
    assert get_pool_impl("cuda") == pooling.AUTO["cuda"]


def test_conv_pooling_stays_out_of_traces_bf16_and_flop_counts():
    """Tracers (fvcore's FLOP count, TorchScript, FX) and bf16 see torch's pooling: the MACs of
    :mod:`genas.cost` do not count a pooling convolution, and low precision rounds as torch's kernel does."""
    from genas.cost import count_macs
    from genas.spaces.nb201 import build_network

    net = build_network((NB201_POOL,) * 6, num_classes=10, C=4, N=1).eval()
    native = count_macs(net, (3, 16, 16))
    with pool_impl("conv", "cpu"):
        assert count_macs(net, (3, 16, 16)) == native
        traced = torch.jit.trace(AvgPool2d(3, 1, 1, count_include_pad=False), torch.randn(1, 2, 5, 5))
        assert "avg_pool2d" in str(traced.graph) and "conv" not in str(traced.graph)
        fx = torch.fx.symbolic_trace(nn.Sequential(AvgPool2d(2, 2)))
        assert "avg_pool2d" in fx.code and "conv" not in fx.code
        calls = []
        original = F.avg_pool2d
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(F, "avg_pool2d", lambda *a, **k: calls.append(a[0].dtype) or original(*a, **k))
            AvgPool2d(3, 1, 1)(torch.randn(1, 2, 5, 5, dtype=torch.bfloat16))
            AvgPool2d(3, 1, 1)(torch.randn(1, 2, 5, 5))
        assert calls == [torch.bfloat16]


def test_conv_pooling_kernels_are_usable_after_inference_mode():
    """The cached kernel made under inference_mode must not be an inference tensor (a later training
    step saves it for backward)."""
    with pool_impl("conv", "cpu"):
        with torch.inference_mode():
            AvgPool2d(3, 1, 1, count_include_pad=False)(torch.randn(1, 3, 6, 6))
        x = torch.randn(1, 3, 6, 6, requires_grad=True)
        AvgPool2d(3, 1, 1, count_include_pad=False)(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(
        _native_avg_pool(x, 3, 1, 1, False).sum(), x)[0], rtol=1e-5, atol=1e-6)


def _forward_backward(net, x, y, arch):
    net.zero_grad(set_to_none=True)
    logits = net(x, arch)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()
                                            if p.grad is not None}


@pytest.mark.parametrize("space, kwargs", [("nb201", {"C": 4, "N": 1}), ("darts", {"C": 4, "layers": 3})])
@pytest.mark.parametrize("channels_last", [False, True])
def test_supernet_with_conv_pooling_is_the_eager_supernet(space, kwargs, channels_last):
    """Logits and loss (rel 1e-5) and every path gradient of a training step, then eval logits, with the conv
    pooling vs torch's pooling, on paths full of pooling edges (DARTS: stride 2 in the reduction cells)."""
    torch.manual_seed(0)
    net = build_supernet(space, 10, **kwargs).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 16, 16, generator=gen).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (6,), generator=gen)
    for arch in (_nb201_archs() if space == "nb201" else _darts_archs()):
        with pool_impl("native", "cpu"):
            ref = _forward_backward(net, x, y, arch)
        with pool_impl("conv", "cpu"):
            got = _forward_backward(net, x, y, arch)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=0)
        assert got[2].keys() == ref[2].keys()
        for name in ref[2]:
            torch.testing.assert_close(got[2][name], ref[2][name], rtol=1e-4, atol=1e-6, msg=name)
        net.eval()
        with torch.no_grad(), pool_impl("native", "cpu"):
            ref_eval = net(x, arch)
        with torch.no_grad(), pool_impl("conv", "cpu"):
            torch.testing.assert_close(net(x, arch), ref_eval, rtol=1e-5, atol=1e-5)
        net.train()


@pytest.mark.parametrize("space, kwargs, sigmas", [("nb201", {"C": 4, "N": 1}, [0.002, 0.01, 0.02]),
                                                   ("darts", {"C": 4, "layers": 3}, [0.001, 0.003, 0.006])])
def test_scorer_losses_with_conv_pooling_equal_the_eager_scorer(space, kwargs, sigmas):
    """The flatness scorer (BN recalibration + 3 perturbed validation losses, channels_last as by default) gives
    the same losses (rel 1e-5) with either pooling."""
    from genas.scoring.scorer import ArchScorer

    torch.manual_seed(0)
    net = build_supernet(space, 10, **kwargs)
    gen = torch.Generator().manual_seed(2)
    data = TensorDataset(torch.randn(48, 3, 16, 16, generator=gen), torch.randint(0, 10, (48,), generator=gen))
    cfg = {**DEFAULTS["score"], "metric": "flatness", "sigmas": sigmas, "recalib_batches": 3,
           "batch_size_recalib": 16, "eval_batches": 2, "eval_batch_size": 24}
    scorer = ArchScorer(net, cfg, data, data, "cpu")
    for arch in (_nb201_archs()[:2] if space == "nb201" else _darts_archs()[:1]):
        with pool_impl("native", "cpu"):
            ref = scorer(arch)["losses"]
        with pool_impl("conv", "cpu"):
            got = scorer(arch)["losses"]
        assert got == pytest.approx(ref, rel=1e-5) and len(got) == 3


# ----------------------------------------------------------------------------------------------- training step
def _plain_step(model, lr, x, y, arch, grad_clip, zero_grad, momentum, weight_decay, nesterov, buffers):
    """The SPOS step written out: zero / drop gradients, forward, cross-entropy, backward, global-norm clipping,
    SGD with weight decay and momentum (torch's formulas, dampening 0) on every weight that has a gradient."""
    for p in model.parameters():
        if zero_grad == "none":
            p.grad = None
        elif p.grad is not None:
            p.grad.zero_()
    loss = F.cross_entropy(model(x, arch), y)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    with torch.no_grad():
        if grad_clip > 0:
            norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
            scale = min(1.0, grad_clip / (float(norm) + 1e-6))
            for p in params:
                p.grad.mul_(scale)
        for p in params:
            d = p.grad + weight_decay * p
            if momentum:
                buf = buffers.get(p)
                buf = d.clone() if buf is None else buf.mul_(momentum).add_(d)
                buffers[p] = buf
                d = d + momentum * buf if nesterov else buf
            p.sub_(lr * d)
    return loss.detach()


CASES = [("nb201", "none", "foreach", "auto", False), ("nb201", "zeros", "foreach", "conv", True),
         ("nb201", "none", "for-loop", "conv", False), ("darts", "none", "foreach", "conv", False),
         ("darts", "zeros", "for-loop", "auto", False)]


@pytest.mark.parametrize("space, zero_grad, impl, pool, nesterov", CASES)
def test_train_step_equals_a_plain_eager_step(space, zero_grad, impl, pool, nesterov):
    """Five SPOS steps on new paths, fixed seed: the trainer's step (its optimizer, its pooling) and the plain
    step give the same losses (rel 1e-5) and weights; off-path weights stay untouched under ``none``."""
    kwargs = {"C": 4, "N": 1} if space == "nb201" else {"C": 4, "layers": 3}
    tcfg = {**DEFAULTS["train"], "lr": 0.1, "nesterov": nesterov, "grad_clip": 1.0}  # clipping active
    torch.manual_seed(0)
    ours = build_supernet(space, 10, **kwargs)
    plain = build_supernet(space, 10, **kwargs)
    plain.load_state_dict(ours.state_dict())
    start = {n: p.detach().clone() for n, p in ours.named_parameters()}
    optimizer = build_optimizer(ours, tcfg, "cpu", impl=impl)
    assert optimizer.defaults["foreach"] == (impl == "foreach")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gen, rng = torch.Generator().manual_seed(3), np.random.default_rng(4)
    buffers: dict = {}
    used: set[str] = set()
    for _ in range(5):
        x, y = torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        arch = ours.space.sample(rng)
        used |= set(ours.path_parameter_names(arch))
        with pool_impl(pool, "cpu"):
            loss, correct = train_step(ours, optimizer, x, y, arch, grad_clip=tcfg["grad_clip"], scaler=scaler,
                                       zero_grad=zero_grad)
        with pool_impl("native", "cpu"):
            expected = _plain_step(plain, tcfg["lr"], x, y, arch, tcfg["grad_clip"], zero_grad, tcfg["momentum"],
                                   tcfg["weight_decay"], nesterov, buffers)
        assert float(loss) == pytest.approx(float(expected), rel=1e-5)
        assert 0 <= int(correct) <= 8
    theirs = dict(plain.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.detach(), theirs[name].detach(), rtol=1e-5, atol=1e-6, msg=name)
        if zero_grad == "none" and name not in used:
            assert torch.equal(p.detach(), start[name]), name
    assert len(used) < len(start)


def _host_syncs(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")


@pytest.mark.parametrize("space, kwargs", [("nb201", {"C": 4, "N": 1}), ("darts", {"C": 4, "layers": 3})])
def test_no_host_sync_in_the_training_step_and_the_forward(space, kwargs):
    """``.item()`` / ``float(tensor)`` / a Python branch on a tensor would stall a GPU once per call: none in
    the trainer's step (loss and correct count stay tensors), none in a supernet forward in train mode (BN
    momentum 0.1) or eval mode, with either pooling."""
    torch.manual_seed(0)
    net = build_supernet(space, 10, **kwargs)
    optimizer = build_optimizer(net, {**DEFAULTS["train"]}, "cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    arch = (_nb201_archs() if space == "nb201" else _darts_archs())[0]
    for impl in ("native", "conv"):
        with pool_impl(impl, "cpu"):
            for zero_grad in ("none", "zeros"):
                assert _host_syncs(lambda: train_step(net, optimizer, x, y, arch, grad_clip=5.0, scaler=scaler,
                                                      zero_grad=zero_grad)) == 0
            with torch.no_grad():
                assert _host_syncs(lambda: net.train()(x, arch)) == 0
                assert _host_syncs(lambda: net.eval()(x, arch)) == 0
    assert _host_syncs(lambda: float(torch.ones(1))) == 1  # the counter counts


def test_speed_option_defaults_are_the_measured_ones():
    """bf16 + channels_last training was slower on the H200 (41.8 vs 43.1 NB201, 19.9 vs 22.8 DARTS steps/s):
    both stay off by default. The pooling and SGD defaults are the implementations measured faster per device
    (README performance section); CUDA keeps torch's pooling and torch's foreach SGD until a GPU run of
    benchmarks/gpu_check.py measures otherwise."""
    assert DEFAULTS["train"]["amp"] is None and DEFAULTS["train"]["channels_last"] is False
    assert pooling.AUTO == {"cpu": "conv", "cuda": "native"}
    assert SGD_IMPL == {"cpu": "foreach", "cuda": "foreach"} and set(SGD_IMPLS) == {"for-loop", "foreach"}

"""timm's model contract for the suite's 15 registered models: the checks of timm's own ``tests/test_models.py``
(timm 1.0.31) that apply to them, replicated on small inputs so they run in seconds on CPU.

timm's file itself passes on all 15 (165 tests: forward, backward, default cfgs, TorchScript, features,
forward_intermediates, prune contract, FX forward / backward / FX + TorchScript) when ``darts_net`` is added to its
``FEAT_INTER_FILTERS``; these tests keep that true without timm's test tree. Numerical checks use a narrow width
(``C=8``, 8 cells for ``darts_cifar``; the structure, which the contract is about, does not depend on it) and
64 px (ImageNet) / 32 px (CIFAR); the per-model checks run on all 15, the slower ones (full cfg contract, FX,
TorchScript, prune contract) on one published variant and the two generic entries (the variants differ by cell only,
and the TorchScript one holds every op kind).
"""
from __future__ import annotations

import copy
import inspect
import math

import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from timm.models._manipulate import group_parameters
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import backbones  # noqa: F401  (registers the models)
from backbones.darts_net import DEFAULT_GENOTYPE, GENERIC, VARIANTS

# torch 2.14 deprecates torch.jit.script, which timm's contract still tests
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
MODELS = sorted(VARIANTS) + sorted(GENERIC)
#: one published variant and the two generic entries: the full contract (the 13 variants differ only by cell)
REPRESENTATIVE = ["genas_c100", "darts_imagenet", "darts_cifar"]


def _small(name: str) -> dict:
    return dict(C=8, layers=8) if name == "darts_cifar" else dict(C=8)


def _size(name: str) -> int:
    return 32 if name == "darts_cifar" else 64


def _x(name: str, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, _size(name), _size(name), generator=torch.Generator().manual_seed(0))


def test_the_15_models_are_registered_with_their_cfgs():
    assert sorted(timm.list_models(module="darts_net")) == sorted(MODELS) and len(MODELS) == 15
    # name_matches_cfg: timm's backward / TorchScript / FX tests select only models with a cfg of their name
    assert sorted(timm.list_models(module="darts_net", name_matches_cfg=True)) == sorted(MODELS)
    generic = timm.create_model("darts_imagenet")  # no arguments, as every timm test and tool creates models
    assert generic.genotype == DEFAULT_GENOTYPE and len(generic.cells) == 14
    assert timm.create_model("darts_cifar", C=4, layers=5).genotype == DEFAULT_GENOTYPE


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_default_cfg_contract(name):
    """timm's test_model_default_cfgs: API contract, cfg shapes at the full input size, bf16, heads removed by
    reset_classifier or at creation, cfg layer names; then on the meta device (no weights): the device / dtype
    factory args reach every tensor, reset_classifier keeps device, dtype and mode, frozen weights stay frozen.
    (timm runs the shape checks on meta too; here they run on real tensors at C=8, much faster on CPU.)"""
    with pytest.raises(TypeError):
        timm.create_model(name, device="meta", not_a_model_arg=1)
    model = timm.create_model(name, **_small(name)).eval()
    assert inspect.signature(model.reset_classifier).parameters["global_pool"].default is None
    assert len(set(group_parameters(model, model.group_matcher(coarse=False), reverse=True).values())) > 1
    cfg = model.default_cfg
    assert model.num_classes == cfg["num_classes"] and model.num_features > 0 and model.head_hidden_size > 0
    assert model.in_chans == cfg["input_size"][0]
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state and f"{cfg['classifier']}.weight" in state
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        assert tuple(features.shape[2:]) == tuple(cfg["pool_size"]) and features.shape[1] == model.num_features
        assert pre.shape[1] == model.head_hidden_size
        assert model.to(torch.bfloat16)(x.to(torch.bfloat16)).dtype == torch.bfloat16
        model.to(torch.float32)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == pre.shape
        model.reset_classifier(0, "")
        assert tuple(model(x).shape[2:]) == tuple(cfg["pool_size"])
        headless = timm.create_model(name, num_classes=0, global_pool="", **_small(name)).eval()
        assert headless(x).ndim == 4 and tuple(headless(x).shape[2:]) == tuple(cfg["pool_size"])
        assert timm.create_model(name, num_classes=0, **_small(name)).eval()(x).shape == pre.shape

    made = timm.create_model(name, device="meta", dtype=torch.float32, auxiliary=True)
    assert all(t.device.type == "meta" for t in [*made.parameters(), *made.buffers()])
    made.to(dtype=torch.float64)
    made.reset_classifier(0)
    made.reset_classifier(2)
    assert all(p.device.type == "meta" and p.dtype == torch.float64 for p in made.get_classifier().parameters())
    assert all(m.training == made.training for m in made.modules())
    made.requires_grad_(False)
    made.reset_classifier(0)
    made.reset_classifier(0, "")
    assert not [n for n, p in made.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("name", MODELS)
def test_forward_and_backward(name):
    """timm's test_model_forward / _backward at a small size, for all 15: the eval output is a tensor without NaN;
    the cfg's pool size is the features' size at its input size; in training, with timm's gradient checkpointing
    on (tests/test_grad_checkpointing.py checks it equals the plain backward), every parameter gets a gradient."""
    torch.manual_seed(0)
    model = timm.create_model(name, **_small(name)).eval()
    cfg = model.default_cfg
    with torch.no_grad():
        out = model(_x(name))
        features = model.forward_features(torch.randn(1, *cfg["input_size"]))
    assert isinstance(out, torch.Tensor) and out.shape == (1, cfg["num_classes"])
    assert not torch.isnan(out).any()
    assert tuple(features.shape[1:]) == (model.num_features, *cfg["pool_size"])  # the cfg's pool size is true
    model = timm.create_model(name, num_classes=42, **_small(name)).train()
    model.set_grad_checkpointing()  # timm's API; the backward below runs through the checkpointed cells
    assert model.grad_checkpointing
    logits = model(_x(name, 2))
    assert logits.shape == (2, 42)
    logits.mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_fx_forward_and_backward(name):
    """timm's test_model_forward_fx / _backward_fx: the FX graphs (train and eval, traced with timm's notrace sets
    as timm's tests do) give the eager outputs, and every parameter gets a gradient through the train graph."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=42, **_small(name)).eval()
    x = _x(name, 2)
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                  tracer_kwargs=tracer_kwargs).eval()
    with torch.no_grad():
        torch.testing.assert_close(next(iter(fx(x).values())), model(x), rtol=1e-4, atol=1e-5)
    fx.train()
    next(iter(fx(x).values())).mean().backward()
    assert not [n for n, p in fx.named_parameters() if p.grad is None]


def test_auxiliary_head_traces_and_returns_the_pair_in_training():
    """With an auxiliary head a training forward returns (logits, aux_logits), traced by FX too (the ``return_aux``
    flag is never a traced condition); eval returns the logits alone."""
    torch.manual_seed(0)
    model = timm.create_model("genas_c100", auxiliary=True, num_classes=5, C=8).train()
    x = _x("genas_c100", 2)
    logits, aux = model(x)
    assert logits.shape == aux.shape == (2, 5)


    class Tracer(torch.fx.Tracer):  # timm's notrace modules as leaves, as timm's FX helpers trace
        def is_leaf_module(self, m, qualname):
            return type(m) in get_notrace_modules() or super().is_leaf_module(m, qualname)

    traced = torch.fx.GraphModule(model, Tracer().trace(model))  # return_aux is a placeholder here
    traced_logits, traced_aux = traced(x)
    torch.testing.assert_close(traced_logits, logits)
    torch.testing.assert_close(traced_aux, aux)
    model.eval()
    assert isinstance(model(x), torch.Tensor) and model(x, return_aux=True)[1] is None


@pytest.mark.parametrize("name, kwargs", [("genas_c100", dict(C=8, layers=5)), ("darts_cifar", dict(C=4, layers=5))])
def test_torchscript_and_fx_torchscript(name, kwargs):
    """timm's test_model_forward_torchscript and _forward_fx_torchscript (the GeNAS flatness cell holds every op
    kind: skip / factorized reduce, sep 3x3 / 5x5, dil 3x3 / 5x5, avg / max pool)."""
    torch.manual_seed(0)
    with timm.layers.set_layer_config(scriptable=True):
        model = timm.create_model(name, **kwargs).eval()
    x = _x(name)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected, rtol=1e-5, atol=1e-6)
        tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                             param_shapes_constant=True)
        _, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
        fx = create_feature_extractor(model, eval_return_nodes=[eval_nodes[-1]], train_return_nodes=[eval_nodes[-1]],
                                      tracer_kwargs=tracer_kwargs).eval()
        torch.testing.assert_close(next(iter(torch.jit.script(fx)(x).values())), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["genas_c100", "darts_cifar"])
@pytest.mark.parametrize("feature_cls", ["getter", "fx"])
def test_features_only(name, feature_cls):
    """timm's test_model_forward_features / _intermediates_features: one map per level, channels as declared, sizes
    within 2x of input / reduction; ``feature_cls='fx'`` traces the same levels."""
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, feature_cls=feature_cls, **_small(name)).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    size = _size(name)
    outputs = model(_x(name))
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[1] == c and size / (2 * r) < o.shape[2] <= math.ceil(size / r) + 1
    if feature_cls == "fx":
        torch.manual_seed(0)  # the same initial weights
        getter = timm.create_model(name, features_only=True, **_small(name)).eval()
        for a, b in zip(getter(_x(name)), outputs):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["genas_c100", "darts_cifar"])
def test_forward_intermediates_and_prune_contract(name):
    """timm's test_model_forward_intermediates and test_prune_intermediate_layers_contract."""
    torch.manual_seed(0)
    model = timm.create_model(name, **_small(name)).eval()
    x = _x(name, 2)
    with torch.no_grad():
        output, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        assert len(intermediates) == len(model.feature_info)
        torch.testing.assert_close(output, model.forward_features(x), rtol=1e-5, atol=1e-8)
        expected, taps = model(x), model.forward_intermediates(x, intermediates_only=True)
        pruned = copy.deepcopy(model)
        pruned.prune_intermediate_layers([len(taps) - 1], prune_head=False)
        torch.testing.assert_close(pruned(x), expected)
    last = len(taps) - 1
    for i in range(last + 1):
        with torch.no_grad():
            selected = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(selected[0], taps[i])
            pruned = copy.deepcopy(model)
            take = pruned.prune_intermediate_layers([i])
            torch.testing.assert_close(pruned.forward_intermediates(x, indices=take, intermediates_only=True)[0],
                                       taps[i])
            pruned = copy.deepcopy(model)
            take = pruned.prune_intermediate_layers([i], prune_norm=True)
            if i < last:  # features end at the tap, level 0 (the stem's) included
                torch.testing.assert_close(pruned.forward_features(x), taps[i])
        pruned.train()
        selected = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
        sum(f.sum() for f in selected + [pruned.forward_features(x)]).backward()
        assert not [n for n, p in pruned.named_parameters() if p.requires_grad and p.grad is None], i

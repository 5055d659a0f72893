"""Gradient checkpointing of the DARTS networks (timm's ``set_grad_checkpointing``) and of the Detectron2
(``MODEL.GENAS.GRAD_CHECKPOINT``) and MMSeg (``model.backbone.grad_checkpointing``) backbones.

One training step with checkpointing must be the plain step: the same outputs, the same gradients (asserted to
rel 1e-5 per tensor; on CPU they are bit for bit), the same BatchNorm running statistics and
``num_batches_tracked`` (exactly), and the same global RNG stream afterwards; drop-path is on, so the masks redrawn
in the recomputation must be the forward's. A plain ``torch.utils.checkpoint`` of a cell would move every
training-mode BatchNorm's running statistics twice (the recomputation runs the forward again):
``test_plain_torch_checkpoint_updates_batchnorm_statistics_twice`` shows it, and the network's own
checkpointing is asserted free of it.

Small models: genas_c100's cell at width 8 with 5 cells (reductions at cells 1 and 3, four feature levels).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import pytest
import timm
import torch
import torch.utils.checkpoint
from torch import nn

import backbones  # noqa: F401  (registers the models)
from backbones.checkpointing import GradCheckpointError, checkpointed_network, set_grad_checkpointing
from genas.core.errors import UsageError
from genas.spaces.darts import network

SMALL = dict(C=8, layers=5)

# torch 2.14 deprecates torch.jit.script, which timm's contract still tests
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()}


def _step(model: nn.Module, x: torch.Tensor, enable: bool | None, loss: Callable | None = None, seed: int = 1):
    """One forward + backward of a copy of ``model`` with checkpointing on or off (``None``: as the model has it):
    (outputs, grads, buffers, the next random number of the global generator)."""
    model = copy.deepcopy(model)
    if enable is not None:
        set_grad_checkpointing(model, enable)
    torch.manual_seed(seed)
    out = model(x)
    outs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (list, tuple)) else [out]
    (loss or (lambda o: sum((t.float() ** 2).mean() for t in o)))(outs).backward()
    return outs, _grads(model), _buffers(model), torch.rand(1).item()


def _assert_same_step(plain, ckpt, rel: float = 1e-5) -> None:
    (out0, g0, b0, r0), (out1, g1, b1, r1) = plain, ckpt
    assert len(out0) == len(out1)
    for a, b in zip(out0, out1):
        torch.testing.assert_close(b, a, rtol=rel, atol=0)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for name in g0:
        err = (g1[name] - g0[name]).norm() / g0[name].norm().clamp_min(1e-30)
        assert err <= rel, (name, err.item())
    # BatchNorm running statistics and counters exactly as after one plain step
    assert b0.keys() == b1.keys()
    assert [n for n in b0 if not torch.equal(b0[n], b1[n])] == []
    assert r0 == r1  # the drop-path draws left the global generator where the plain step leaves it


def _count_checkpointed_cells(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = network.checkpoint_cell

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(network, "checkpoint_cell", counting)
    return calls


def test_timm_model_step_with_checkpointing_is_the_plain_step(monkeypatch):
    """genas_c100 in training mode (BatchNorm on batch statistics, drop-path 0.3, auxiliary head): logits,
    auxiliary logits, every gradient, every BN buffer and the RNG stream equal the plain step's."""
    torch.manual_seed(0)
    model = timm.create_model("genas_c100", num_classes=10, drop_path_rate=0.3, auxiliary=True, **SMALL).train()
    x = torch.randn(2, 3, 64, 64)
    plain = _step(model, x, False)
    calls = _count_checkpointed_cells(monkeypatch)
    ckpt = _step(model, x, True)
    assert len(calls) == 5  # every cell ran under the checkpoint
    _assert_same_step(plain, ckpt)
    # the step moved the statistics (so their equality means something) and counted one batch
    assert int(ckpt[2]["cells.0.preprocess1.op.2.num_batches_tracked"]) == 1
    assert not torch.equal(ckpt[2]["cells.0.preprocess1.op.2.running_mean"],
                           model.state_dict()["cells.0.preprocess1.op.2.running_mean"])


def test_checkpointing_keeps_fewer_activations_for_the_backward():
    """What checkpointing is for: the tensors autograd keeps after the forward shrink (counted with saved-tensor
    hooks over the whole forward)."""
    torch.manual_seed(0)
    model = timm.create_model("genas_c100", num_classes=10, **SMALL).train()
    x = torch.randn(2, 3, 64, 64)

    def saved_bytes(enable: bool) -> int:
        model.set_grad_checkpointing(enable)
        kept: dict[int, int] = {}  # storage -> bytes, parameters excluded

        def pack(t):
            if not isinstance(t, nn.Parameter):
                kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)  # alive until counted: no storage is freed and reused meanwhile
        del out
        return sum(kept.values())

    plain, ckpt = saved_bytes(False), saved_bytes(True)
    assert ckpt < 0.5 * plain, (ckpt, plain)


def test_plain_torch_checkpoint_updates_batchnorm_statistics_twice(monkeypatch):
    """The finding behind the network's recomputation context: ``torch.utils.checkpoint`` alone gives the same
    gradients but runs every training-mode BatchNorm of a cell twice, so its running statistics take two momentum
    steps and ``num_batches_tracked`` counts 2 after one batch."""
    torch.manual_seed(0)
    model = timm.create_model("genas_c100", num_classes=10, **SMALL).train()
    x = torch.randn(2, 3, 64, 64)
    plain = _step(model, x, False)
    monkeypatch.setattr(network, "checkpoint_cell", lambda cell, s0, s1, p: torch.utils.checkpoint.checkpoint(
        cell, s0, s1, p, use_reentrant=False))
    naive = _step(model, x, True)
    for name in plain[1]:
        torch.testing.assert_close(naive[1][name], plain[1][name], rtol=1e-5, atol=0)
    assert int(naive[2]["cells.0.preprocess1.op.2.num_batches_tracked"]) == 2
    assert not torch.equal(naive[2]["cells.0.preprocess1.op.2.running_mean"],
                           plain[2]["cells.0.preprocess1.op.2.running_mean"])


@pytest.mark.parametrize("name, size", [("genas_c100", 64), ("darts_cifar", 16)])
def test_features_only_forward_intermediates_are_checkpointed(name, size, monkeypatch):
    """``features_only`` (timm's FeatureGetterNet over ``forward_intermediates``, what Detectron2 and MMSeg use):
    the helper reaches the wrapped network and the step equals the plain one; the CIFAR network too."""
    torch.manual_seed(0)
    kwargs = dict(C=4, layers=5) if name == "darts_cifar" else SMALL
    model = timm.create_model(name, features_only=True, drop_path_rate=0.2, **kwargs).train()
    assert checkpointed_network(model) is model.model
    x = torch.randn(2, 3, size, size)
    plain = _step(model, x, False)
    calls = _count_checkpointed_cells(monkeypatch)
    ckpt = _step(model, x, True)
    assert len(calls) == 5 and len(ckpt[0]) == 4
    _assert_same_step(plain, ckpt)


def test_switch_scripting_and_inference(monkeypatch):
    """The flag is timm's: on, off, a bool only. Without autograd (eval under no_grad) nothing is checkpointed, and
    TorchScript compiles the plain path of a model that has it on."""
    torch.manual_seed(0)
    model = timm.create_model("genas_c100", num_classes=10, **SMALL)
    assert model.grad_checkpointing is False
    model.set_grad_checkpointing()
    assert model.grad_checkpointing is True
    model.set_grad_checkpointing(False)
    assert model.grad_checkpointing is False
    with pytest.raises(TypeError, match="True or False"):
        model.set_grad_checkpointing("yes")
    model.set_grad_checkpointing(True)
    calls = _count_checkpointed_cells(monkeypatch)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval()(x)
    assert calls == []
    with timm.layers.set_layer_config(scriptable=True):
        scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-6)


def test_helper_errors_name_the_setting():
    class NoCheckpointing(nn.Module):
        def set_grad_checkpointing(self, enable=True):
            raise NotImplementedError("not here")

    with pytest.raises(GradCheckpointError, match=r"my.key=True: NoCheckpointing does not support gradient "
                                                  r"checkpointing \(NotImplementedError: not here\)"):
        set_grad_checkpointing(NoCheckpointing(), True, "my.key")
    with pytest.raises(GradCheckpointError, match=r"my.key='on': expected True or False"):
        set_grad_checkpointing(NoCheckpointing(), "on", "my.key")
    with pytest.raises(GradCheckpointError, match="does not support"):
        set_grad_checkpointing(nn.Linear(2, 2), True, "my.key")
    assert issubclass(GradCheckpointError, UsageError)


# ---------------------------------------------------------------- Detectron2

GENAS_YAML = Path(__file__).resolve().parents[1] / "configs" / "detection" / "retinanet_genas_c100_FPN_1x.yaml"


def _detectron2_cfg(*opts):
    from detection.config import build_config
    cfg = build_config(str(GENAS_YAML), ["MODEL.GENAS.WEIGHTS", "", "MODEL.GENAS.NORM", "BN",
                                         "MODEL.BACKBONE.FREEZE_AT", "0", *opts])
    cfg.MODEL.GENAS.MODEL_KWARGS.C = SMALL["C"]
    cfg.MODEL.GENAS.MODEL_KWARGS.layers = SMALL["layers"]
    cfg.MODEL.GENAS.MODEL_KWARGS.drop_path_rate = 0.2
    return cfg


def test_detectron2_grad_checkpoint_key_reaches_the_network_and_keeps_the_step():
    pytest.importorskip("detectron2", reason="Detectron2 is not installed (scripts/bootstrap.sh all installs it)")
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone

    from detection.backbone import BackboneConfigError, build_genas_backbone
    from detection.config import ConfigFileError, build_config

    assert _detectron2_cfg().MODEL.GENAS.GRAD_CHECKPOINT is False  # default off
    torch.manual_seed(0)
    plain_fpn = build_backbone(_detectron2_cfg())
    torch.manual_seed(0)
    fpn = build_backbone(_detectron2_cfg("MODEL.GENAS.GRAD_CHECKPOINT", "True"))
    assert fpn.bottom_up.grad_checkpointing and fpn.bottom_up.body.model.grad_checkpointing
    assert not plain_fpn.bottom_up.body.model.grad_checkpointing
    fpn.load_state_dict(plain_fpn.state_dict())
    x = torch.randn(2, 3, 64, 96)

    def step(model):  # the FPN's outputs (P3-P7) through the checkpointed bottom-up, BN in training mode
        torch.manual_seed(1)
        out = model.train()(x)
        sum((v ** 2).mean() for v in out.values()).backward()
        return list(out.values()), _grads(model), _buffers(model), torch.rand(1).item()

    _assert_same_step(step(plain_fpn), step(fpn))

    with pytest.raises(ConfigFileError, match="GRAD_CHECKPOINT"):  # yacs: an int where a bool is
        build_config(str(GENAS_YAML), ["MODEL.GENAS.GRAD_CHECKPOINT", "1"])
    for key in ("GRAD_CHECKPOINT", "CHANNELS_LAST"):
        cfg = _detectron2_cfg()
        cfg.MODEL.GENAS[key] = "yes"  # set in code (Detectron2's own tools/train_net.py): no yacs type check
        with pytest.raises(BackboneConfigError, match=rf"MODEL.GENAS.{key}='yes': expected True or False"):
            build_genas_backbone(cfg, ShapeSpec(channels=3))


# ---------------------------------------------------------------- MMSegmentation

def test_mmseg_grad_checkpointing_reaches_the_network_and_keeps_the_step():
    pytest.importorskip("mmseg.models", reason="mmsegmentation with compiled mmcv ops is not installed "
                                               "(scripts/bootstrap.sh all)")
    from mmseg.registry import MODELS

    from segmentation.backbone import BackboneConfigError, GeNASBackbone

    cfg = dict(type="GeNASBackbone", model_name="genas_c100", drop_path_rate=0.2, **SMALL)
    torch.manual_seed(0)
    plain = MODELS.build(cfg)
    net = MODELS.build(dict(cfg, grad_checkpointing=True))  # what model.backbone.grad_checkpointing=True builds
    assert isinstance(net, GeNASBackbone) and net.grad_checkpointing and net.timm_model.model.grad_checkpointing
    assert not plain.timm_model.model.grad_checkpointing
    net.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    _assert_same_step(_step(plain.train(), x, None), _step(net.train(), x, None))

    for key in ("grad_checkpointing", "channels_last", "norm_eval"):
        with pytest.raises(BackboneConfigError, match=rf"backbone {key}=1: expected True or False"):
            GeNASBackbone("genas_c100", **{key: 1}, **SMALL)

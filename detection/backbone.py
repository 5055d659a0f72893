"""Detectron2 backbones made of any timm model with ``features_only`` support (the GeNAS / DARTS ones included).

The bottom-up :class:`TimmFeatureBackbone` names each timm feature level ``res<log2(stride)>`` (stride 4 ->
``res2`` ... stride 32 -> ``res5``), as Detectron2's ResNet does, so the stock RetinaNet / FPN keys apply. The
builder ``build_retinanet_genas_fpn_backbone`` puts Detectron2's FPN with ``LastLevelP6P7`` on top exactly like
``build_retinanet_resnet_fpn_backbone``: P3-P5 from the lateral convs, P6 from the last input level (C5), P7
from P6. Only the backbone changes, which is the paper's protocol (Table 4).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set

import timm
import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7

import backbones  # noqa: F401  (registers the GeNAS / DARTS timm models)

__all__ = ["NORMS", "BackboneConfigError", "TimmFeatureBackbone", "check_backbone_config", "create_feature_model", "level_name",
           "build_genas_backbone", "build_retinanet_genas_fpn_backbone"]

logger = logging.getLogger(__name__)

NORMS = ("BN", "FrozenBN", "SyncBN")


class BackboneConfigError(ValueError):
    """A ``MODEL.GENAS`` setting that cannot build a backbone; the message names the key and the fix."""


def level_name(stride: int) -> str:
    """``res<log2(stride)>``: the ResNet-style name of a feature level."""
    return f"res{int(math.log2(stride))}"


def check_backbone_config(name: str, weights: str = "") -> None:
    """Fail with one clear message when ``name`` is no timm model or the ImageNet ``weights`` file is missing."""
    if not timm.is_model(name):
        genas = ", ".join(sorted(timm.list_models(module="darts_net")))
        raise BackboneConfigError(f"MODEL.GENAS.NAME={name!r} is not a timm model. Registered GeNAS / DARTS models: "
                                  f"{genas}; any other timm model with features_only support works too "
                                  f"(see timm.list_models()).")
    if weights and not os.path.isfile(weights):
        raise BackboneConfigError(f"MODEL.GENAS.WEIGHTS={weights!r}: ImageNet weights file not found; give the "
                                  f"path of the model's ImageNet checkpoint, or \"\" for random init.")


def create_feature_model(name: str, weights: str = "", in_chans: int = 3,
                         model_kwargs: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """The timm model ``name`` as a multi-level feature extractor, with its ImageNet weights from ``weights``.

    The weights go through timm's pretrained loading, so the model's ``pretrained_filter_fn`` maps reference /
    DDP keys and the classifier is dropped; all the model's default feature levels are built.
    """
    check_backbone_config(name, weights)
    overlay = dict(file=os.path.abspath(weights)) if weights else None
    return timm.create_model(name, pretrained=bool(weights), pretrained_cfg_overlay=overlay, features_only=True,
                             in_chans=in_chans, **dict(model_kwargs or {}))


class TimmFeatureBackbone(Backbone):
    """A timm feature extractor as a Detectron2 ``Backbone``: named levels, ``output_shape()``, freeze, norm.

    Args:
        model: a timm ``features_only`` model (``feature_info`` gives each level's channels and stride).
        out_features: level names returned by ``forward`` (``res3``... see :func:`level_name`).
        freeze_at: the number of levels, from stride 4 up, frozen with everything that computes them.
        norm: ``BN`` | ``FrozenBN`` | ``SyncBN``: what the BatchNorm layers of the trainable part become;
            those of the frozen part always become ``FrozenBatchNorm2d``, as in Detectron2's ResNet.
        in_chans: channels of the input images (for the freeze probe).
    """

    def __init__(self, model: nn.Module, out_features: Sequence[str], freeze_at: int = 0, norm: str = "FrozenBN",
                 in_chans: int = 3):
        super().__init__()
        if norm not in NORMS:
            raise BackboneConfigError(f"MODEL.GENAS.NORM={norm!r}: expected one of {NORMS}")
        self.body = model
        strides = model.feature_info.reduction()
        self._level_names: List[str] = [level_name(s) for s in strides]
        unknown = [f for f in out_features if f not in self._level_names]
        if unknown or not out_features:
            raise BackboneConfigError(f"MODEL.GENAS.OUT_FEATURES={list(out_features)}: {unknown or 'empty'} not "
                                      f"among this model's levels {self._level_names} (strides {strides})")
        self._out_features = list(out_features)
        self._out_feature_strides = dict(zip(self._level_names, strides))
        self._out_feature_channels = dict(zip(self._level_names, model.feature_info.channels()))
        self._in_chans = in_chans
        frozen = self.freeze(freeze_at)
        if norm == "FrozenBN":
            self.body = FrozenBatchNorm2d.convert_frozen_batchnorm(self.body)
        elif norm == "SyncBN":
            self.body = nn.SyncBatchNorm.convert_sync_batchnorm(self.body)
        logger.info("timm backbone: levels %s, out %s, %d frozen parameter tensors, norm %s",
                    dict(zip(self._level_names, strides)), self._out_features, len(frozen), norm)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = dict(zip(self._level_names, self.body(x)))
        return {name: features[name] for name in self._out_features}

    def freeze(self, freeze_at: int) -> Set[str]:
        """Freeze every parameter the stride-``2**(freeze_at+1)`` level depends on; return their names.

        The dependency is read from the autograd graph of one small forward pass (in eval mode, so no
        statistics change), which holds for any timm model whatever its module layout. BatchNorm layers
        whose affine parameters get frozen are replaced by ``FrozenBatchNorm2d``.
        """
        if freeze_at <= 0:
            return set()
        stride = 2 ** (freeze_at + 1)
        names = [n for n, s in self._out_feature_strides.items() if s == stride]
        if not names:
            raise BackboneConfigError(f"MODEL.GENAS.FREEZE_AT={freeze_at} freezes up to stride {stride}, but this "
                                      f"model's levels have strides {list(self._out_feature_strides.values())}")
        params = dict(self.body.named_parameters())
        was_training = self.body.training
        self.body.eval()
        size = 2 * max(self._out_feature_strides.values())
        x = torch.zeros(1, self._in_chans, size, size, device=next(iter(params.values())).device)
        level = dict(zip(self._level_names, self.body(x)))[names[0]]
        grads = torch.autograd.grad(level.sum(), list(params.values()), allow_unused=True)
        self.body.train(was_training)
        frozen = {n for (n, p), g in zip(params.items(), grads) if g is not None}
        for n in frozen:
            params[n].requires_grad_(False)
        for name, module in list(self.body.named_modules()):
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and f"{name}.weight" in frozen:
                parent, _, child = name.rpartition(".")
                setattr(self.body.get_submodule(parent), child, FrozenBatchNorm2d.convert_frozen_batchnorm(module))
        return frozen


@BACKBONE_REGISTRY.register()
def build_genas_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> TimmFeatureBackbone:
    """The bottom-up timm backbone described by ``cfg.MODEL.GENAS`` (see :mod:`detection.config`)."""
    g = cfg.MODEL.GENAS
    model = create_feature_model(g.NAME, g.WEIGHTS, input_shape.channels, g.MODEL_KWARGS)
    return TimmFeatureBackbone(model, g.OUT_FEATURES, freeze_at=g.FREEZE_AT, norm=g.NORM,
                               in_chans=input_shape.channels)


@BACKBONE_REGISTRY.register()
def build_retinanet_genas_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """RetinaNet's FPN (P3-P7) on the GeNAS backbone, as ``build_retinanet_resnet_fpn_backbone`` builds it."""
    bottom_up = build_genas_backbone(cfg, input_shape)
    in_features = cfg.MODEL.FPN.IN_FEATURES
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise BackboneConfigError(f"MODEL.FPN.IN_FEATURES={list(in_features)}: {missing} not produced by the backbone "
                                  f"(MODEL.GENAS.OUT_FEATURES={list(cfg.MODEL.GENAS.OUT_FEATURES)})")
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    last = in_features[-1]
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up.output_shape()[last].channels, out_channels, in_feature=last),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )

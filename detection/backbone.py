"""Detectron2 backbones made of any timm model with ``features_only`` support (the GeNAS / DARTS ones included).

The bottom-up :class:`TimmFeatureBackbone` names each timm feature level ``res<log2(stride)>`` (stride 4 ->
``res2`` ... stride 32 -> ``res5``), as Detectron2's ResNet does, so the stock RetinaNet / FPN keys apply. The
builder ``build_retinanet_genas_fpn_backbone`` puts Detectron2's FPN with ``LastLevelP6P7`` on top exactly like
``build_retinanet_resnet_fpn_backbone``: P3-P5 from the lateral convs, P6 from the last input level (C5), P7
from P6. Only the backbone changes, which is the paper's protocol (Table 4).

Only the levels ``MODEL.GENAS.OUT_FEATURES`` asks for are built (timm ``out_indices``; the layers after the last
one are pruned), so every trainable parameter gets a gradient, which Detectron2's DDP
(``find_unused_parameters=False``) requires. ``MODEL.BACKBONE.FREEZE_AT`` has ResNet's meaning (0 = nothing frozen,
1 = the stem, k = the stem and the first k-1 stages; :mod:`backbones.freeze`); the frozen part's BatchNorm layers
become ``FrozenBatchNorm2d`` as in Detectron2's ResNet. ``MODEL.GENAS.GRAD_CHECKPOINT`` turns on timm's gradient
checkpointing of the network (:mod:`backbones.checkpointing`; each DARTS cell is recomputed in the backward, with the
plain backward's gradients and BatchNorm statistics), for large images on small GPUs.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import timm
import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7

from backbones.checkpointing import check_bool_setting, set_grad_checkpointing
from backbones.freeze import FrozenPart, freeze_to_level, level_of_freeze_at, level_strides
from backbones.names import check_model_name
from genas.core.errors import UsageError

__all__ = ["NORMS", "BackboneConfigError", "TimmFeatureBackbone", "check_backbone_config", "check_removed_keys",
           "feature_level_names", "create_feature_model", "level_name", "build_genas_backbone",
           "build_retinanet_genas_fpn_backbone"]

logger = logging.getLogger(__name__)

NORMS = ("BN", "FrozenBN", "SyncBN")


class BackboneConfigError(UsageError):
    """A backbone setting that cannot build a backbone; the message names the key and the fix."""


def level_name(stride: int) -> str:
    """``res<log2(stride)>``: the ResNet-style name of a feature level."""
    return f"res{int(math.log2(stride))}"


def check_backbone_config(name: str, weights: str = "") -> None:
    """Fail with one clear message when ``name`` is no timm model (:class:`backbones.names.ModelNameError`) or the
    ImageNet ``weights`` file is missing."""
    check_model_name(name, "MODEL.GENAS.NAME")
    if weights and not os.path.isfile(weights):
        raise BackboneConfigError(f"MODEL.GENAS.WEIGHTS={weights!r}: ImageNet weights file not found; give the "
                                  f"path of the model's ImageNet checkpoint, or \"\" for random init.")


def feature_level_names(name: str, in_chans: int = 3, model_kwargs: Optional[Mapping[str, Any]] = None) -> List[str]:
    """The ``res<k>`` names of every feature level of timm model ``name`` (read from a model built on the meta
    device: no memory, no weights; on the CPU for a model whose construction needs real tensors)."""
    kwargs = dict(features_only=True, in_chans=in_chans, **dict(model_kwargs or {}))
    try:
        with torch.device("meta"):
            probe = timm.create_model(name, **kwargs)
    except (RuntimeError, NotImplementedError):  # e.g. .item() / .tolist() of a meta tensor in __init__
        probe = timm.create_model(name, **kwargs)
    return [level_name(s) for s in level_strides(probe)]


def create_feature_model(name: str, weights: str = "", in_chans: int = 3,
                         model_kwargs: Optional[Mapping[str, Any]] = None,
                         out_features: Optional[Sequence[str]] = None) -> nn.Module:
    """The timm model ``name`` as a multi-level feature extractor, with its ImageNet weights from ``weights``.

    The weights go through timm's pretrained loading, so the model's ``pretrained_filter_fn`` maps reference /
    DDP keys and the classifier is dropped. ``out_features`` (``res<k>`` names) selects the levels returned;
    the layers after the last one are not built. ``None``: all the model's levels.
    """
    check_backbone_config(name, weights)
    kwargs = dict(model_kwargs or {})
    if out_features is not None:
        names = feature_level_names(name, in_chans, kwargs)
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise BackboneConfigError(f"MODEL.GENAS.OUT_FEATURES={list(out_features)}: {unknown or 'empty'} not "
                                      f"among {name}'s levels {names}")
        kwargs["out_indices"] = tuple(sorted({names.index(f) for f in out_features}))
    overlay = dict(file=os.path.abspath(weights)) if weights else None
    return timm.create_model(name, pretrained=bool(weights), pretrained_cfg_overlay=overlay, features_only=True,
                             in_chans=in_chans, **kwargs)


class TimmFeatureBackbone(Backbone):
    """A timm feature extractor as a Detectron2 ``Backbone``: named levels, ``output_shape()``, freeze, norm.

    Args:
        model: a timm ``features_only`` model (``feature_info`` gives each level's channels and stride).
        out_features: level names returned by ``forward`` (``res3``... see :func:`level_name`), among the levels
            the model returns.
        freeze_at: Detectron2's ``MODEL.BACKBONE.FREEZE_AT`` with ResNet's meaning: 0 = nothing frozen, 1 = the
            stem, k = the stem and the first k-1 stages (everything that computes ``res<k>``; see
            :func:`backbones.freeze.level_of_freeze_at`). Frozen BatchNorm layers become ``FrozenBatchNorm2d``.
        norm: ``BN`` | ``FrozenBN`` | ``SyncBN``: what the BatchNorm layers of the trainable part become.
        in_chans: channels of the input images (for the freeze probe).
        channels_last: run the backbone in channels_last memory format.
        grad_checkpointing: timm's gradient checkpointing of the network (``MODEL.GENAS.GRAD_CHECKPOINT``): less
            activation memory, one more forward of the checkpointed blocks in the backward, the same gradients.
    """

    def __init__(self, model: nn.Module, out_features: Sequence[str], freeze_at: int = 0, norm: str = "FrozenBN",
                 in_chans: int = 3, channels_last: bool = False, grad_checkpointing: bool = False):
        super().__init__()
        if norm not in NORMS:
            raise BackboneConfigError(f"MODEL.GENAS.NORM={norm!r}: expected one of {NORMS}")
        check_bool_setting(channels_last, "MODEL.GENAS.CHANNELS_LAST", BackboneConfigError)
        check_bool_setting(grad_checkpointing, "MODEL.GENAS.GRAD_CHECKPOINT", BackboneConfigError)
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
        self.frozen = self.freeze(freeze_at)
        if norm == "FrozenBN":
            self.body = FrozenBatchNorm2d.convert_frozen_batchnorm(self.body)
        elif norm == "SyncBN":
            self.body = nn.SyncBatchNorm.convert_sync_batchnorm(self.body)
        self.channels_last = channels_last
        if channels_last:
            self.body.to(memory_format=torch.channels_last)
        self.grad_checkpointing = grad_checkpointing
        if grad_checkpointing:
            set_grad_checkpointing(self.body, True, "MODEL.GENAS.GRAD_CHECKPOINT", BackboneConfigError)
        logger.info("timm backbone: levels %s, out %s, %d frozen parameter tensors (FREEZE_AT %d), norm %s%s",
                    self._out_feature_strides, self._out_features, len(self.frozen.parameters), freeze_at, norm,
                    ", gradient checkpointing" if grad_checkpointing else "")

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = dict(zip(self._level_names, self.body(x)))
        return {name: features[name] for name in self._out_features}

    def freeze(self, freeze_at: int) -> FrozenPart:
        """Freeze what ``MODEL.BACKBONE.FREEZE_AT = freeze_at`` names (:mod:`backbones.freeze`); its BatchNorm
        layers become ``FrozenBatchNorm2d``. Returns the frozen part."""
        level = level_of_freeze_at(freeze_at, level_strides(self.body), built=max(self.body.feature_info.out_indices))
        part = freeze_to_level(self.body, level, self._in_chans, setting=f"MODEL.BACKBONE.FREEZE_AT={freeze_at}")
        for name in part.norms:
            parent, _, child = name.rpartition(".")
            owner = self.body.get_submodule(parent) if parent else self.body
            setattr(owner, child, FrozenBatchNorm2d.convert_frozen_batchnorm(getattr(owner, child)))
        return part


def check_removed_keys(cfg: CfgNode) -> None:
    """Refuse the keys that were replaced by Detectron2's own (one message saying which key to use)."""
    if cfg.MODEL.GENAS.get("FREEZE_AT") is not None:
        raise BackboneConfigError(
            f"MODEL.GENAS.FREEZE_AT={cfg.MODEL.GENAS.FREEZE_AT} was removed: use Detectron2's MODEL.BACKBONE.FREEZE_AT "
            f"(ResNet's meaning: 0 = nothing frozen, 1 = the stem, k = the stem and the first k-1 stages; the old "
            f"MODEL.GENAS.FREEZE_AT k is MODEL.BACKBONE.FREEZE_AT k+1)")


@BACKBONE_REGISTRY.register()
def build_genas_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> TimmFeatureBackbone:
    """The bottom-up timm backbone described by ``cfg.MODEL.GENAS`` (see :mod:`detection.config`) with
    ``cfg.MODEL.BACKBONE.FREEZE_AT``."""
    check_removed_keys(cfg)
    g = cfg.MODEL.GENAS
    # flags checked before the model is built: a wrong value costs no construction
    check_bool_setting(g.CHANNELS_LAST, "MODEL.GENAS.CHANNELS_LAST", BackboneConfigError)
    check_bool_setting(g.GRAD_CHECKPOINT, "MODEL.GENAS.GRAD_CHECKPOINT", BackboneConfigError)
    model = create_feature_model(g.NAME, g.WEIGHTS, input_shape.channels, g.MODEL_KWARGS, g.OUT_FEATURES)
    return TimmFeatureBackbone(model, g.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT, norm=g.NORM,
                               in_chans=input_shape.channels, channels_last=g.CHANNELS_LAST,
                               grad_checkpointing=g.GRAD_CHECKPOINT)


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

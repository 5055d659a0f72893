"""An MMSegmentation backbone made of any timm model from ``backbones/`` (the GeNAS / DARTS cells included).

:class:`GeNASBackbone` is MMSeg's own ``TIMMBackbone`` (timm ``features_only``) plus what the DeepLabv3 recipe
needs from a backbone: the ImageNet weights file, ``frozen_stages`` (MMSeg's convention, mapped onto the suite's one
freezing rule, :mod:`backbones.freeze`) and ``norm_eval``, ``channels_last``, ``grad_checkpointing`` (timm's gradient
checkpointing, :mod:`backbones.checkpointing`), and one clear error for a wrong model name
(:func:`backbones.names.check_model_name`), a missing weights file or a flag that is not a bool. Configs load it with
``custom_imports = dict(imports=['segmentation.backbone'])`` and ``backbone=dict(type='GeNASBackbone', ...)``.

How the DeepLabv3 head sees the features (no dilation)
------------------------------------------------------
MMSeg's R50-D8 recipe turns the strides of ResNet's last two stages into dilation (output stride 8). A DARTS
network cannot be dilated honestly: a reduction cell downsamples through stride-2 separable / dilated convs,
max / avg pooling and a ``FactorizedReduce`` (two offset stride-2 1x1 convs) inside the *next* cell's
preprocessing; turning those into stride 1 changes what the ImageNet weights compute, and every later cell
would need its own dilation rewrite. So the network runs unchanged and the heads read its native levels
(0..3 at strides 4/8/16/32). ``configs/segmentation`` offers both honest choices:

* output stride 32 (default): ASPP on level 3, the FCN auxiliary head on level 2. The whole ImageNet network
  is used, which is the paper's "only the backbone replaced"; the ASPP rates follow DeepLabv3's rule
  rate x output stride = const (12/24/36 at stride 8 -> 3/6/9 at stride 32).
* output stride 16 (``*_os16_*`` config): ASPP on level 2, auxiliary on level 1, rates 6/12/18; the cells after
  the second reduction are pruned (timm ``prune_intermediate_layers``), so the network is shorter than the one
  trained on ImageNet.

Input normalisation: the GeNAS / DARTS ImageNet models were trained on RGB in [0, 1] without mean/std (their timm
``pretrained_cfg`` has mean 0, std 1), so the configs' ``SegDataPreProcessor`` uses mean 0, std 255,
``bgr_to_rgb=True``. For another timm model use 255 x its ``pretrained_cfg`` mean / std.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from mmseg.models.backbones import TIMMBackbone
from mmseg.registry import MODELS

from backbones.checkpointing import check_bool_setting, set_grad_checkpointing
from backbones.freeze import freeze_to_level, level_of_frozen_stages, level_strides
from backbones.names import check_model_name
from genas.core.errors import UsageError

__all__ = ["BackboneConfigError", "GeNASBackbone"]


class BackboneConfigError(UsageError):
    """A backbone setting that cannot build a model; the message names the setting and the fix."""


@MODELS.register_module()
class GeNASBackbone(TIMMBackbone):
    """A timm model from ``backbones/`` (or any timm model with ``features_only``) as an MMSeg backbone.

    Args:
        model_name: timm model name, e.g. ``genas_c100`` (``timm.list_models(module='darts_net')``).
        out_indices: feature levels returned, in order (DARTS nets: 0..3 at strides 4/8/16/32); the layers after
            the last one are pruned. The heads' ``in_index`` indexes this tuple.
        weights: path of the model's ImageNet checkpoint, loaded through timm's pretrained loading
            (``weights_only=True``; the model's checkpoint filter maps reference / DDP keys, the classifier is
            dropped); ``''`` for random initialisation.
        frozen_stages: ``-1`` trains everything; ``k >= 0`` freezes feature level ``k``, the levels before it and
            every layer that computes them (:func:`backbones.freeze.freeze_to_level`; DARTS: 0 = ``stem0``;
            1 = the stems and cells 0-3; ...). Frozen parameters get ``requires_grad=False``; the frozen modules
            and BatchNorm layers stay in eval mode, as in MMSeg's ResNet.
        norm_eval: keep every BatchNorm of the backbone in eval mode while training (running statistics of the
            ImageNet weights are not updated by the small segmentation batches), as MMSeg's ResNet does.
        in_channels: input image channels.
        channels_last: run the backbone in channels_last memory format.
        grad_checkpointing: timm's gradient checkpointing of the network (``model.backbone.grad_checkpointing=True``):
            each DARTS cell keeps only its inputs for the backward and is recomputed there; the gradients and
            BatchNorm statistics are the plain backward's.
        init_cfg: MMEngine init config (unused with ``weights``).
        **kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """

    def __init__(self, model_name: str, out_indices: Sequence[int] = (0, 1, 2, 3), weights: str = "",
                 frozen_stages: int = -1, norm_eval: bool = False, in_channels: int = 3,
                 channels_last: bool = False, grad_checkpointing: bool = False, init_cfg: dict | None = None,
                 **kwargs: Any):
        check_model_name(model_name, "backbone model_name")
        for setting, value in (("norm_eval", norm_eval), ("channels_last", channels_last),
                               ("grad_checkpointing", grad_checkpointing)):
            check_bool_setting(value, f"backbone {setting}", BackboneConfigError)
        if weights and not os.path.isfile(weights):
            raise BackboneConfigError(f"backbone weights={weights!r}: ImageNet weights file not found; give the "
                                      f"path of {model_name}'s ImageNet checkpoint, or '' for random init.")
        overlay = dict(file=os.path.abspath(weights)) if weights else None
        super().__init__(model_name, features_only=True, pretrained=bool(weights), checkpoint_path="",
                         in_channels=in_channels, init_cfg=init_cfg, out_indices=tuple(out_indices),
                         pretrained_cfg_overlay=overlay, **kwargs)
        self.model_name = model_name
        self.out_indices = tuple(out_indices)
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        #: names (in ``timm_model``) of the frozen modules; names, not objects, survive SyncBN conversion
        self.frozen_modules = self._freeze_stages(frozen_stages, in_channels)
        self.channels_last = channels_last
        if channels_last:
            self.timm_model.to(memory_format=torch.channels_last)
        self.grad_checkpointing = grad_checkpointing
        if grad_checkpointing:
            set_grad_checkpointing(self.timm_model, True, "backbone grad_checkpointing", BackboneConfigError)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return tuple(self.timm_model(x))

    def _freeze_stages(self, frozen_stages: int, in_channels: int) -> list[str]:
        """Freeze up to feature level ``frozen_stages`` (:mod:`backbones.freeze`); return the names of the
        modules :meth:`train` keeps in eval mode: the largest modules whose parameters are all frozen, and the
        BatchNorm layers that compute the frozen level."""
        level = level_of_frozen_stages(frozen_stages, len(level_strides(self.timm_model)), "backbone frozen_stages")
        part = freeze_to_level(self.timm_model, level, in_channels, f"backbone frozen_stages={frozen_stages}")
        frozen, names = set(part.parameters), []
        for name, module in self.timm_model.named_modules():  # pre-order: a module before its descendants
            if any(name.startswith(f"{n}.") for n in names) or not name:
                continue
            params = [f"{name}.{p}" for p, _ in module.named_parameters()]
            if (params and frozen.issuperset(params)) or name in part.norms:
                names.append(name)
        return names

    def train(self, mode: bool = True) -> "GeNASBackbone":
        """Train mode except for the frozen modules and, with ``norm_eval``, every BatchNorm."""
        super().train(mode)
        if mode:
            for name in self.frozen_modules:
                self.timm_model.get_submodule(name).eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

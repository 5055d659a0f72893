"""Config keys of the GeNAS detection backbones, added to Detectron2's defaults before a YAML is merged.

``MODEL.GENAS`` (read by :mod:`detection.backbone`):

- ``NAME``: any timm model with ``features_only`` support; ``import backbones`` registers the DARTS-space ones
  (``genas_c100``, ``pc_darts``, ``darts_imagenet`` ...).
- ``MODEL_KWARGS``: extra keywords of ``timm.create_model``, e.g. ``{genotype: search/best.json, C: 48}`` for
  ``darts_imagenet`` or ``{drop_path_rate: 0.1}`` (YAML only: yacs cannot add new keys from the command line).
- ``WEIGHTS``: the ImageNet classification checkpoint of that model ("" = random init). It is loaded through
  timm (``pretrained_cfg_overlay=dict(file=...)``) so the model's own checkpoint filter maps its keys.
- ``FREEZE_AT``: how many feature levels, counted from the finest (stride 4), are frozen together with
  everything that computes them; 0 trains the whole backbone. 1 (everything up to stride 4) is the counterpart
  of ResNet's ``FREEZE_AT: 2`` (stem + res2) in Detectron2's RetinaNet recipe.
- ``NORM``: what the backbone's BatchNorm layers become: ``BN`` (kept), ``FrozenBN`` (fixed statistics and
  affine, Detectron2's default for ImageNet backbones) or ``SyncBN``.
- ``OUT_FEATURES``: the feature levels handed to the FPN, named ``res<log2(stride)>`` like ResNet's, so that
  Detectron2's stock FPN / RetinaNet keys (``FPN.IN_FEATURES: [res3, res4, res5]``) apply unchanged.

``DATASETS.COCO_FORMAT`` (read by :mod:`detection.data`): ``[name, json_file, image_root]`` triples registered
as COCO-format instance datasets before the loaders are built, so any such dataset is used from YAML or the
command line without editing code.
"""
from __future__ import annotations

from typing import Sequence

from detectron2.config import CfgNode, get_cfg

import detection.backbone  # noqa: F401  (registers the BACKBONE.NAME builders that the YAML files use)

__all__ = ["add_genas_config", "build_config"]


def add_genas_config(cfg: CfgNode) -> None:
    """Add the ``MODEL.GENAS`` and ``DATASETS.COCO_FORMAT`` keys (with their defaults) to ``cfg`` in place."""
    cfg.MODEL.GENAS = CfgNode()
    cfg.MODEL.GENAS.NAME = "genas_c100"
    cfg.MODEL.GENAS.MODEL_KWARGS = CfgNode(new_allowed=True)
    cfg.MODEL.GENAS.WEIGHTS = ""
    cfg.MODEL.GENAS.FREEZE_AT = 1
    cfg.MODEL.GENAS.NORM = "FrozenBN"
    cfg.MODEL.GENAS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.DATASETS.COCO_FORMAT = []


def build_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """Detectron2 defaults + the GeNAS keys, then ``config_file`` (with its ``_BASE_`` chain), then ``opts``."""
    cfg = get_cfg()
    add_genas_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg

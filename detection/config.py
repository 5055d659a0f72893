"""Config keys of the GeNAS detection backbones, added to Detectron2's defaults before a YAML is merged.

``MODEL.GENAS`` (read by :mod:`detection.backbone`):

- ``NAME``: any timm model with ``features_only`` support; ``import backbones`` registers the DARTS-space ones
  (``genas_c100``, ``pc_darts``, ``darts_imagenet`` ...).
- ``MODEL_KWARGS``: extra keywords of ``timm.create_model``, e.g. ``{genotype: search/best.json, C: 48}`` for
  ``darts_imagenet`` or ``{drop_path_rate: 0.1}`` (YAML only: yacs cannot add new keys from the command line).
- ``WEIGHTS``: the ImageNet classification checkpoint of that model ("" = random init). It is loaded through
  timm (``pretrained_cfg_overlay=dict(file=...)``) so the model's own checkpoint filter maps its keys.
- ``NORM``: what the backbone's BatchNorm layers become: ``BN`` (kept), ``FrozenBN`` (fixed statistics and
  affine, Detectron2's default for ImageNet backbones) or ``SyncBN``.
- ``OUT_FEATURES``: the feature levels handed to the FPN, named ``res<log2(stride)>`` like ResNet's, so that
  Detectron2's stock FPN / RetinaNet keys (``FPN.IN_FEATURES: [res3, res4, res5]``) apply unchanged. Only these
  levels are built (the layers after the last one are pruned), so every trainable parameter gets a gradient.
- ``CHANNELS_LAST``: run the backbone in channels_last memory format (opt-in: measured 0.47x of NCHW for
  ``genas_c100`` inference on an H200, ../shared/reference/gpu_h200_measured.md).
- ``GRAD_CHECKPOINT``: timm's gradient checkpointing of the backbone network (default False): each DARTS cell keeps
  only its inputs for the backward and is recomputed there, with the plain backward's gradients and BatchNorm
  statistics; for the paper's 2 x 1333 x 800 images on small GPUs. A non-bool value is an error.
- ``FREEZE_AT``: removed (an error that points to the key below); kept only to say so.

Freezing is Detectron2's own ``MODEL.BACKBONE.FREEZE_AT``, with ResNet's meaning: 0 = nothing frozen, 1 = the
stem, k = the stem and the first k-1 stages, i.e. everything computing ``res<k>`` (:mod:`backbones.freeze`).
Detectron2's default 2 is the RetinaNet recipe's "stem + res2"; for the DARTS networks, whose stride-4 level is the
stem's output, 1 and 2 both freeze ``stem0``, 3 freezes the stems and the cells up to stride 8.

``SOLVER.AMP.PRECISION`` (``fp16`` | ``bf16``): the autocast dtype of Detectron2's ``AMPTrainer`` when
``SOLVER.AMP.ENABLED`` (which needs a CUDA device); Detectron2's own default is fp16.

Two departures from stock Detectron2 (``False`` in both is Detectron2's own behaviour, as in the paper's runs;
README, "Reference protocol vs defaults"):

- ``DATALOADER.EXACT_RESUME`` (default True): the training batches are a function of ``SEED`` and the iteration
  (:class:`detection.data.ResumableTrainLoader`: Detectron2's sampler, aspect-ratio groups and mapper; each
  process takes its share of each global batch; augmentation draws seeded per sample) and torch's generators are
  seeded per iteration, so ``--resume`` continues with the uninterrupted run's batches and draws. Stock Detectron2
  restarts its data stream at the first batch on resume and draws per process.
- ``MODEL.RETINANET.GLOBAL_LOSS_NORMALIZER`` (default True): RetinaNet's loss normalizer (an EMA of the number of
  positive anchors) counts the anchors of all processes, so N processes compute the gradient of one process with
  the whole batch; stock Detectron2 keeps one EMA per process, so the averaged gradient depends on the split.

``DATASETS.COCO_FORMAT`` (read by :mod:`detection.data`): ``[name, json_file, image_root]`` triples registered
as COCO-format instance datasets before the loaders are built, so any such dataset is used from YAML or the
command line without editing code.
"""
from __future__ import annotations

import os
from typing import Sequence

import yaml
from detectron2.config import CfgNode, get_cfg

from genas.core.errors import UsageError

import detection.backbone  # noqa: F401  (registers the BACKBONE.NAME builders that the YAML files use)

__all__ = ["ConfigFileError", "add_genas_config", "build_config"]


class ConfigFileError(UsageError):
    """A config file or command-line override Detectron2 cannot merge; the message names it."""


def add_genas_config(cfg: CfgNode) -> None:
    """Add the ``MODEL.GENAS``, ``SOLVER.AMP.PRECISION``, ``DATASETS.COCO_FORMAT``, ``DATALOADER.EXACT_RESUME`` and
    ``MODEL.RETINANET.GLOBAL_LOSS_NORMALIZER`` keys (with their defaults)
    to ``cfg`` in place: call it before ``cfg.merge_from_file`` of a GeNAS YAML (also from Detectron2's own
    ``tools/train_net.py``)."""
    cfg.MODEL.GENAS = CfgNode()
    cfg.MODEL.GENAS.NAME = "genas_c100"
    cfg.MODEL.GENAS.MODEL_KWARGS = CfgNode(new_allowed=True)
    cfg.MODEL.GENAS.WEIGHTS = ""
    cfg.MODEL.GENAS.FREEZE_AT = None  # removed: MODEL.BACKBONE.FREEZE_AT (setting it is an error saying so)
    cfg.MODEL.GENAS.NORM = "FrozenBN"
    cfg.MODEL.GENAS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.GENAS.CHANNELS_LAST = False
    cfg.MODEL.GENAS.GRAD_CHECKPOINT = False
    cfg.SOLVER.AMP.PRECISION = "fp16"
    cfg.DATASETS.COCO_FORMAT = []
    cfg.DATALOADER.EXACT_RESUME = True
    cfg.MODEL.RETINANET.GLOBAL_LOSS_NORMALIZER = True


def build_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """Detectron2 defaults + the GeNAS keys, then ``config_file`` (with its ``_BASE_`` chain), then ``opts``."""
    if not os.path.isfile(config_file):
        raise ConfigFileError(f"--config-file {config_file!r}: file not found; the recipes are "
                              f"configs/detection/retinanet_*_FPN_1x.yaml")
    cfg = get_cfg()
    add_genas_config(cfg)
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, ValueError, AssertionError, yaml.YAMLError) as e:  # yacs: unknown key / wrong type
        raise ConfigFileError(f"{config_file}: {e}") from None
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigFileError(f"command-line opts {list(opts)}: {e} (give KEY VALUE pairs of existing keys)") from None
    return cfg

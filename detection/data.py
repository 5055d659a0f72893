"""Datasets for the detection runs: COCO-format datasets registered from the config, and up-front path checks.

``DATASETS.COCO_FORMAT: [[name, json_file, image_root], ...]`` registers each entry with Detectron2's
``register_coco_instances`` (so ``COCOEvaluator`` reads that json directly); the names can then be used in
``DATASETS.TRAIN`` / ``DATASETS.TEST``. The standard names (``coco_2017_train``, ``coco_2017_val`` ...) are
Detectron2's built-ins and resolve under ``$DETECTRON2_DATASETS``. A missing file or an unknown name fails
before any model is built, with one message listing every problem.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, List

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from genas.core.errors import UsageError

__all__ = ["DatasetConfigError", "register_coco_format_datasets", "check_datasets", "check_num_classes"]

logger = logging.getLogger(__name__)

_BUILTIN_HINT = ("the built-in COCO names resolve under $DETECTRON2_DATASETS (now {root!r}), which must hold "
                 "coco/annotations and coco/train2017, coco/val2017; other COCO-format data is added as "
                 "[name, json_file, image_root] to DATASETS.COCO_FORMAT")


class DatasetConfigError(UsageError):
    """A dataset in the config that is unknown or whose files are missing; the message says how to fix it."""


def register_coco_format_datasets(cfg: CfgNode) -> List[str]:
    """Register every ``[name, json_file, image_root]`` of ``cfg.DATASETS.COCO_FORMAT``; return the names.

    A name registered before (a built-in, or an earlier run in this process) is replaced, so the config wins.
    """
    names = []
    for entry in cfg.DATASETS.COCO_FORMAT:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and all(isinstance(e, str) for e in entry)):
            raise DatasetConfigError(f"DATASETS.COCO_FORMAT entry {entry!r}: expected [name, json_file, image_root]")
        name, json_file, image_root = entry
        if name in DatasetCatalog.list():
            logger.info("dataset %r is registered already: replaced by %s, %s", name, json_file, image_root)
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, json_file, image_root)
        names.append(name)
    return names


def check_datasets(names: Iterable[str]) -> None:
    """Fail with one message if a dataset is not registered or its annotation file / image folder is missing."""
    problems = []
    for name in names:
        if name not in DatasetCatalog.list():
            problems.append(f"dataset {name!r} is not registered")
            continue
        meta = MetadataCatalog.get(name)
        for what, key, exists in (("annotation file", "json_file", os.path.isfile),
                                  ("image folder", "image_root", os.path.isdir)):
            path = meta.get(key, None)
            if path is not None and not exists(path):
                problems.append(f"dataset {name!r}: {what} {path} does not exist")
    if problems:
        hint = _BUILTIN_HINT.format(root=os.getenv("DETECTRON2_DATASETS", "datasets (unset)"))
        raise DatasetConfigError("; ".join(problems) + f". Note: {hint}.")


def check_num_classes(cfg: CfgNode, names: Iterable[str]) -> None:
    """After a dataset is loaded (its metadata then lists the classes), check that RetinaNet has enough outputs."""
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) > cfg.MODEL.RETINANET.NUM_CLASSES:
            raise DatasetConfigError(f"dataset {name!r} has {len(classes)} classes but MODEL.RETINANET.NUM_CLASSES="
                                     f"{cfg.MODEL.RETINANET.NUM_CLASSES}; set it to {len(classes)}")

"""Datasets for the detection runs: COCO-format datasets registered from the config, and up-front path checks.

``DATASETS.COCO_FORMAT: [[name, json_file, image_root], ...]`` registers each entry with Detectron2's
``register_coco_instances`` (so ``COCOEvaluator`` reads that json directly); the names can then be used in
``DATASETS.TRAIN`` / ``DATASETS.TEST``. The standard names (``coco_2017_train``, ``coco_2017_val`` ...) are
Detectron2's built-ins and resolve under ``$DETECTRON2_DATASETS``. A missing file or an unknown name fails
before any model is built, with one message listing every problem.

:class:`ResumableTrainLoader` gives Detectron2's training batches (its sampler's index stream, aspect-ratio groups,
``DatasetMapper``) so that they depend only on the data seed and the iteration: the batches are made from the one
global index stream (every process draws the same) and each process takes its share of each global batch, and the
random augmentations of a sample are drawn from a seed of (data seed, batch, slot). A run resumed at iteration k
therefore gets the batches the uninterrupted run got there, and N processes with a batch of B/N each see, together,
the batches one process with B sees.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import _train_loader_from_config, build_batch_data_loader
from detectron2.data.common import DatasetFromList
from detectron2.data.datasets import register_coco_instances
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

from genas.core.distributed import derived_seed
from genas.core.errors import UsageError

__all__ = ["DatasetConfigError", "register_coco_format_datasets", "check_datasets", "check_num_classes",
           "SeededMapDataset", "GlobalBatchSampler", "ResumableTrainLoader"]

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


class SeededMapDataset(Dataset):
    """Dataset dicts through a mapper, indexed by ``(sample seed, index)``: python's ``random``, numpy's and
    torch's CPU generators are seeded with the sample seed while the mapper runs (the caller's states are restored
    after), so the sample's random augmentations depend on its seed only, not on the process or worker."""

    def __init__(self, dicts: Sequence[dict], mapper: Callable[[dict], Optional[dict]]):
        self._dicts = DatasetFromList(list(dicts), copy=True)
        self._mapper = mapper

    def __len__(self) -> int:
        return len(self._dicts)

    def __getitem__(self, key: Tuple[int, int]) -> dict:
        seed, index = key
        saved = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                for attempt in range(len(self)):  # a mapper may drop a sample (None): take the next one
                    random.seed(seed)
                    np.random.seed(seed % 2 ** 32)
                    torch.manual_seed(seed)
                    mapped = self._mapper(self._dicts[(index + attempt) % len(self)])
                    if mapped is not None:
                        return mapped
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
        raise RuntimeError("the mapper dropped every sample of the dataset")


class GlobalBatchSampler(Sampler):
    """This process's share of the global training batches, as ``(sample seed, dataset index)`` pairs.

    ``stream()`` is the index stream of the whole run (identical in every process: Detectron2's
    ``TrainingSampler._infinite_indices``). Indices are put in aspect-ratio groups (``group_of[index]``; Detectron2's
    rule: landscape / portrait) and each full group of ``total_batch_size`` is a global batch; the process of rank r
    yields slots ``[r * b, (r + 1) * b)`` of it (b = total / world size). The first ``start_batch`` global batches are
    skipped (only indices are computed for them: cheap), so iteration k gets global batch k whatever came before.
    """

    def __init__(self, stream: Callable[[], Iterator[int]], group_of: Optional[Sequence[int]], total_batch_size: int,
                 seed: int, start_batch: int = 0, rank: int = 0, world_size: int = 1):
        if total_batch_size % world_size:
            raise DatasetConfigError(f"SOLVER.IMS_PER_BATCH={total_batch_size} is not divisible by the number of "
                                     f"processes ({world_size})")
        self._stream, self._group_of, self._total = stream, group_of, total_batch_size
        self._seed, self._start, self._rank, self._world = seed, start_batch, rank, world_size

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        per_rank = self._total // self._world
        slots = range(self._rank * per_rank, (self._rank + 1) * per_rank)
        buckets: dict = {}
        batch = 0
        for index in self._stream():
            bucket = buckets.setdefault(0 if self._group_of is None else self._group_of[index], [])
            bucket.append(index)
            if len(bucket) < self._total:
                continue
            if batch >= self._start:
                for slot in slots:
                    yield derived_seed(self._seed, batch, slot), bucket[slot]
            bucket.clear()
            batch += 1


class ResumableTrainLoader:
    """Detectron2's training data of ``cfg`` (datasets, sampler, ``DatasetMapper``, batch size, aspect-ratio
    grouping, workers: ``build_detection_train_loader``'s config) as global batches that depend only on ``seed``
    and the iteration (:class:`GlobalBatchSampler`, :class:`SeededMapDataset`).

    ``seed`` (``cfg.SEED``, or a seed shared by the processes when it is negative) and ``start_iter`` may be set
    until the first ``iter()``, which builds the ``DataLoader`` (the trainer sets them when it resumes).
    """

    def __init__(self, cfg: CfgNode):
        settings = _train_loader_from_config(cfg)
        self.dataset_dicts = settings["dataset"]
        self.mapper = settings["mapper"]
        self.total_batch_size = settings["total_batch_size"]
        self.num_workers = settings["num_workers"]
        sampler = settings["sampler"]
        if not hasattr(sampler, "_infinite_indices"):
            raise DatasetConfigError(f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN}: this sampler has no "
                                     f"global index stream; use TrainingSampler or RepeatFactorTrainingSampler")
        self.sampler = sampler
        self.group_of = None
        if settings["aspect_ratio_grouping"]:
            self.group_of = [0 if d["width"] > d["height"] else 1 for d in self.dataset_dicts]
        self.seed = int(cfg.SEED) if cfg.SEED >= 0 else comm.shared_random_seed()
        self.start_iter = 0

    def __iter__(self) -> Iterator[List[dict]]:
        self.sampler._seed = self.seed  # the index stream's shuffles (TrainingSampler, RepeatFactorTrainingSampler)
        sampler = GlobalBatchSampler(self.sampler._infinite_indices, self.group_of, self.total_batch_size, self.seed,
                                     self.start_iter, comm.get_rank(), comm.get_world_size())
        loader = build_batch_data_loader(SeededMapDataset(self.dataset_dicts, self.mapper), sampler,
                                         self.total_batch_size, aspect_ratio_grouping=False,
                                         num_workers=self.num_workers)
        return iter(loader)

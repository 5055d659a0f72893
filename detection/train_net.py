"""Train and evaluate RetinaNet with a GeNAS (or any timm) backbone: Detectron2's standard train_net flow.

    python detection/train_net.py --config-file configs/detection/retinanet_genas_c100_FPN_1x.yaml --num-gpus 8 \
        MODEL.GENAS.WEIGHTS runs/imagenet/genas_c100/model_best.pth OUTPUT_DIR runs/detection/genas_c100
    python detection/train_net.py --config-file configs/detection/retinanet_genas_c100_FPN_1x.yaml \
        --eval-only MODEL.WEIGHTS runs/detection/genas_c100/model_final.pth OUTPUT_DIR runs/detection/genas_c100

``--resume`` continues from ``OUTPUT_DIR/last_checkpoint``; trailing ``KEY VALUE`` pairs override the config.
The standard COCO names need ``$DETECTRON2_DATASETS``; any other COCO-format data is registered from the config
(``DATASETS.COCO_FORMAT``, see :mod:`detection.data`). After the final evaluation, COCO box AP, AP50, AP75, APs,
APm, APl go to ``OUTPUT_DIR/results_detection.json`` (``genas.core.results`` format; one
``results_detection_<dataset>.json`` per dataset when ``DATASETS.TEST`` has several).

``--num-gpus N`` starts N processes with Detectron2's ``launch`` (NCCL on GPUs; on a machine without CUDA, N gloo
CPU processes). Mixed precision: ``SOLVER.AMP.ENABLED True`` (CUDA) with ``SOLVER.AMP.PRECISION fp16|bf16``;
``MODEL.GENAS.CHANNELS_LAST True`` runs the backbone in channels_last. A config mistake (unknown model, missing
dataset file, removed key) is one ``error:`` line on stderr and exit code 2, before any process starts.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional

import torch

import detection  # noqa: F401  (first: imports Detectron2 without its torch.jit FutureWarning)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from detection.backbone import BackboneConfigError, check_removed_keys, check_backbone_config
from detection.config import build_config
from detection.data import ResumableTrainLoader, check_datasets, check_num_classes, register_coco_format_datasets
from genas.core.distributed import AMP_DTYPES, derived_seed
from genas.core.errors import usage_errors
from genas.core.results import write_result

__all__ = ["DETECTION_METRICS", "GlobalNormalizerRetinaNet", "Trainer", "checked_config", "setup",
           "write_detection_results", "main", "cli"]

logger = logging.getLogger("detectron2")

DETECTION_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _create_ddp_model(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    """Detectron2's ``create_ddp_model``, also for CPU processes: it passes ``device_ids=[local_rank]``, which
    ``DistributedDataParallel`` refuses for a CPU module (gloo runs)."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        return DistributedDataParallel(model, **kwargs)
    return _D2_CREATE_DDP_MODEL(model, **kwargs)


_D2_CREATE_DDP_MODEL = d2_defaults.create_ddp_model


class GlobalNormalizerRetinaNet(RetinaNet):
    """Detectron2's RetinaNet whose loss normalizer (an EMA of the number of positive anchors) counts the anchors of
    all processes, as one process with the whole batch counts them (mmdetection's ``reduce_mean`` of the positives).

    Stock Detectron2 keeps a per-process EMA, so under DDP each process divides its loss by its own count and the
    averaged gradients differ from one process's; here the EMA tracks the global count and each process divides by
    global / world size, so the DDP gradient (the mean over processes) equals the one-process gradient."""

    def _ema_update(self, name: str, value: float, initial_value: float, momentum: float = 0.9) -> float:
        world = comm.get_world_size()
        if name != "loss_normalizer" or world == 1:
            return super()._ema_update(name, value, initial_value, momentum)
        total = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(total)
        return super()._ema_update(name, total.item(), initial_value, momentum) / world


class Trainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` (hooks, checkpoints, LR schedule, AMP) with COCO box evaluation; DDP also
    over gloo CPU processes, and ``SOLVER.AMP.PRECISION`` as the ``AMPTrainer``'s autocast dtype.

    What it adds for exact resumes and process-count-independent training:

    - the training batches come from :class:`detection.data.ResumableTrainLoader` (a function of data seed and
      iteration), which starts at the resumed iteration;
    - torch's generators are seeded from (data seed, iteration, rank) before each step (drop path draws);
    - the checkpoint's trainer state keeps the data seed and RetinaNet's loss normalizer (an EMA that Detectron2
      keeps outside the state dict, so a stock resume restarts it at 100);
    - RetinaNet's normalizer counts the positive anchors of all processes (:class:`GlobalNormalizerRetinaNet`).
    """

    def __init__(self, cfg: CfgNode):
        d2_defaults.create_ddp_model = _create_ddp_model  # DefaultTrainer.__init__ wraps the model with it
        try:
            super().__init__(cfg)
        finally:
            d2_defaults.create_ddp_model = _D2_CREATE_DDP_MODEL
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer.precision = AMP_DTYPES[cfg.SOLVER.AMP.PRECISION]

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        model = super().build_model(cfg)
        if cfg.MODEL.RETINANET.GLOBAL_LOSS_NORMALIZER and type(model) is RetinaNet:
            model.__class__ = GlobalNormalizerRetinaNet
        return model

    @property
    def _unwrapped_model(self) -> torch.nn.Module:
        model = self._trainer.model
        return model.module if isinstance(model, DistributedDataParallel) else model

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)  # a resumed checkpoint's trainer state goes through load_state_dict
        loader = self._trainer.data_loader
        if isinstance(loader, ResumableTrainLoader):
            loader.start_iter = self.start_iter

    def run_step(self) -> None:
        loader = self._trainer.data_loader
        if isinstance(loader, ResumableTrainLoader):  # DATALOADER.EXACT_RESUME
            torch.manual_seed(derived_seed(loader.seed, self.iter, comm.get_rank()))
        super().run_step()

    def state_dict(self) -> dict:
        state = super().state_dict()
        loader = self._trainer.data_loader
        state["genas"] = {"data_seed": getattr(loader, "seed", None),
                          "loss_normalizer": getattr(self._unwrapped_model, "loss_normalizer", None)}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("genas", None) or {}
        super().load_state_dict(state_dict)
        loader = self._trainer.data_loader
        if extra.get("data_seed") is not None and isinstance(loader, ResumableTrainLoader):
            loader.seed = int(extra["data_seed"])
        if extra.get("loss_normalizer") is not None:  # set by the first forward: absent in a new trainer
            self._unwrapped_model.loss_normalizer = extra["loss_normalizer"]

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> COCOEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # Detectron2's C++ COCOeval when its _C is built, else pycocotools (the evaluator picks)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    def train(self) -> Optional[Mapping[str, Any]]:
        """Train; return the results of the evaluation after the last iteration (None without DATASETS.TEST)."""
        super().train()
        return getattr(self, "_last_eval_results", None)  # set by DefaultTrainer's evaluation hook

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Iterable:
        loader = ResumableTrainLoader(cfg) if cfg.DATALOADER.EXACT_RESUME else super().build_train_loader(cfg)
        check_num_classes(cfg, cfg.DATASETS.TRAIN)  # the loader has read the annotations, so the classes are known
        return loader


def checked_config(args: argparse.Namespace) -> CfgNode:
    """The run's config with datasets registered; model name, datasets and GeNAS keys are checked (a
    :class:`~genas.core.errors.UsageError` otherwise) before anything is built or written."""
    cfg = build_config(args.config_file, args.opts)
    if args.eval_only:  # MODEL.WEIGHTS replaces every backbone tensor: the ImageNet file is neither read nor needed
        cfg.MODEL.GENAS.WEIGHTS = ""
    check_removed_keys(cfg)
    check_backbone_config(cfg.MODEL.GENAS.NAME, cfg.MODEL.GENAS.WEIGHTS)
    if cfg.SOLVER.AMP.PRECISION not in AMP_DTYPES or cfg.SOLVER.AMP.PRECISION is None:
        raise BackboneConfigError(f"SOLVER.AMP.PRECISION={cfg.SOLVER.AMP.PRECISION!r}: expected fp16 or bf16")
    if cfg.SOLVER.AMP.ENABLED and not torch.cuda.is_available():
        raise BackboneConfigError("SOLVER.AMP.ENABLED: Detectron2's AMPTrainer needs a CUDA device, and none is "
                                  "available; set SOLVER.AMP.ENABLED False")
    register_coco_format_datasets(cfg)
    check_datasets(list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN)))
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    """The frozen config of a run (:func:`checked_config`), then Detectron2's ``default_setup`` (logs, seed)."""
    cfg = checked_config(args)
    cuda_missing = cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available()
    if cuda_missing:
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    if cuda_missing:
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu)")
    return cfg


def _finite_or_none(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


def write_detection_results(cfg: CfgNode, results: Mapping[str, Any], weights: str,
                            iterations: Optional[int]) -> List[Path]:
    """Write the box metrics of each test dataset as a ``genas.core.results`` file in ``cfg.OUTPUT_DIR``."""
    if "bbox" in results:  # DefaultTrainer.test returns a single dataset's results without the dataset level
        results = {cfg.DATASETS.TEST[0]: results}
    paths = []
    for dataset, result in results.items():
        bbox = result["bbox"]
        name = "results_detection.json" if len(results) == 1 else f"results_detection_{dataset}.json"
        paths.append(write_result(
            Path(cfg.OUTPUT_DIR) / name, kind="detection", model=cfg.MODEL.GENAS.NAME,
            metrics={k: bbox[k] for k in DETECTION_METRICS},
            dataset=dataset, weights=weights, imagenet_weights=cfg.MODEL.GENAS.WEIGHTS or None,
            model_kwargs=dict(cfg.MODEL.GENAS.MODEL_KWARGS), iterations=iterations,
            per_class_AP={k[len("AP-"):]: _finite_or_none(v) for k, v in bbox.items() if k.startswith("AP-")},
        ))
    return paths


def main(args: argparse.Namespace) -> Mapping[str, Any]:
    """Train (then evaluate) or, with ``--eval-only``, evaluate ``MODEL.WEIGHTS``; return the evaluation results."""
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpoint = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        last = checkpoint.get("iteration")  # index of the checkpoint's last training iteration
        weights, iterations = cfg.MODEL.WEIGHTS, None if last is None else last + 1
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
        weights, iterations = os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), trainer.iter
    if comm.is_main_process():
        if results:
            for path in write_detection_results(cfg, results, weights, iterations):
                logger.info("results written to %s", path)
        else:
            logger.warning("no evaluation results (DATASETS.TEST is empty?): nothing written")
    return results


@usage_errors
def cli(argv: Optional[List[str]] = None) -> int:
    """``python detection/train_net.py``: Detectron2's argument parser and ``launch``; exit code 2 with one
    ``error:`` line for a config mistake (checked once here, before any worker process starts)."""
    args = default_argument_parser().parse_args(argv)
    checked_config(args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return 0


if __name__ == "__main__":
    sys.exit(cli())

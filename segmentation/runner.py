"""What ``segmentation/train.py`` and ``segmentation/test.py`` share: the MMSeg ``tools/`` arguments, config
preparation and checks (done before MMEngine builds anything), the runner, checkpoint loading rules and the
result file."""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import HistoryBuffer

from genas.core.errors import UsageError
from genas.core.results import write_result

if TYPE_CHECKING:
    from mmengine.runner import Runner

__all__ = ["SetupError", "RESULT_FILE", "METRICS", "add_run_args", "prepare_config", "check_data_roots",
           "build_runner", "mmengine_checkpoint_globals", "write_segmentation_result"]

RESULT_FILE = "results_segmentation.json"
METRICS = ("mIoU", "mAcc", "aAcc")


class SetupError(UsageError):
    """A config, data root or device that cannot run; the message says what, where and how to fix it."""


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The arguments train.py and test.py share (MMSeg's tools/ names)."""
    parser.add_argument("config", help="MMSeg config file, e.g. configs/segmentation/deeplabv3_genas_c100_*.py")
    parser.add_argument("--work-dir", help="folder for logs, checkpoints and results_segmentation.json "
                                           "(default: ./work_dirs/<config name>)")
    parser.add_argument("--data-root", help="Cityscapes folder (leftImg8bit/, gtFine/): sets the data_root of the "
                                            "train, val and test loaders")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config keys, e.g. model.backbone.weights=imagenet.pth "
                             "train_dataloader.dataset.data_root=data/cityscapes")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="'pytorch' for multi-GPU runs under torchrun")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda when available (cpu hides the GPUs from MMEngine)")
    parser.add_argument("--channels-last", action="store_true",
                        help="run the backbone in channels_last memory format (model.backbone.channels_last=True)")


def _select_device(device: str | None) -> None:
    """MMEngine picks its device when ``mmengine.device`` is first imported: hide the GPUs before that."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device == "cuda":
        if not torch.cuda.is_available():
            raise SetupError("--device cuda: no CUDA device is available; use --device cpu")


def _dataset_cfg(cfg: Config, loader: str) -> ConfigDict:
    dataset = cfg[loader].dataset
    while "dataset" in dataset:  # dataset wrappers (RepeatDataset, ...)
        dataset = dataset.dataset
    return dataset


def check_data_roots(cfg: Config, loaders: Sequence[str]) -> None:
    """Check that each loader's dataset folder has its image and label folders, with labels in them."""
    for loader in loaders:
        ds = _dataset_cfg(cfg, loader)
        where = f"{loader}.dataset.data_root={ds.get('data_root')!r}"
        root = Path(ds.get("data_root") or "")
        fix = ("pass --data-root PATH (or --cfg-options {loader}.dataset.data_root=PATH), a Cityscapes folder with "
               "leftImg8bit/ and gtFine/ holding *_gtFine_labelTrainIds.png (MMSeg's "
               "tools/dataset_converters/cityscapes.py writes them)").format(loader=loader)
        if not root.is_dir():
            raise SetupError(f"{where}: folder not found; {fix}")
        prefix = ds.get("data_prefix", {})
        for key in ("img_path", "seg_map_path"):
            sub = root / prefix.get(key, "")
            if not sub.is_dir():
                raise SetupError(f"{where}: {key} folder {str(sub)!r} not found; {fix}")
        suffix = ds.get("seg_map_suffix", "_gtFine_labelTrainIds.png")
        labels = root / prefix.get("seg_map_path", "")
        if next(labels.rglob(f"*{suffix}"), None) is None:
            raise SetupError(f"{where}: no *{suffix} label files under {str(labels)!r}; {fix}")


def prepare_config(args: argparse.Namespace, loaders: Sequence[str]) -> Config:
    """Load the config with the command line applied and check it can run, before MMEngine builds anything."""
    _select_device(args.device)
    if not os.path.isfile(args.config):
        raise SetupError(f"config {args.config!r} not found; the recipes are configs/segmentation/deeplabv3_*.py")
    cfg = Config.fromfile(args.config)
    if args.data_root:
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            if cfg.get(loader):
                _dataset_cfg(cfg, loader).data_root = args.data_root
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or os.path.join(
        "work_dirs", os.path.splitext(os.path.basename(args.config))[0])
    if args.channels_last:
        cfg.model.backbone.channels_last = True
    if args.launcher == "pytorch" and (args.device == "cpu" or not torch.cuda.is_available()):
        _cpu_processes(cfg)
    from backbones.names import ModelNameError, check_model_name
    try:
        check_model_name(cfg.model.backbone.model_name, "model.backbone.model_name")
    except ModelNameError as e:
        raise SetupError(f"{args.config}: {e}") from None
    check_data_roots(cfg, loaders)
    for loader in loaders:
        evaluator = loader.replace("_dataloader", "_evaluator")
        if evaluator in cfg and (cfg[evaluator].get("type") != "IoUMetric"
                                 or "mIoU" not in cfg[evaluator].get("iou_metrics", [])):
            raise SetupError(f"{evaluator}={cfg[evaluator]}: the result file needs {'/'.join(METRICS)}; use "
                             f"dict(type='IoUMetric', iou_metrics=['mIoU'])")
    return cfg


def _revert_sync_bn(node: object) -> None:
    if isinstance(node, dict):
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
        for value in node.values():
            _revert_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _revert_sync_bn(value)


def _cpu_processes(cfg: Config) -> None:
    """``--launcher pytorch`` without GPUs (torchrun of CPU processes): gloo instead of NCCL, plain BN instead of
    SyncBN (which needs GPUs), DDP without ``device_ids``. MMEngine 0.10.7 would call ``torch.cuda.set_device`` and
    pass ``device_ids=[LOCAL_RANK]``; :func:`build_runner` joins the gloo group first, so MMEngine does neither."""
    cfg.setdefault("env_cfg", ConfigDict()).setdefault("dist_cfg", ConfigDict())["backend"] = "gloo"
    cfg.sync_bn = None
    _revert_sync_bn(cfg.model)
    if cfg.get("model_wrapper_cfg") is None:
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
                                     find_unused_parameters=cfg.get("find_unused_parameters", False))


def _history_buffer_getattr(obj: object, name: str) -> object:
    """``getattr`` as MMEngine checkpoints need it: a statistics method of ``HistoryBuffer``, nothing else."""
    allowed = getattr(HistoryBuffer, "_statistics_methods", {})
    if obj is not HistoryBuffer or name not in allowed:
        raise pickle.UnpicklingError(f"checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer's "
                                     f"statistics methods {sorted(allowed)} are allowed")
    return getattr(HistoryBuffer, name)


def mmengine_checkpoint_globals() -> contextlib.AbstractContextManager:
    """Let ``torch.load(weights_only=True)`` read MMEngine checkpoints (resume, test, ``mmseg.apis.init_model``).

    MMEngine 0.10.7 calls ``torch.load`` with torch's default ``weights_only=True`` (torch >= 2.6), but its
    checkpoints carry the message hub: ``HistoryBuffer`` objects holding numpy arrays and scalars, whose statistics
    methods pickle as ``getattr(HistoryBuffer, 'min')`` (open-mmlab/mmengine#1655). Exactly these globals are allowed
    while the context is open, and the pickle's ``builtins.getattr`` is replaced by :func:`_history_buffer_getattr`,
    which resolves only those statistics methods: the builtin ``getattr`` itself is never allowed.
    """
    return torch.serialization.safe_globals([
        HistoryBuffer, np.ndarray, np.dtype, np._core.multiarray._reconstruct, np._core.multiarray.scalar,
        (_history_buffer_getattr, "builtins.getattr"),
        np.dtypes.Float64DType, np.dtypes.Float32DType, np.dtypes.Int64DType, np.dtypes.Int32DType])


def build_runner(cfg: Config) -> "Runner":
    from mmengine.runner import Runner
    cpu = os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not torch.cuda.is_available()
    if cfg.launcher == "pytorch" and cpu and cfg.get("env_cfg", {}).get("dist_cfg", {}).get("backend") == "gloo":
        from genas.core.distributed import init_distributed
        init_distributed("cpu")  # the torchrun group over gloo; MMEngine then skips its own (CUDA) init
    return Runner.from_cfg(cfg)


def write_segmentation_result(runner: "Runner", metrics: Mapping[str, float], loader: str,
                              checkpoint: str | None, iterations: int | None) -> Path | None:
    """Write ``<work_dir>/results_segmentation.json`` on the main process; return its path (None elsewhere)."""
    from mmengine.dist import is_main_process
    if not is_main_process():
        return None
    ds = _dataset_cfg(runner.cfg, loader)
    return write_result(
        Path(runner.work_dir) / RESULT_FILE, kind="segmentation", model=runner.cfg.model.backbone.model_name,
        metrics={m: metrics[m] for m in METRICS},
        dataset=ds.type, data_root=os.path.abspath(ds.data_root), split=ds.get("data_prefix", {}).get("img_path"),
        checkpoint=checkpoint, iterations=iterations, config=runner.cfg.filename,
        crop_size=runner.cfg.get("crop_size"))

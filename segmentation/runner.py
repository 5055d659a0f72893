"""What ``segmentation/train.py`` and ``segmentation/test.py`` share: the MMSeg ``tools/`` arguments, config
preparation and checks (done before MMEngine builds anything), the runner, checkpoint loading rules and the
result file."""
from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import HistoryBuffer

from genas.core.distributed import derived_seed
from genas.core.errors import UsageError
from genas.core.results import write_result

if TYPE_CHECKING:
    from mmengine.runner import Runner

__all__ = ["SetupError", "RESULT_FILE", "METRICS", "HISTORY_BUFFER_STATISTICS", "add_run_args", "prepare_config",
           "check_data_roots", "check_cfg_options", "check_model_builds", "build_runner", "reseed_each_iteration_hook",
           "mmengine_checkpoint_globals", "train_crop_size", "write_segmentation_result"]

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
    check_cfg_options(cfg, args.cfg_options)
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
    check_model_builds(cfg)
    return cfg


#: which mmseg registry builds a config dict, by the name of the key holding it (``default_hooks.<name>`` are hooks)
_REGISTRY_OF_KEY = {"train_cfg": "LOOPS", "val_cfg": "LOOPS", "test_cfg": "LOOPS", "optim_wrapper": "OPTIM_WRAPPERS",
                    "optimizer": "OPTIMIZERS", "param_scheduler": "PARAM_SCHEDULERS", "custom_hooks": "HOOKS",
                    "default_hooks": "HOOKS", "dataset": "DATASETS", "sampler": "DATA_SAMPLERS",
                    "pipeline": "TRANSFORMS", "val_evaluator": "METRICS", "test_evaluator": "METRICS",
                    "visualizer": "VISUALIZERS", "log_processor": "LOG_PROCESSORS"}
#: keys of a ``*_dataloader`` dict that MMEngine's ``Runner.build_dataloader`` takes besides ``DataLoader``'s own
_DATALOADER_KEYS = {"dataset", "sampler", "batch_sampler", "collate_fn", "worker_init_fn", "num_batch_per_epoch"}


def _accepted_keywords(cls: type) -> set[str] | None:
    """The keywords ``cls(...)`` accepts: its ``__init__`` parameters, following ``**kwargs`` up the bases that
    define an ``__init__`` (assumed to be where they go); ``None`` when some ``**kwargs`` leads nowhere known."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        if klass is object:
            return names
        try:
            params = inspect.signature(klass.__init__).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def _component_class(path: Sequence[str], node: Mapping) -> type | None:
    """The class that the config dict ``node`` at ``path`` (its keys from the root) builds, when it can be told."""
    if path and path[0] == "model":
        return None  # the model is built once on the meta device instead (check_model_builds)
    if len(path) == 1 and path[0].endswith("_dataloader"):
        from torch.utils.data import DataLoader
        return DataLoader
    named = [p for p in path if not p.isdigit()]
    if not named or "type" not in node or not isinstance(node["type"], str):
        return None
    key = named[-1]
    if key in ("train_cfg", "val_cfg", "test_cfg") and len(path) != 1:
        return None
    registry = _REGISTRY_OF_KEY.get("default_hooks" if len(named) > 1 and named[-2] == "default_hooks" else key)
    if registry is None:
        return None
    import mmseg.registry
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    found = getattr(mmseg.registry, registry).get(node["type"])
    return found if isinstance(found, type) else None


def check_cfg_options(cfg: Config, options: Mapping[str, object]) -> None:
    """Refuse a ``--cfg-options`` key that the config does not have and that the component it configures does
    not take (``train_cfg.max_iter=6`` for ``max_iters``): a :class:`SetupError` naming the keys it takes, before
    anything is built or written. Keys under ``model`` are checked by building the model (:func:`check_model_builds`);
    a new key whose component passes ``**kwargs`` on to something unknown is let through."""
    for option in options:
        parts = option.split(".")
        node: object = dict(cfg.items())
        for depth, part in enumerate(parts):
            if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if isinstance(node, Mapping) and part in node:
                node = node[part]
                continue
            if not isinstance(node, Mapping):
                break  # a list index out of range or a key under a value: MMEngine's merge says so
            cls = _component_class(parts[:depth], node)
            accepted = _accepted_keywords(cls) if cls is not None else None
            if accepted is None:
                break
            accepted -= {"runner", "dataloader", "evaluator", "params"}  # given by MMEngine, not by the config
            if len(parts[:depth]) == 1 and parts[0].endswith("_dataloader"):
                accepted |= _DATALOADER_KEYS
            else:
                accepted |= {"type"} | ({"by_epoch"} if parts[0].endswith("_cfg") else set())
            if part not in accepted:
                where = ".".join(parts[:depth])
                raise SetupError(f"--cfg-options {option}: {where} ({cls.__name__}) has no option {part!r}; it takes "
                                 f"{', '.join(sorted(accepted))}")
            break


def check_model_builds(cfg: Config) -> None:
    """Build ``cfg.model`` once on the meta device (no memory, no weights read) so that an option its classes do not
    take (``model.backbone.foo=1``) or a backbone setting they refuse is one :class:`SetupError` before the runner
    creates the work dir. The ImageNet weights file is only checked to exist (by the backbone), not read."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    model_cfg = copy.deepcopy(cfg.model)
    _revert_sync_bn(model_cfg)
    backbone = model_cfg.get("backbone", {})
    weights = backbone.get("weights") if isinstance(backbone, Mapping) else None
    if weights:
        if not os.path.isfile(weights):
            raise SetupError(f"model.backbone.weights={weights!r}: ImageNet weights file not found; give the path of "
                             f"the backbone's ImageNet checkpoint, or '' for random init")
        backbone["weights"] = ""
    init_default_scope(cfg.get("default_scope", "mmseg"))
    try:
        try:
            with torch.device("meta"):
                MODELS.build(copy.deepcopy(model_cfg))
        except (RuntimeError, NotImplementedError):  # a constructor that needs real tensors (.item(), .tolist())
            MODELS.build(copy.deepcopy(model_cfg))
    except UsageError:
        raise
    except TypeError as e:
        raise SetupError(f"model: {e}") from None


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


#: the statistics methods every ``HistoryBuffer`` registers when it is created (MMEngine 0.10.7
#: ``HistoryBuffer._set_default_statistics``): the class-level registry ``_statistics_methods`` stays empty until a
#: first buffer exists, which in a fresh process (``test.py``, ``train.py --resume``) is after the checkpoint is read
HISTORY_BUFFER_STATISTICS = ("current", "max", "mean", "min")


def _history_buffer_getattr(obj: object, name: str) -> object:
    """``getattr`` as MMEngine checkpoints need it: a statistics method of ``HistoryBuffer``, nothing else."""
    allowed = set(HISTORY_BUFFER_STATISTICS) | set(getattr(HistoryBuffer, "_statistics_methods", {}))
    method = getattr(HistoryBuffer, name, None) if obj is HistoryBuffer and name in allowed else None
    if not callable(method):
        raise pickle.UnpicklingError(f"checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer's "
                                     f"statistics methods {sorted(allowed)} are allowed")
    return method


def mmengine_checkpoint_globals() -> contextlib.AbstractContextManager:
    """Let ``torch.load(weights_only=True)`` read MMEngine checkpoints (resume, test, ``mmseg.apis.init_model``).

    MMEngine 0.10.7 calls ``torch.load`` with torch's default ``weights_only=True`` (torch >= 2.6), but its
    checkpoints carry the message hub: ``HistoryBuffer`` objects holding numpy arrays and scalars, whose statistics
    methods pickle as ``getattr(HistoryBuffer, 'min')`` (open-mmlab/mmengine#1655). Exactly these globals are allowed
    while the context is open, and the pickle's ``builtins.getattr`` is replaced by :func:`_history_buffer_getattr`,
    which resolves only those statistics methods (:data:`HISTORY_BUFFER_STATISTICS` and any registered with
    ``HistoryBuffer.register_statistics``; the class registry alone is empty in a process that has not created a
    buffer yet): the builtin ``getattr`` itself is never allowed. MMSeg's own ``tools/test.py`` can use it too
    (``with mmengine_checkpoint_globals(): runner.test()``).
    """
    return torch.serialization.safe_globals([
        HistoryBuffer, np.ndarray, np.dtype, np._core.multiarray._reconstruct, np._core.multiarray.scalar,
        (_history_buffer_getattr, "builtins.getattr"),
        np.dtypes.Float64DType, np.dtypes.Float32DType, np.dtypes.Int64DType, np.dtypes.Int32DType])


def reseed_each_iteration_hook():
    """A hook seeding torch's generators (CPU and CUDA) from (run seed, iteration) before each training iteration,
    so that the random draws of a step (the heads' dropout, drop path) do not depend on how many steps this process
    ran before it: a run resumed at iteration k draws what the uninterrupted run draws there. (MMEngine's resume
    keeps the process's fresh generator; the data pipeline's numpy draws are replayed by its data skipping.)

    Built on demand: ``mmengine.hooks`` imports ``mmengine.device``, which fixes the device on import."""
    from mmengine.hooks import Hook

    class ReseedEachIteration(Hook):
        priority = "VERY_HIGH"

        def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
            torch.manual_seed(derived_seed(runner.seed, runner.iter))

    return ReseedEachIteration()


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
        crop_size=train_crop_size(runner.cfg))


def train_crop_size(cfg: Config) -> list[int] | None:
    """The (height, width) of the training crops as the run's config makes them: the ``crop_size`` of the train
    pipeline's ``RandomCrop`` after ``--cfg-options`` (not the config file's top-level ``crop_size`` variable, which
    was substituted when the file was read); ``None`` when the pipeline crops nothing."""
    if not cfg.get("train_dataloader"):
        return None
    crops = [t.get("crop_size") for t in _dataset_cfg(cfg, "train_dataloader").get("pipeline", [])
             if isinstance(t, Mapping) and t.get("type") == "RandomCrop"]
    if not crops:
        return None
    crop = crops[-1]
    return [int(crop), int(crop)] if isinstance(crop, (int, float)) else [int(v) for v in crop]

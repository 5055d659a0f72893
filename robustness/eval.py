"""Evaluate a timm ImageNet-1k classifier under distribution shift (paper Table 4, ImageNet-O, and the wider
robustness benchmarks: ImageNet-R, -Sketch, -C, ReaL).

    python robustness/eval.py --set imagenet-a --data /data/imagenet-a --model genas_c100 \
        --checkpoint genas_c100.pth --out runs/robustness/genas_c100_imagenet-a.json
    torchrun --nproc_per_node 8 robustness/eval.py --set imagenet-c --data /data/imagenet-c ...

Sets and metrics (percent, except NLL in nats):

- ``imagenet`` (val, wnid folders), ``imagenet-v2`` (folders 0..999 = class index; matched-frequency,
  threshold0.7 and top-images alike), ``imagenet-sketch`` (the 1000 wnid folders of ``sketch/``): top1, top5.
- ``imagenet-a`` / ``imagenet-r`` (200 wnid folders each): top1, top5 with the logits restricted to the 200
  classes, in 1k order (timm's lists).
- ``imagenet-real``: ImageNet val (wnid folders, original file names) scored with the ReaL labels: ``real_top1``
  / ``real_top5`` = a top-k prediction is in the image's ReaL label set, over the images whose set is not empty;
  ``top1`` / ``top5`` with the original labels. ECE uses ReaL correctness, NLL the original label.
- ``imagenet-c`` (``<corruption>/<severity>/<wnid>/``): ``error/<c>/<s>`` top-1 error per corruption and
  severity, ``error/<c>`` its mean over the severities, ``ce/<c>`` and ``mce`` (15 standard corruptions, AlexNet
  reference), ``relative_ce/<c>`` / ``relative_mce`` when ``--clean-result`` gives the model's clean error,
  ``mean_error`` (standard corruptions) and ``extra_mean_error`` (the 4 extra ones, never in mCE). A partial
  release works and the result names the missing corruptions; ``--corruptions`` / ``--severities`` select.
- ``imagenet-o``: OOD detection (AUPR, AUROC, FPR@95) of the ImageNet-O images against the ImageNet val images
  (``--in-dist``) of the same 200 classes, logits restricted to those classes, the negative maximum softmax as
  anomaly score; ECE and NLL on the in-distribution side.

Every set also reports ``ece`` (15 equal-width bins of the top-1 confidence) and ``nll``. Preprocessing is the
model's own ``pretrained_cfg`` (timm data config), overridable by flags. Under ``torchrun`` each rank reads a
disjoint shard of the images (every ``world_size``-th, no padding) on its ``LOCAL_RANK`` device, the per-image
outcomes are gathered, and rank 0 computes the metrics from all of them in image order, so every number equals
the one-process number; rank 0 alone writes. The result is one ``genas.core.results`` JSON file.

Inference settings (measured for ``genas_c100`` at 224 px, batch 128, on one H200; ``../shared/reference``): the
default is the fastest measured setting, eager fp32 in NCHW (7,799 images/s; cuDNN autotuning on, as measured).
``--amp bf16`` (0.48x) and ``--channels-last`` (0.47x; both 0.55x) were measured *slower* there and stay opt-in.
``--compile`` (``torch.compile`` of the model, fp32, inductor) ran 1.27x faster (9,871 images/s) after a one-off
compilation of about 39 s, so it pays off only from about 1.4 million images at that speed (ImageNet-C in full,
not one 50,000-image set); the last short batch is padded to the batch size so that one graph serves every batch.
Its logits equal eager ones to float rounding (``tests/test_robustness.py``: rtol 1e-4, atol 1e-5).
"""
from __future__ import annotations

import argparse
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import timm
import torch
import torch.distributed as dist
from timm.data import create_transform, resolve_model_data_config
from tqdm import tqdm

import backbones  # noqa: F401  (registers the genas_* timm models)
from backbones.names import check_model_name
from genas.core.distributed import AMP_DTYPES, cleanup_distributed, init_distributed
from genas.core.errors import UsageError, usage_errors
from genas.core.io import sha256_of
from genas.core.results import read_result, write_result
from robustness.layouts import (CORRUPTIONS, EXTRA_CORRUPTIONS, SETS, SEVERITIES, Batch, ImageSamples, LayoutError,
                                collate_samples, indices_in_1k, layout_for, real_label_sets, scan_imagenet_c,
                                scan_images, subset_wnids, timm_subset_indices)
from robustness.metrics import (alexnet_reference, corruption_errors, expected_calibration_error,
                                ood_detection_metrics, topk_hits)

__all__ = ["EvalError", "OptionError", "ModelLoadError", "UnreadableImageError", "InferenceOptions", "Prepared",
           "Records", "Outcome", "build_model", "build_transform", "prepare_samples", "evaluate", "compute_metrics",
           "resolve_eval_device", "inference_options", "main"]

V2_VARIANTS = ("matched-frequency", "threshold0.7", "top-images")
OOD = -1  # target of an ImageNet-O image (in-distribution images keep their class)


class EvalError(UsageError):
    """Base of the evaluator's user-fixable errors (one stderr line, exit 2)."""


class OptionError(EvalError):
    """A command-line option that cannot work (device, set-specific flags, clean result)."""


class ModelLoadError(EvalError):
    """Unknown model name, or a checkpoint that does not load into the model."""


class UnreadableImageError(EvalError):
    """An image PIL cannot decode, without --skip-bad."""


#: ``torch.compile`` backend of ``--compile`` (a fast test swaps in dynamo's ``eager`` backend: the same graph capture,
#: no code generation, which takes minutes on a small CPU)
COMPILE_BACKEND = "inductor"


@dataclass(frozen=True)
class InferenceOptions:
    """How the model runs. The defaults are the fastest measured setting on a GPU (eager fp32, NCHW; see the module
    docstring); ``compile`` wraps the model in ``torch.compile`` (fp32, one static-shape graph)."""
    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = True  # CUDA only: cuDNN picks the fastest convolution algorithms (as measured)
    batch_size: int = 64
    workers: int = 4
    skip_bad: bool = False
    progress: bool = True


@dataclass
class Prepared:
    """A checked set: samples ``(path, target)`` (target = class position, :data:`OOD` for ImageNet-O images),
    the 1k logits kept (None = all) and what the set's metrics need besides."""
    set_name: str
    samples: list[tuple[str, int]]
    keep: list[int] | None = None
    group_of: list[int] | None = None               # imagenet-c: group of each sample
    groups: list[tuple[str, int]] = field(default_factory=list)  # imagenet-c: (corruption, severity)
    real: list[tuple[int, ...]] | None = None        # imagenet-real: ReaL label set of each sample
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Records:
    """Per-image outcomes by sample index (what ranks gather); NaN / False where an image was not scored."""
    done: np.ndarray
    top1: np.ndarray
    top5: np.ndarray
    confidence: np.ndarray
    nll: np.ndarray
    real1: np.ndarray
    real5: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "Records":
        return cls(np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool), np.full(n, np.nan, np.float32),
                   np.full(n, np.nan), np.zeros(n, bool), np.zeros(n, bool))

    def merge(self, other: "Records") -> None:
        idx = np.flatnonzero(other.done)
        for name in self.__dataclass_fields__:
            getattr(self, name)[idx] = getattr(other, name)[idx]


@dataclass
class Outcome:
    metrics: dict[str, float]
    num_images: int                                   # images that entered the metrics
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable images
    seconds: float = 0.0


def build_model(name: str, checkpoint: str | None = None, pretrained: bool = False) -> torch.nn.Module:
    """A 1000-class timm model; ``checkpoint`` loads through timm's pretrained-file route, which unwraps
    ``state_dict``/``model`` keys (EMA weights first when the file has them) and ``module.`` prefixes, loads
    with ``weights_only=True`` and applies the model family's own checkpoint filter."""
    try:
        check_model_name(name, "--model")
    except UsageError as e:
        raise ModelLoadError(str(e)) from None
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ModelLoadError(f"checkpoint not found: {checkpoint}")
    source = f"checkpoint {checkpoint}" if checkpoint else "timm's pretrained weights"
    try:
        if checkpoint is None:
            return timm.create_model(name, pretrained=pretrained, num_classes=1000)
        return timm.create_model(name, pretrained=True, num_classes=1000,
                                 pretrained_cfg_overlay=dict(file=str(checkpoint), source=""))
    except (RuntimeError, OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise ModelLoadError(f"cannot load {source} into {name}: {e}") from None


def build_transform(model: torch.nn.Module, overrides: dict[str, Any] | None = None
                    ) -> tuple[Callable, dict[str, Any]]:
    """Eval transform from the model's pretrained_cfg (GeNAS models declare no mean/std normalisation)."""
    data_config = resolve_model_data_config(model, args={k: v for k, v in (overrides or {}).items()
                                                         if v is not None})
    return create_transform(**data_config, is_training=False), data_config


def prepare_samples(set_name: str, data: str | Path, in_dist: str | Path | None = None,
                    corruptions: Sequence[str] | None = None, severities: Sequence[int] | None = None) -> Prepared:
    """Check the layout(s) and list the samples (no image is opened)."""
    if set_name == "imagenet-o":
        if in_dist is None:
            raise LayoutError("imagenet-o: --in-dist is required: an ImageNet val root (wnid folders) whose "
                              "200 ImageNet-O class folders give the in-distribution images")
        ood = scan_images(data, layout_for(set_name), set_name)
        ind = scan_images(in_dist, layout_for(set_name, in_distribution=True), "imagenet-o --in-dist")
        return Prepared(set_name, ind + [(p, OOD) for p, _ in ood], indices_in_1k(subset_wnids("imagenet_o")))
    if set_name == "imagenet-c":
        corruptions = list(corruptions or CORRUPTIONS + EXTRA_CORRUPTIONS)
        severities = sorted(severities or SEVERITIES)
        samples, group_of, groups, missing = scan_imagenet_c(data, corruptions, severities)
        return Prepared(set_name, samples, None, group_of, groups,
                        info={"corruptions": sorted({c for c, _ in groups}, key=corruptions.index),
                              "missing_corruptions": missing, "severities": severities})
    samples = scan_images(data, layout_for(set_name), set_name)
    if set_name in ("imagenet-a", "imagenet-r"):
        return Prepared(set_name, samples, list(timm_subset_indices(set_name.replace("-", "_"))))
    if set_name == "imagenet-real":
        return Prepared(set_name, samples, real=real_label_sets(samples))
    return Prepared(set_name, samples)


def _score_batch(logits: torch.Tensor, indices: torch.Tensor, prepared: Prepared, records: Records) -> None:
    """Fill ``records`` for one batch of (restricted, float32 CPU) logits."""
    targets = torch.tensor([prepared.samples[i][1] for i in indices.tolist()], dtype=torch.long)
    probs = logits.softmax(dim=1)
    idx = indices.numpy()
    records.done[idx] = True
    records.confidence[idx] = probs.amax(dim=1).numpy()
    labelled = targets >= 0
    if labelled.any():
        hits = topk_hits(logits[labelled], targets[labelled], ks=(1, 5))
        lab_idx = idx[labelled.numpy()]
        records.top1[lab_idx] = hits[1].numpy()
        records.top5[lab_idx] = hits[5].numpy()
        log_probs = logits[labelled].double().log_softmax(dim=1)
        records.nll[lab_idx] = (-log_probs.gather(1, targets[labelled].view(-1, 1))[:, 0]).numpy()
    if prepared.real is not None:
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices.tolist()
        for row, i in enumerate(idx):
            labels = set(prepared.real[i])
            records.real1[i] = top5[row][0] in labels
            records.real5[i] = any(p in labels for p in top5[row])


def _run(model: torch.nn.Module, prepared: Prepared, transform: Callable, shard: Sequence[int],
         opts: InferenceOptions, records: Records, skipped: list[tuple[str, str]]) -> None:
    cudnn = torch.backends.cudnn
    benchmark = cudnn.benchmark
    if opts.device.type == "cuda":
        cudnn.benchmark = opts.cudnn_benchmark
    try:
        _run_batches(model, prepared, transform, shard, opts, records, skipped)
    finally:
        cudnn.benchmark = benchmark


def _run_batches(model: torch.nn.Module, prepared: Prepared, transform: Callable, shard: Sequence[int],
                 opts: InferenceOptions, records: Records, skipped: list[tuple[str, str]]) -> None:
    loader = torch.utils.data.DataLoader(ImageSamples(prepared.samples, transform, shard), batch_size=opts.batch_size,
                                         shuffle=False, num_workers=opts.workers, collate_fn=collate_samples,
                                         pin_memory=opts.device.type == "cuda")
    keep_index = None if prepared.keep is None else torch.tensor(prepared.keep, device=opts.device)
    model = model.to(opts.device).eval()
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model, backend=COMPILE_BACKEND, dynamic=False) if opts.compile else model
    batch: Batch
    # compiled: no_grad rather than inference_mode, whose tensors carry other dispatch keys than the loader's
    # (a guard mismatch, i.e. a second compilation, on the first padded or device-copied batch)
    grad_off = torch.no_grad() if opts.compile else torch.inference_mode()
    with grad_off, tqdm(total=len(shard), desc=prepared.set_name, unit="img", disable=not opts.progress) as bar:
        for batch in loader:
            bar.update(len(batch.paths) + len(batch.unreadable))
            if batch.unreadable and not opts.skip_bad:
                path, reason = batch.unreadable[0]
                raise UnreadableImageError(f"cannot read image {path} ({reason}); fix or remove it, or pass "
                                           f"--skip-bad to skip and count unreadable images")
            skipped.extend(batch.unreadable)
            if batch.images is None:
                continue
            images = batch.images.to(opts.device, non_blocking=True)
            n = images.shape[0]
            if opts.compile and n < opts.batch_size:  # one static graph: pad a short batch (eval: rows independent)
                images = torch.cat([images, images[-1:].expand(opts.batch_size - n, *images.shape[1:])])
            if opts.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(opts.device.type, dtype=opts.amp_dtype, enabled=opts.amp_dtype is not None):
                logits = forward(images)[:n]
            if keep_index is not None:
                logits = logits.index_select(1, keep_index)
            _score_batch(logits.float().cpu(), batch.indices, prepared, records)


def evaluate(model: torch.nn.Module, prepared: Prepared, transform: Callable,
             opts: InferenceOptions = InferenceOptions(), clean_error: float | None = None) -> Outcome:
    """Run the model over the prepared samples and compute the set's metrics.

    In a ``torch.distributed`` process group each rank scores every ``world_size``-th image and the records are
    gathered before any metric is computed, so every rank returns the one-process outcome.
    """
    start = time.perf_counter()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    records = Records.empty(len(prepared.samples))
    skipped: list[tuple[str, str]] = []
    error: str | None = None
    try:
        _run(model, prepared, transform, range(rank, len(prepared.samples), world), opts, records, skipped)
    except UnreadableImageError as e:
        if world == 1:
            raise
        error = str(e)  # tell the other ranks before raising, so none waits forever in the gather
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (records, skipped, error))
        records, skipped = Records.empty(len(prepared.samples)), []
        errors = []
        for part, part_skipped, part_error in gathered:
            records.merge(part)
            skipped += part_skipped
            errors += [part_error] if part_error else []
        if errors:
            raise UnreadableImageError(errors[0])
        skipped.sort(key=lambda item: item[0])
    metrics, counts = compute_metrics(prepared, records, skipped, clean_error)
    return Outcome(metrics, int(records.done.sum()), counts, skipped, time.perf_counter() - start)


def _accuracy(records: Records, mask: np.ndarray) -> dict[str, float]:
    return {"top1": 100.0 * float(records.top1[mask].mean()), "top5": 100.0 * float(records.top5[mask].mean())}


def _calibration(records: Records, mask: np.ndarray, correct: np.ndarray | None = None) -> dict[str, float]:
    correct = records.top1 if correct is None else correct
    return {"ece": expected_calibration_error(records.confidence[mask], correct[mask]),
            "nll": float(records.nll[mask].mean())}


def compute_metrics(prepared: Prepared, records: Records, skipped: Sequence[tuple[str, str]] = (),
                    clean_error: float | None = None) -> tuple[dict[str, float], dict[str, int]]:
    """The set's metrics from all per-image records (in sample order: the same numbers whatever the sharding)."""
    name, done = prepared.set_name, records.done
    if not done.any():
        raise LayoutError(f"{name}: all {len(skipped)} images were unreadable")
    targets = np.array([t for _, t in prepared.samples])
    if name == "imagenet-o":
        is_ood = targets == OOD
        ind, ood = done & ~is_ood, done & is_ood
        counts = {"num_in_distribution": int(ind.sum()), "num_ood": int(ood.sum())}
        if not counts["num_in_distribution"] or not counts["num_ood"]:
            raise LayoutError(f"imagenet-o: no readable {'in-distribution' if ood.any() else 'OOD'} images "
                              f"({len(skipped)} unreadable skipped)")
        metrics = ood_detection_metrics(-records.confidence[done].astype(np.float64), is_ood[done])
        return {**metrics, **_calibration(records, ind)}, counts
    if name == "imagenet-real":
        has_real = done & np.array([len(r) > 0 for r in prepared.real], dtype=bool)
        if not has_real.any():
            raise LayoutError("imagenet-real: none of the readable images has a ReaL label")
        metrics = {"real_top1": 100.0 * float(records.real1[has_real].mean()),
                   "real_top5": 100.0 * float(records.real5[has_real].mean()), **_accuracy(records, done)}
        metrics["ece"] = expected_calibration_error(records.confidence[has_real], records.real1[has_real])
        metrics["nll"] = float(records.nll[done].mean())
        return metrics, {"num_real": int(has_real.sum()), "num_real_excluded": int((done & ~has_real).sum())}
    if name == "imagenet-c":
        group_of = np.asarray(prepared.group_of)
        errors: dict[tuple[str, int], float] = {}
        metrics = {}
        for g, (c, s) in enumerate(prepared.groups):
            mask = done & (group_of == g)
            if mask.any():
                errors[(c, s)] = metrics[f"error/{c}/{s}"] = 100.0 - 100.0 * float(records.top1[mask].mean())
        corruptions = list(dict.fromkeys(c for c, _ in errors))
        for c in corruptions:
            metrics[f"error/{c}"] = float(np.mean([e for (cc, _), e in errors.items() if cc == c]))
        metrics.update(corruption_errors(errors, corruptions, clean_error))
        for key, names in (("mean_error", CORRUPTIONS), ("extra_mean_error", EXTRA_CORRUPTIONS)):
            present = [metrics[f"error/{c}"] for c in corruptions if c in names]
            if present:
                metrics[key] = float(np.mean(present))
        return {**metrics, **_calibration(records, done)}, {}
    return {**_accuracy(records, done), **_calibration(records, done)}, {}


def v2_variant(root: str | Path) -> str:
    """Which ImageNetV2 test set a root is, from its release folder name (they share one layout)."""
    return next((v for v in V2_VARIANTS if v in Path(root).resolve().name), "unknown")


def resolve_eval_device(name: str) -> torch.device:
    """``--device`` as a torch device, or an :class:`OptionError` saying what would work."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise OptionError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:N): "
                          f"{str(e).splitlines()[0]}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type not in ("cpu", "mps"):
        raise OptionError(f"--device {name}: only cpu and cuda devices are supported")
    return device


def _clean_error(path: str | None, model: str) -> float | None:
    """The model's clean top-1 error (percent) from a ``--set imagenet`` result, for the relative mCE."""
    if path is None:
        return None
    result = read_result(path)
    if result["kind"] != "robustness" or result["meta"].get("set") != "imagenet" or \
            not isinstance(result["metrics"].get("top1"), (int, float)):
        raise OptionError(f"--clean-result {path}: expected the result of robustness/eval.py --set imagenet "
                          f"(with top1), got kind {result['kind']!r}, set {result['meta'].get('set')!r}")
    if result["model"] != model:
        raise OptionError(f"--clean-result {path} is for model {result['model']!r}, not {model!r}")
    return 100.0 - float(result["metrics"]["top1"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--set", required=True, choices=SETS, help="evaluation set (folder layout and metrics)")
    p.add_argument("--data", required=True, help="root of the set's class folders")
    p.add_argument("--in-dist", help="imagenet-o only: ImageNet val root (wnid folders) for the in-distribution side")
    p.add_argument("--corruptions", nargs="+", metavar="NAME",
                   help="imagenet-c only: corruptions to evaluate (default: the 15 standard and 4 extra ones)")
    p.add_argument("--severities", nargs="+", type=int, metavar="S", help="imagenet-c only: severities (default 1-5; "
                                                                          "CE and mCE need all five)")
    p.add_argument("--clean-result", help="imagenet-c only: the model's --set imagenet result JSON, for the "
                                          "relative CE / mCE")
    p.add_argument("--model", required=True, help="timm model name, e.g. genas_c100 or resnet50")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="local weights file (timm/torch checkpoint, loaded weights_only)")
    weights.add_argument("--pretrained", action="store_true", help="timm's own pretrained weights (hub/cache)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda (under torchrun: each rank's LOCAL_RANK GPU) or cuda:N")
    p.add_argument("--amp", nargs="?", const="bf16", choices=sorted(k for k in AMP_DTYPES if k),
                   help="autocast dtype (--amp alone = bf16); default fp32, the fastest measured: bf16 autocast ran "
                        "genas_c100 at 0.48x of fp32 on an H200")
    p.add_argument("--channels-last", action="store_true",
                   help="NHWC memory format; default NCHW, the fastest measured: channels_last ran genas_c100 at "
                        "0.47x on an H200")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (fp32, inductor): 1.27x the eager images/s of genas_c100 on an H200 "
                        "after a one-off compilation of about 39 s, so worth it for about 1.4M images or more "
                        "(ImageNet-C in full); logits equal eager to float rounding")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="override the model's")
    p.add_argument("--crop-pct", type=float, help="override the model's centre-crop fraction")
    p.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"), help="override the model's")
    p.add_argument("--mean", type=float, nargs="+", help="override normalisation mean (1 or C values)")
    p.add_argument("--std", type=float, nargs="+", help="override normalisation std (1 or C values)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted and listed in "
                                                           "the result) instead of failing on the first one")
    p.add_argument("--out", help="result JSON (genas.core.results format); a summary line is always printed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def validate_args(args: argparse.Namespace) -> None:
    """Every option that cannot work is an :class:`OptionError`, before any file is read or written."""
    if args.in_dist and args.set != "imagenet-o":
        raise OptionError("--in-dist is only used with --set imagenet-o")
    for flag in ("corruptions", "severities", "clean_result"):
        if getattr(args, flag) and args.set != "imagenet-c":
            raise OptionError(f"--{flag.replace('_', '-')} is only used with --set imagenet-c")
    known = CORRUPTIONS + EXTRA_CORRUPTIONS
    bad = [c for c in args.corruptions or () if c not in known]
    if bad:
        raise OptionError(f"--corruptions: unknown {', '.join(bad)}; choose among {', '.join(known)}")
    if any(s not in SEVERITIES for s in args.severities or ()):
        raise OptionError(f"--severities take values among 1 2 3 4 5, got {args.severities}")
    channels = args.input_size[0] if args.input_size else 3
    for name in ("mean", "std"):
        if getattr(args, name) and len(getattr(args, name)) not in (1, channels):
            raise OptionError(f"--{name} takes 1 or {channels} values (one per input channel)")
    if args.batch_size < 1 or args.workers < 0:
        raise OptionError("--batch-size must be >= 1 and --workers >= 0")
    resolve_eval_device(args.device)
    if args.out and Path(args.out).is_dir():
        raise OptionError(f"--out {args.out} is a folder; give the result file's path")
    try:
        check_model_name(args.model, "--model")
    except UsageError as e:
        raise ModelLoadError(str(e)) from None


def inference_options(args: argparse.Namespace, device: torch.device, is_main: bool = True) -> InferenceOptions:
    """The :class:`InferenceOptions` of the command line (on every device, without flags: eager fp32, NCHW)."""
    return InferenceOptions(device=device, amp_dtype=AMP_DTYPES[args.amp], channels_last=args.channels_last,
                            compile=args.compile, batch_size=args.batch_size, workers=args.workers,
                            skip_bad=args.skip_bad, progress=not args.no_progress and is_main)


@usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    validate_args(args)  # every option is checked before the first image is read
    clean_error = _clean_error(args.clean_result, args.model)
    prepared = prepare_samples(args.set, args.data, args.in_dist, args.corruptions, args.severities)
    model = build_model(args.model, args.checkpoint, args.pretrained)
    info = init_distributed(args.device)
    try:
        if info.is_main and args.checkpoint is None and not args.pretrained:
            print(f"warning: no --checkpoint or --pretrained: evaluating randomly initialised {args.model}",
                  file=sys.stderr)
        if info.is_main and prepared.info.get("missing_corruptions"):
            print(f"warning: imagenet-c: {args.data} lacks {', '.join(prepared.info['missing_corruptions'])} "
                  f"(a partial release: evaluated {', '.join(prepared.info['corruptions'])})", file=sys.stderr)
        transform, data_config = build_transform(model, dict(
            input_size=args.input_size, crop_pct=args.crop_pct, interpolation=args.interpolation,
            mean=args.mean, std=args.std))
        opts = inference_options(args, info.device, info.is_main)
        outcome = evaluate(model, prepared, transform, opts, clean_error)
    finally:
        cleanup_distributed()
    if not info.is_main:
        return 0
    extra: dict[str, Any] = {"variant": v2_variant(args.data)} if args.set == "imagenet-v2" else {}
    if args.set == "imagenet-o":
        extra["in_dist"] = str(args.in_dist)
    if args.set == "imagenet-c":
        extra.update(prepared.info, clean_result=args.clean_result, clean_error=clean_error,
                     alexnet_reference=alexnet_reference()["source"])
        if "mce" not in outcome.metrics:
            extra["mce_missing"] = ("mCE needs all 15 standard corruptions at all 5 severities; evaluated "
                                    f"{len([c for c in prepared.info['corruptions'] if c in CORRUPTIONS])} "
                                    f"corruption(s) at severities {prepared.info['severities']}")
    if args.out:
        write_result(args.out, kind="robustness", model=args.model, metrics=outcome.metrics, set=args.set,
                     data=str(args.data), **extra, checkpoint=args.checkpoint, pretrained=args.pretrained,
                     checkpoint_sha256=sha256_of(args.checkpoint) if args.checkpoint else None,
                     num_images=outcome.num_images, **outcome.counts, num_skipped=len(outcome.skipped),
                     skipped=[path for path, _ in outcome.skipped], seconds=round(outcome.seconds, 3),
                     images_per_second=round(outcome.num_images / max(outcome.seconds, 1e-9), 2),
                     data_config=data_config, device=str(info.device), amp=args.amp,
                     channels_last=args.channels_last, compile=args.compile, world_size=info.world_size)
    shown = {k: v for k, v in outcome.metrics.items() if "/" not in k}
    metrics = " ".join(f"{k} {v:.2f}" for k, v in shown.items())
    print(f"{args.set} {args.model}: {metrics} | {outcome.num_images} images, {len(outcome.skipped)} skipped, "
          f"{outcome.seconds:.1f} s" + (f", {info.world_size} processes" if info.world_size > 1 else "")
          + (f" -> {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

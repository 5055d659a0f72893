"""Evaluate a timm ImageNet-1k classifier under distribution shift (paper Table 4 and the ImageNet-O study).

    python robustness/eval.py --set imagenet-a --data /data/imagenet-a --model genas_c100 \
        --checkpoint genas_c100.pth --out runs/robustness/genas_c100_imagenet-a.json

Sets: ``imagenet`` (val, wnid folders), ``imagenet-v2`` (folders 0..999 = class index; matched-frequency,
threshold0.7 and top-images alike), ``imagenet-a`` (200 wnid folders; logits restricted to those 200 classes)
report top-1/top-5 in percent; ``imagenet-o`` reports OOD detection (AUPR, AUROC, FPR@95 in percent) of the
ImageNet-O images against the ImageNet val images (``--in-dist``) of the same 200 classes, with logits restricted
to those classes and the negative maximum softmax as anomaly score. Preprocessing is the model's own
``pretrained_cfg`` (timm data config), overridable by flags. The result is one ``genas.core.results`` JSON file.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import timm
import torch
from timm.data import create_transform, resolve_model_data_config
from tqdm import tqdm

import backbones  # noqa: F401  (registers the genas_* timm models)
from genas.core.io import sha256_of
from genas.core.results import write_result
from robustness.layouts import (SETS, LayoutError, ImageSamples, Batch, collate_samples, embedded_wnids,
                                 indices_in_1k, layout_for, scan_images)
from robustness.metrics import max_softmax_anomaly_score, ood_detection_metrics, topk_correct

__all__ = ["InferenceOptions", "Outcome", "ModelLoadError", "UnreadableImageError", "build_model",
           "build_transform", "prepare_samples", "evaluate", "main"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
V2_VARIANTS = ("matched-frequency", "threshold0.7", "top-images")


class ModelLoadError(ValueError):
    """Unknown model name, or a checkpoint that does not load into the model."""


class UnreadableImageError(ValueError):
    """An image PIL cannot decode, without --skip-bad."""


@dataclass(frozen=True)
class InferenceOptions:
    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    batch_size: int = 64
    workers: int = 4
    skip_bad: bool = False
    progress: bool = True


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
    if not timm.is_model(name):
        genas_models = ", ".join(timm.list_models("genas*")) or "none registered"
        raise ModelLoadError(f"unknown timm model {name!r} (GeNAS models: {genas_models}; "
                             f"list others with timm.list_models())")
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


def prepare_samples(set_name: str, data: str | Path, in_dist: str | Path | None = None
                    ) -> tuple[list[tuple[str, int]], list[int] | None]:
    """Check the layout(s) and list (path, target) samples, plus the 1k logits the set keeps (None = all).

    Targets are class indices for the accuracy sets (positions in the 200-class list for ImageNet-A) and
    0 = in-distribution / 1 = OOD for ImageNet-O.
    """
    if set_name == "imagenet-o":
        if in_dist is None:
            raise LayoutError("imagenet-o: --in-dist is required: an ImageNet val root (wnid folders) whose "
                              "200 ImageNet-O class folders give the in-distribution images")
        ood = scan_images(data, layout_for(set_name), set_name)
        ind = scan_images(in_dist, layout_for(set_name, in_distribution=True), "imagenet-o --in-dist")
        return [(p, 0) for p, _ in ind] + [(p, 1) for p, _ in ood], indices_in_1k(embedded_wnids("imagenet_o"))
    keep = indices_in_1k(embedded_wnids("imagenet_a")) if set_name == "imagenet-a" else None
    return scan_images(data, layout_for(set_name), set_name), keep


def _batches(model: torch.nn.Module, samples: Sequence[tuple[str, int]], transform: Callable,
             keep: list[int] | None, opts: InferenceOptions, skipped: list[tuple[str, str]], desc: str
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits restricted to ``keep``, targets) per batch, on CPU in float32; unreadable images per opts."""
    loader = torch.utils.data.DataLoader(ImageSamples(samples, transform), batch_size=opts.batch_size,
                                         shuffle=False, num_workers=opts.workers, collate_fn=collate_samples,
                                         pin_memory=opts.device.type == "cuda")
    keep_index = None if keep is None else torch.tensor(keep, device=opts.device)
    model = model.to(opts.device).eval()
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch: Batch
    with torch.inference_mode(), tqdm(total=len(samples), desc=desc, unit="img", disable=not opts.progress) as bar:
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
            if opts.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(opts.device.type, dtype=opts.amp_dtype, enabled=opts.amp_dtype is not None):
                logits = model(images)
            if keep_index is not None:
                logits = logits.index_select(1, keep_index)
            yield logits.float().cpu(), batch.targets


def evaluate(set_name: str, model: torch.nn.Module, samples: Sequence[tuple[str, int]], transform: Callable,
             keep: list[int] | None, opts: InferenceOptions = InferenceOptions()) -> Outcome:
    """Run the model over ``samples`` (from prepare_samples) and compute the set's metrics."""
    skipped: list[tuple[str, str]] = []
    start = time.perf_counter()
    batches = _batches(model, samples, transform, keep, opts, skipped, desc=set_name)
    if set_name == "imagenet-o":
        scores, labels = [], []
        for logits, targets in batches:
            scores.append(max_softmax_anomaly_score(logits))
            labels.append(targets)
        is_ood = torch.cat(labels).numpy() == 1 if labels else np.zeros(0, dtype=bool)
        counts = {"num_in_distribution": int((~is_ood).sum()), "num_ood": int(is_ood.sum())}
        if not counts["num_in_distribution"] or not counts["num_ood"]:
            raise LayoutError(f"imagenet-o: no readable {'OOD' if is_ood.all() else 'in-distribution'} images "
                              f"({len(skipped)} unreadable skipped)")
        metrics = ood_detection_metrics(torch.cat(scores).numpy(), is_ood)
        num_images = len(is_ood)
    else:
        hits = {1: 0, 5: 0}
        num_images = 0
        for logits, targets in batches:
            for k, n in topk_correct(logits, targets, ks=(1, 5)).items():
                hits[k] += n
            num_images += len(targets)
        if not num_images:
            raise LayoutError(f"{set_name}: all {len(skipped)} images were unreadable")
        metrics = {f"top{k}": 100.0 * n / num_images for k, n in hits.items()}
        counts = {}
    return Outcome(metrics, num_images, counts, skipped, time.perf_counter() - start)


def v2_variant(root: str | Path) -> str:
    """Which ImageNetV2 test set a root is, from its release folder name (they share one layout)."""
    return next((v for v in V2_VARIANTS if v in Path(root).resolve().name), "unknown")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--set", required=True, choices=SETS, help="evaluation set (folder layout and metrics)")
    p.add_argument("--data", required=True, help="root of the set's class folders")
    p.add_argument("--in-dist", help="imagenet-o only: ImageNet val root (wnid folders) for the in-distribution side")
    p.add_argument("--model", required=True, help="timm model name, e.g. genas_c100 or resnet50")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="local weights file (timm/torch checkpoint, loaded weights_only)")
    weights.add_argument("--pretrained", action="store_true", help="timm's own pretrained weights (hub/cache)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", nargs="?", const="bf16", choices=sorted(AMP_DTYPES),
                   help="autocast dtype (--amp alone = bf16)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="override the model's")
    p.add_argument("--crop-pct", type=float, help="override the model's centre-crop fraction")
    p.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"), help="override the model's")
    p.add_argument("--mean", type=float, nargs="+", help="override normalisation mean (1 or C values)")
    p.add_argument("--std", type=float, nargs="+", help="override normalisation std (1 or C values)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted and listed in "
                                                           "the result) instead of failing on the first one")
    p.add_argument("--out", help="result JSON (genas.core.results format); a summary line is always printed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.in_dist and args.set != "imagenet-o":
        p.error("--in-dist is only used with --set imagenet-o")
    channels = args.input_size[0] if args.input_size else 3
    for name in ("mean", "std"):
        if getattr(args, name) and len(getattr(args, name)) not in (1, channels):
            p.error(f"--{name} takes 1 or {channels} values (one per input channel)")
    if args.batch_size < 1 or args.workers < 0:
        p.error("--batch-size must be >= 1 and --workers >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model = build_model(args.model, args.checkpoint, args.pretrained)
        if args.checkpoint is None and not args.pretrained:
            print(f"warning: no --checkpoint or --pretrained: evaluating randomly initialised {args.model}",
                  file=sys.stderr)
        samples, keep = prepare_samples(args.set, args.data, args.in_dist)
        transform, data_config = build_transform(model, dict(
            input_size=args.input_size, crop_pct=args.crop_pct, interpolation=args.interpolation,
            mean=args.mean, std=args.std))
        opts = InferenceOptions(device=torch.device(args.device), amp_dtype=AMP_DTYPES.get(args.amp),
                                channels_last=args.channels_last, batch_size=args.batch_size,
                                workers=args.workers, skip_bad=args.skip_bad, progress=not args.no_progress)
        outcome = evaluate(args.set, model, samples, transform, keep, opts)
    except (LayoutError, ModelLoadError, UnreadableImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    extra = {"variant": v2_variant(args.data)} if args.set == "imagenet-v2" else {}
    if args.set == "imagenet-o":
        extra["in_dist"] = str(args.in_dist)
    if args.out:
        write_result(args.out, kind="robustness", model=args.model, metrics=outcome.metrics, set=args.set,
                     data=str(args.data), **extra, checkpoint=args.checkpoint, pretrained=args.pretrained,
                     checkpoint_sha256=sha256_of(args.checkpoint) if args.checkpoint else None,
                     num_images=outcome.num_images, **outcome.counts, num_skipped=len(outcome.skipped),
                     skipped=[path for path, _ in outcome.skipped], seconds=round(outcome.seconds, 3),
                     images_per_second=round(outcome.num_images / max(outcome.seconds, 1e-9), 2),
                     data_config=data_config, device=args.device, amp=args.amp)
    metrics = " ".join(f"{k} {v:.2f}" for k, v in outcome.metrics.items())
    print(f"{args.set} {args.model}: {metrics} | {outcome.num_images} images, {len(outcome.skipped)} skipped, "
          f"{outcome.seconds:.1f} s" + (f" -> {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

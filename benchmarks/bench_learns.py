"""It learns: RetinaNet and DeepLabv3 with a GeNAS backbone overfit a few real images (metric vs iteration).

Two runs through the suite's own training code, on the CPU, random-init backbones (no ImageNet weights here):

* detection: ``detection.train_net.Trainer`` (Detectron2's RetinaNet + FPN on ``genas_c100``'s cell at a small
  width) trained on the first ``--det-images`` images of ``coco128`` and evaluated with COCOEvaluator on the same
  images every ``--det-eval-every`` iterations: box AP50 / AP against iterations, the untrained model first.
* segmentation: ``segmentation/train.py``'s ``main`` (MMSeg DeepLabv3, ``genas_c100`` at a small width) trained on
  the one frame of ``cityscapes_tiny`` and validated on it every ``--seg-eval-every`` iterations: mIoU against
  iterations, the untrained model first.

Both are overfitting checks: they show that the adapters (feature levels, FPN / ASPP, input normalisation,
freezing, the loss and the evaluation) let the networks learn, not how well they generalise. The recipe changes
for overfitting (a small width, BatchNorm that trains, nothing frozen, no augmentation, a learning rate with
warm-up, smaller anchors for the small images) are options of this script; the paper configs are untouched.

    python benchmarks/bench_learns.py                      # both; writes benchmarks/results/learns.md
    python benchmarks/bench_learns.py --only detection --det-iters 200   # one part, fewer iterations
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from genas.core.io import atomic_write_text  # noqa: E402

SHARED = Path(os.environ.get("GENAS_SHARED_DATA", REPO.parent / "shared" / "data"))
DET_TARGET_AP50 = 10.0
SEG_TARGET_MIOU = 30.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["detection", "segmentation"], help="run one of the two")
    p.add_argument("--data", default=str(SHARED), help="folder holding coco128/ and cityscapes_tiny/")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "learns.md"),
                   help="markdown report ('' = print only)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: on a shared 2-core machine, 2 OpenMP threads spin-wait for each other)")
    p.add_argument("--device", default="cpu")
    # detection
    p.add_argument("--det-model", default="genas_c100")
    p.add_argument("--det-width", type=int, default=16, help="the backbone's C")
    p.add_argument("--det-images", type=int, default=16)
    p.add_argument("--det-size", type=int, default=192, help="short side of train and test images")
    p.add_argument("--det-max-size", type=int, default=288, help="long side limit")
    p.add_argument("--det-batch", type=int, default=4)
    p.add_argument("--det-iters", type=int, default=300)
    p.add_argument("--det-lr", type=float, default=0.01)
    p.add_argument("--det-warmup", type=int, default=50)
    p.add_argument("--det-anchor-scale", type=float, default=0.5,
                   help="anchor sizes x this (the recipe's 32..512 px are for 800 px images)")
    p.add_argument("--det-eval-every", type=int, default=50)
    p.add_argument("--det-fpn-channels", type=int, default=64,
                   help="FPN / head channels (the recipe's 256 make the head ~40x the cost of a small backbone)")
    p.add_argument("--det-head-norm", default="GN",
                   help="MODEL.RETINANET.NORM ('' = the recipe's head without normalisation, whose std-0.01 convs "
                        "keep the scores at the prior for hundreds of iterations from scratch)")
    # segmentation
    p.add_argument("--seg-model", default="genas_c100")
    p.add_argument("--seg-output-stride", type=int, choices=[16, 32], default=16,
                   help="16: the *_os16_* recipe (ASPP on the stride-16 level); 32: the default recipe")
    p.add_argument("--seg-width", type=int, default=16, help="the backbone's C")
    p.add_argument("--seg-size", default="128x256", help="HxW the frame is resized to")
    p.add_argument("--seg-iters", type=int, default=500)
    p.add_argument("--seg-lr", type=float, default=0.01)
    p.add_argument("--seg-eval-every", type=int, default=50)
    p.add_argument("--seg-batch", type=int, default=2)
    p.add_argument("--seg-head-norm", default="BN", help="norm of the ASPP / FCN heads: BN (the recipe's) or GN")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------- detection
def _coco_subset(root: Path, n: int, path: Path) -> Path:
    coco = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    keep = set(sorted(i["id"] for i in coco["images"])[:n])
    subset = dict(coco, images=[i for i in coco["images"] if i["id"] in keep],
                  annotations=[a for a in coco["annotations"] if a["image_id"] in keep])
    path.write_text(json.dumps(subset))
    return path


def detection_options(args: argparse.Namespace, train_json: Path, images: Path, out: Path) -> list[str]:
    """The overfitting recipe as Detectron2 KEY VALUE options on top of the paper config."""
    sizes = [[32, 40.31747359663594, 50.79683366298238], [64, 80.63494719327188, 101.59366732596476],
             [128, 161.26989438654377, 203.18733465192952], [256, 322.53978877308754, 406.37466930385904],
             [512, 645.0795775461751, 812.7493386077181]]
    sizes = [[round(s * args.det_anchor_scale, 3) for s in level] for level in sizes]
    return [
        "MODEL.DEVICE", args.device, "MODEL.GENAS.NAME", args.det_model, "MODEL.GENAS.WEIGHTS", "",
        "MODEL.GENAS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
        "MODEL.ANCHOR_GENERATOR.SIZES", repr(sizes), "MODEL.FPN.OUT_CHANNELS", str(args.det_fpn_channels),
        "MODEL.RETINANET.NORM", args.det_head_norm,
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
        "DATASETS.COCO_FORMAT", repr([["learns_train", str(train_json), str(images)]]),
        "DATASETS.TRAIN", "('learns_train',)", "DATASETS.TEST", "('learns_train',)",
        "INPUT.MIN_SIZE_TRAIN", f"({args.det_size},)", "INPUT.MAX_SIZE_TRAIN", str(args.det_max_size),
        "INPUT.MIN_SIZE_TEST", str(args.det_size), "INPUT.MAX_SIZE_TEST", str(args.det_max_size),
        "INPUT.RANDOM_FLIP", "none",
        "SOLVER.IMS_PER_BATCH", str(args.det_batch), "SOLVER.BASE_LR", str(args.det_lr),
        "SOLVER.WARMUP_ITERS", str(args.det_warmup), "SOLVER.STEPS", "()", "SOLVER.MAX_ITER", str(args.det_iters),
        "SOLVER.CHECKPOINT_PERIOD", "1000000", "TEST.EVAL_PERIOD", str(args.det_eval_every),
        "DATALOADER.NUM_WORKERS", "0", "SEED", "0", "OUTPUT_DIR", str(out),
    ]


def run_detection(args: argparse.Namespace, tmp: Path) -> dict:
    from detectron2.engine import default_argument_parser

    from detection.train_net import Trainer, setup

    root = Path(args.data) / "coco128"
    train_json = _coco_subset(root, args.det_images, tmp / "learns_train.json")
    config = REPO / "configs" / "detection" / f"retinanet_{args.det_model}_FPN_1x.yaml"
    if not config.is_file():
        config = REPO / "configs" / "detection" / "retinanet_genas_c100_FPN_1x.yaml"
    opts = detection_options(args, train_json, root / "train2017", tmp / "det")
    cfg = setup(default_argument_parser().parse_args(["--config-file", str(config), *opts]))
    cfg.defrost()
    cfg.MODEL.GENAS.MODEL_KWARGS.C = args.det_width
    cfg.freeze()
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    start = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval's summary tables
        untrained = Trainer.test(cfg, trainer.model)["bbox"]
        trainer.train()
    seconds = time.perf_counter() - start
    curve = [(0, untrained["AP50"], untrained["AP"])]
    # Detectron2 logs a periodic evaluation at the index of the last iteration before it (+1 = iterations done);
    # the final one after training, at MAX_ITER
    ap50 = dict((min(it + 1, args.det_iters), v) for v, it in trainer.storage.history("bbox/AP50").values())
    ap = dict((min(it + 1, args.det_iters), v) for v, it in trainer.storage.history("bbox/AP").values())
    curve += [(it, ap50[it], ap[it]) for it in sorted(ap50)]
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    return dict(curve=curve, seconds=seconds, first_loss=losses[0], last_loss=sum(losses[-20:]) / len(losses[-20:]),
                params=sum(p.numel() for p in trainer.model.parameters()))


# -------------------------------------------------------------------------------------------------- segmentation
SEG_CONFIG = """
_base_ = {base!r}
data_root = {data_root!r}
crop_size = ({ch}, {cw})
norm = {norm}
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(model_name={model!r}, C={width}),
             decode_head=dict(in_channels={c3}, norm_cfg=norm), auxiliary_head=dict(in_channels={c2}, norm_cfg=norm))
# the recipe's random crop and flip, at this scale: a batch of two identical images would make the BatchNorm of
# ASPP's image-pooling branch divide by a zero batch variance (its running variance then goes to 0 and the
# evaluation, which uses it, to noise)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=({w}, {h}), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=({w}, {h}), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
split = dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val')
# batch 2: ASPP's image-pooling BatchNorm needs more than one value per channel in training
train_dataloader = dict(batch_size={batch}, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, data_prefix=split, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, data_prefix=split, pipeline=test_pipeline))
test_dataloader = val_dataloader
optimizer = dict(lr={lr})
optim_wrapper = dict(optimizer=optimizer)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end={iters}, by_epoch=False)]
train_cfg = dict(max_iters={iters}, val_interval={every})
default_hooks = dict(logger=dict(interval={every}), checkpoint=dict(interval={iters}))
custom_hooks = [dict(type='LearnsValidateFirst')]
randomness = dict(seed=0)
"""


def run_segmentation(args: argparse.Namespace, tmp: Path) -> dict:
    import timm
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    import backbones  # noqa: F401  (registers the GeNAS timm models)
    from segmentation import train as seg_train

    @HOOKS.register_module(name="LearnsValidateFirst", force=True)
    class LearnsValidateFirst(Hook):
        """Validate the untrained model once before the first iteration (the curve's iteration 0)."""

        def before_train(self, runner) -> None:
            runner.val_loop.run()

    h, w = (int(v) for v in args.seg_size.split("x"))
    channels = timm.create_model(args.seg_model, features_only=True, C=args.seg_width).feature_info.channels()
    decode, aux = (channels[2], channels[1]) if args.seg_output_stride == 16 else (channels[3], channels[2])
    recipe = "deeplabv3_genas_c100_os16_512x1024_80k_cityscapes.py" if args.seg_output_stride == 16 else \
        "deeplabv3_genas_c100_512x1024_80k_cityscapes.py"
    config = tmp / "learns_seg.py"
    config.write_text(SEG_CONFIG.format(
        base=str(REPO / "configs" / "segmentation" / recipe),
        data_root=str(Path(args.data) / "cityscapes_tiny"), h=h, w=w, ch=h * 3 // 4, cw=w * 3 // 4,
        model=args.seg_model, width=args.seg_width, batch=args.seg_batch,
        norm="dict(type='GN', num_groups=32, requires_grad=True)" if args.seg_head_norm == "GN"
        else "dict(type='SyncBN', requires_grad=True)",
        c3=decode, c2=aux, lr=args.seg_lr, iters=args.seg_iters, every=args.seg_eval_every))
    work_dir = tmp / "seg"
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = seg_train.main([str(config), "--work-dir", str(work_dir), "--device", args.device])
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"segmentation/train.py exited with {rc}")
    rows = [json.loads(line) for line in next(work_dir.glob("*/vis_data/scalars.json")).read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    vals = [r for r in rows if "mIoU" in r]
    # the first validation is the untrained model's (step logged as 0), then one every --seg-eval-every
    curve = [(0 if k == 0 else k * args.seg_eval_every, r["mIoU"], r["aAcc"]) for k, r in enumerate(vals)]
    return dict(curve=curve, seconds=seconds, first_loss=losses[0], last_loss=losses[-1])


# ---------------------------------------------------------------------------------------------------------- report
def _curve_table(columns: tuple[str, str], curve: list, target: float) -> list[str]:
    """Markdown lines: the (iteration, metric, second metric) curve as a table, then the best metric vs its target."""
    best = max(point[1] for point in curve)
    return [f"| iteration | {columns[0]} | {columns[1]} |", "|---:|---:|---:|",
            *[f"| {it} | {a:.1f} | {b:.1f} |" for it, a, b in curve], "",
            f"Best {columns[0].removeprefix('box ')} {best:.1f} (target >= {target:g}): "
            f"{'reached' if best >= target else 'NOT reached'}.", ""]


def report(args: argparse.Namespace, det: dict | None, seg: dict | None, total: float) -> str:
    lines = ["# It learns: RetinaNet and DeepLabv3 with a GeNAS backbone overfit real images", "",
             f"`python benchmarks/bench_learns.py` ({platform.processor() or platform.machine()}, "
             f"{args.threads} torch threads, device {args.device}, torch {torch.__version__}); "
             f"total {total / 60:.1f} min. Random-init backbones; each metric is measured on the training images "
             "themselves (an overfitting check of the adapters, not a generalisation result).", ""]
    if det is not None:
        lines += ["## Detection: RetinaNet (Detectron2), coco128", "",
                  f"`detection.train_net.Trainer`, `{args.det_model}` cell at C={args.det_width} "
                  f"({det['params'] / 1e6:.2f} M parameters with FPN and head), BN trained, nothing frozen, FPN / head "
                  f"{args.det_fpn_channels} channels, head norm {args.det_head_norm or 'none'}, "
                  f"{args.det_images} images at short side {args.det_size} (long side <= {args.det_max_size}), "
                  f"no flip, batch {args.det_batch}, SGD lr {args.det_lr} with {args.det_warmup} warm-up "
                  f"iterations, anchors x{args.det_anchor_scale}; COCOEvaluator on the same {args.det_images} "
                  f"images. Loss {det['first_loss']:.2f} -> {det['last_loss']:.2f} (mean of the last 20). "
                  f"{det['seconds'] / 60:.1f} min.", ""]
        lines += _curve_table(("box AP50", "box AP"), det["curve"], DET_TARGET_AP50)
    if seg is not None:
        lines += ["## Segmentation: DeepLabv3 (MMSegmentation), cityscapes_tiny", "",
                  f"`segmentation/train.py` (`main`), `{args.seg_model}` cell at C={args.seg_width}, the one "
                  f"Cityscapes frame resized to {args.seg_size.replace('x', ' x ')}, batch 2, SGD lr {args.seg_lr} "
                  f"poly, {args.seg_iters} iterations; IoUMetric on the same frame. Loss "
                  f"{seg['first_loss']:.2f} -> {seg['last_loss']:.2f}. {seg['seconds'] / 60:.1f} min.", ""]
        lines += _curve_table(("mIoU", "aAcc"), seg["curve"], SEG_TARGET_MIOU)
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    det = seg = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "detection"):
            det = run_detection(args, Path(tmp))
            print("detection (iteration, AP50, AP):", [(i, round(a, 1), round(b, 1)) for i, a, b in det["curve"]],
                  f"{det['seconds']:.0f} s", flush=True)
        if args.only in (None, "segmentation"):
            seg = run_segmentation(args, Path(tmp))
            print("segmentation (iteration, mIoU, aAcc):", [(i, round(a, 1), round(b, 1)) for i, a, b in seg["curve"]],
                  f"{seg['seconds']:.0f} s", flush=True)
    text = report(args, det, seg, time.perf_counter() - start)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"-> {args.out}")
    else:
        print(text)
    ok = (det is None or max(c[1] for c in det["curve"]) >= DET_TARGET_AP50) and (
        seg is None or max(c[1] for c in seg["curve"]) >= SEG_TARGET_MIOU)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Train DeepLabv3 with a GeNAS backbone (MMSeg's ``tools/train.py`` flow) and write the final validation's
mIoU / mAcc / aAcc as the suite's result JSON.

    python segmentation/train.py configs/segmentation/deeplabv3_genas_c100_512x1024_80k_cityscapes.py \
        --data-root data/cityscapes --work-dir runs/seg/genas_c100 \
        --cfg-options model.backbone.weights=genas_c100_imagenet.pth
    torchrun --nproc_per_node 4 segmentation/train.py CONFIG --launcher pytorch [--resume] [--amp [bf16]] ...

A thin wrapper over MMEngine's ``Runner``: logs, ``iter_N.pth`` checkpoints and ``--resume`` (from the work dir's
last checkpoint) are MMEngine's; torch's generators are seeded from (seed, iteration) before every iteration, so a
resumed run trains exactly as the uninterrupted one (``segmentation.runner.reseed_each_iteration_hook``; config key
``exact_resume``, default True; False is stock MMSeg, whose resumed run draws other dropout masks). The
validation that ends training (MMEngine's ``IterBasedTrainLoop`` always validates at ``max_iters``) is written to
``<work-dir>/results_segmentation.json``; a run resumed after its end validates once more instead. ``--amp`` (fp16,
or ``--amp bf16``) is MMEngine's ``AmpOptimWrapper`` (CUDA); ``--channels-last`` runs the backbone in channels_last;
under ``torchrun`` without GPUs the processes use gloo. A ``--cfg-options`` key the config lacks and its component
does not take (``train_cfg.max_iter``, ``model.backbone.foo``) is one ``error:`` line, exit 2, nothing written.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import torch

from genas.core.distributed import AMP_DTYPES
from genas.core.errors import usage_errors
from segmentation.runner import (SetupError, add_run_args, build_runner, mmengine_checkpoint_globals, prepare_config,
                                 reseed_each_iteration_hook, write_segmentation_result)

__all__ = ["last_val_metrics_hook", "main"]


def last_val_metrics_hook():
    """A hook keeping the metrics of this run's latest validation (the final one once training has ended).

    Built on demand because ``mmengine.hooks`` imports ``mmengine.device``, which fixes the device on import:
    after ``--device`` has been applied.
    """
    from mmengine.hooks import Hook

    class LastValMetrics(Hook):
        priority = "LOWEST"
        metrics: dict | None = None

        def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
            self.metrics = metrics

    return LastValMetrics()


@usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(parser)
    parser.add_argument("--resume", action="store_true",
                        help="resume from the last checkpoint in --work-dir (a fresh start when there is none)")
    parser.add_argument("--amp", nargs="?", const="fp16", choices=[k for k in AMP_DTYPES if k],
                        help="mixed precision (MMEngine's AmpOptimWrapper, CUDA only): fp16 (the default) or bf16")
    args = parser.parse_args(argv)
    if args.amp and (args.device == "cpu" or not torch.cuda.is_available()):
        raise SetupError(f"--amp {args.amp}: MMEngine's AmpOptimWrapper needs a CUDA device; drop --amp on the CPU")
    cfg = prepare_config(args, ["train_dataloader", "val_dataloader"])
    exact_resume = cfg.get("exact_resume", True)
    if not isinstance(exact_resume, bool):
        raise SetupError(f"exact_resume={exact_resume!r}: expected True or False")
    cfg.resume = args.resume
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
        cfg.optim_wrapper.dtype = str(AMP_DTYPES[args.amp]).removeprefix("torch.")  # 'float16' | 'bfloat16'
    runner = build_runner(cfg)
    if exact_resume:
        runner.register_hook(reseed_each_iteration_hook())
    last_val = last_val_metrics_hook()
    runner.register_hook(last_val)
    with mmengine_checkpoint_globals():  # --resume loads the last checkpoint
        runner.train()
    metrics = last_val.metrics if last_val.metrics is not None else runner.val()
    checkpoint = os.path.join(runner.work_dir, f"iter_{runner.iter}.pth")
    path = write_segmentation_result(runner, metrics, "val_dataloader",
                                     checkpoint if os.path.isfile(checkpoint) else None, runner.iter)
    if path is not None:
        print(f"mIoU {metrics['mIoU']:.2f}  mAcc {metrics['mAcc']:.2f}  aAcc {metrics['aAcc']:.2f}  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

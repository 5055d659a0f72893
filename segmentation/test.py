"""Evaluate a DeepLabv3 checkpoint with MMSeg's IoUMetric and write mIoU / mAcc / aAcc as the suite's result JSON.

    python segmentation/test.py configs/segmentation/deeplabv3_genas_c100_512x1024_80k_cityscapes.py \
        runs/seg/genas_c100/iter_80000.pth --data-root data/cityscapes --work-dir runs/seg/genas_c100 \
        [--cfg-options k=v ...] [--device cpu]
    torchrun --nproc_per_node 4 segmentation/test.py CONFIG CHECKPOINT --launcher pytorch

A thin wrapper over MMEngine's ``Runner`` (MMSeg's ``tools/test.py`` flow) that checks the setup first (data root
layout, backbone name) so a mistake is one error line before anything is built, and writes
``<work-dir>/results_segmentation.json`` (kind ``segmentation``, metrics in percent) for the report
(``python -m report``). The run helpers it shares with ``segmentation/train.py`` are in ``segmentation/runner.py``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import torch

from genas.core.errors import usage_errors
from segmentation.runner import (SetupError, add_run_args, build_runner, mmengine_checkpoint_globals, prepare_config,
                                 write_segmentation_result)

__all__ = ["main"]


def _checkpoint_iterations(path: str) -> int | None:
    """The training iteration stored in an MMEngine checkpoint's meta (``None`` for a bare state dict)."""
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return checkpoint.get("meta", {}).get("iter")


@usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(parser)
    parser.add_argument("checkpoint", help="checkpoint written by segmentation/train.py (iter_N.pth)")
    args = parser.parse_args(argv)
    cfg = prepare_config(args, ["test_dataloader"])
    if not os.path.isfile(args.checkpoint):
        raise SetupError(f"checkpoint {args.checkpoint!r} not found")
    cfg.load_from = args.checkpoint
    runner = build_runner(cfg)
    with mmengine_checkpoint_globals():
        metrics = runner.test()
        iterations = _checkpoint_iterations(args.checkpoint)
    path = write_segmentation_result(runner, metrics, "test_dataloader", os.path.abspath(args.checkpoint),
                                     iterations)
    if path is not None:
        print(f"mIoU {metrics['mIoU']:.2f}  mAcc {metrics['mAcc']:.2f}  aAcc {metrics['aAcc']:.2f}  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

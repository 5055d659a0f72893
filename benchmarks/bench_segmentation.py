"""Seconds per training iteration and peak memory of DeepLabv3 with a GeNAS backbone.

One iteration is what MMEngine's runner does per step: ``model.train_step`` (data preprocessor, backbone,
ASPP + FCN heads, both losses, backward, SGD step). Inputs are random images and labels of the given size
(timing does not depend on content). Prints the median over ``--iters`` steps after ``--warmup`` steps, the
process's peak RSS and, on CUDA, the peak allocated GPU memory.

    python benchmarks/bench_segmentation.py --device cpu                       # the test's size: 2 x 64x128
    python benchmarks/bench_segmentation.py --device cuda --size 512 1024     # the recipe's crops, per GPU

On a busy CPU pass ``--threads 1`` (as the test suite runs): extra OpenMP threads mostly wait on each other.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData

from genas.core.distributed import resolve_device

RECIPE = "configs/segmentation/deeplabv3_genas_c100_512x1024_80k_cityscapes.py"


def build(args: argparse.Namespace, device: torch.device):
    cfg = Config.fromfile(args.config)
    cfg.model.backbone.model_name = args.model or cfg.model.backbone.model_name
    cfg.model.data_preprocessor.size = tuple(args.size)
    init_default_scope("mmseg")
    import segmentation.backbone  # noqa: F401  (registers GeNASBackbone, as custom_imports does)
    from mmseg.registry import MODELS
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).to(device).train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum,
                                         weight_decay=cfg.optimizer.weight_decay))
    return cfg, model, optim


def batch(args: argparse.Namespace, num_classes: int) -> dict:
    from mmseg.structures import SegDataSample
    h, w = args.size
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(args.batch_size):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, num_classes, (1, h, w), generator=g)))
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        samples.append(s)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for _ in range(args.batch_size)]
    return dict(inputs=images, data_samples=samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=RECIPE)
    parser.add_argument("--model", default=None, help="backbone timm model (default: the config's)")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 128), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cuda | cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    cfg, model, optim = build(args, device)
    data = batch(args, cfg.model.decode_head.num_classes)
    times = []
    for i in range(args.warmup + args.iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        losses = model.train_step(data, optim)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = (f"{cfg.model.backbone.model_name} DeepLabv3 {args.batch_size}x{args.size[0]}x{args.size[1]} on {device} "
            f"({torch.get_num_threads()} threads): {statistics.median(times):.3f} s/iter (median of {args.iters}), "
            f"peak RSS {rss_mib:.0f} MiB, loss {float(losses['loss'].detach()):.3f}")
    if device.type == "cuda":
        line += f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    print(line)


if __name__ == "__main__":
    main()

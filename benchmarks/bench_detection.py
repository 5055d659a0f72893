"""Seconds per training iteration and peak memory of RetinaNet with a GeNAS backbone (Detectron2).

Trains on the real images of a COCO-format folder (default: ../shared/data/coco128) with the given input
size and batch, and prints the median iteration time over the timed iterations (wall clock from Detectron2's
IterationTimer, and process CPU time, after ``--warmup`` untimed ones), the inference time per image, and the
peak memory (process RSS; on CUDA also the peak allocated GPU memory). Defaults are the size of tests/test_detection.py (genas_c100, 128 px,
batch 2, BN, nothing frozen); ``--width C`` changes the backbone's width.

    python benchmarks/bench_detection.py --device cpu --threads 1
    python benchmarks/bench_detection.py --device cuda --size 800 --max-size 1333 --batch 2
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor, HookBase

from detection.config import build_config
from detection.data import check_datasets, register_coco_format_datasets
from detection.train_net import Trainer

REPO = Path(__file__).resolve().parents[1]


class CpuTimer(HookBase):
    """Process CPU seconds of each iteration (all threads): robust to other jobs on a busy machine."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def before_step(self) -> None:
        self._start = time.process_time()

    def after_step(self) -> None:
        self.seconds.append(time.process_time() - self._start)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=str(REPO / "configs/detection/retinanet_genas_c100_FPN_1x.yaml"))
    p.add_argument("--data", default=str(REPO.parent / "shared/data/coco128"),
                   help="folder with annotations/instances_train2017.json and train2017/")
    p.add_argument("--width", type=int, default=0, help="the backbone's C (0: the registered model's own)")
    p.add_argument("--size", type=int, default=128, help="short side of train and test images")
    p.add_argument("--max-size", type=int, default=192, help="long side limit")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--infer-images", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    json_file, images = data / "annotations" / "instances_train2017.json", data / "train2017"
    with tempfile.TemporaryDirectory() as out:
        opts = ["MODEL.DEVICE", args.device, "MODEL.GENAS.WEIGHTS", "", "MODEL.GENAS.NORM", "BN",
                "MODEL.GENAS.FREEZE_AT", "0",
                "DATASETS.COCO_FORMAT", repr([["bench_train", str(json_file), str(images)]]),
                "DATASETS.TRAIN", "('bench_train',)", "DATASETS.TEST", "()",
                "INPUT.MIN_SIZE_TRAIN", f"({args.size},)", "INPUT.MAX_SIZE_TRAIN", str(args.max_size),
                "INPUT.MIN_SIZE_TEST", str(args.size), "INPUT.MAX_SIZE_TEST", str(args.max_size),
                "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.MAX_ITER", str(args.warmup + args.iters),
                "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1000000",
                "DATALOADER.NUM_WORKERS", "0", "SEED", "0", "OUTPUT_DIR", out]
        cfg = build_config(args.config_file, opts)
        if args.width:
            cfg.MODEL.GENAS.MODEL_KWARGS.C = args.width
        register_coco_format_datasets(cfg)
        check_datasets(cfg.DATASETS.TRAIN)
        trainer = Trainer(cfg)
        cpu = CpuTimer()
        trainer.register_hooks([cpu])
        trainer.train()
        times = [t for t, it in trainer.storage.history("time").values() if it >= args.warmup]
        cpu_times = cpu.seconds[args.warmup:]

        cfg.MODEL.WEIGHTS = str(Path(out) / "model_final.pth")
        predictor = DefaultPredictor(cfg)
        files = sorted(images.glob("*.jpg"))[: args.infer_images]
        start = time.perf_counter()
        for f in files:
            predictor(read_image(str(f), format="BGR"))
        infer = (time.perf_counter() - start) / len(files)

    report = {
        "model": cfg.MODEL.GENAS.NAME, "width": args.width or "registered", "device": args.device,
        "threads": torch.get_num_threads(), "input": f"{args.size}/{args.max_size}", "batch": args.batch,
        "train_s_per_iter_median": round(statistics.median(times), 4), "timed_iters": len(times),
        "train_cpu_s_per_iter_median": round(statistics.median(cpu_times), 4),
        "infer_s_per_image": round(infer, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.device.startswith("cuda"):
        report["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

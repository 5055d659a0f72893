"""Overhead of a SPOS supernet training step over the same architecture built as a standalone network.

For a few sampled architectures, one training step (forward, backward, gradient clipping, SGD with momentum and
weight decay: :func:`genas.train_supernet.train_step` with the trainer's own optimizer) is timed on the same batch for

* the supernet running only the architecture's path (``supernet(x, arch)``, optimizer over all its weights),
* the standalone network of that architecture (NB201: ``nb201.build_network``; DARTS: ``NetworkCIFAR``).

Runs alternate between the two (a busy machine slows both alike); each time is the median of ``--runs`` steps
after ``--warmup`` steps. The printed ratio supernet / standalone is the median over architectures
(target <= 1.10). Run from the repo root: ``python benchmarks/bench_supernet.py --device cpu [--space darts]``;
on a shared CPU, ``--threads 1 --clock cpu`` times process CPU time, which other jobs do not inflate.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from genas.core.distributed import resolve_device
from genas.spaces import build_supernet, get_space
from genas.spaces.base import Arch
from genas.core.distributed import AMP_DTYPES
from genas.core.config import DEFAULTS
from genas.train_supernet import build_optimizer, train_step

TRAIN_CFG = {**DEFAULTS["train"], "lr": 0.025, "momentum": 0.9, "weight_decay": 5e-4}


def standalone_network(space: str, arch: Arch, args: argparse.Namespace) -> nn.Module:
    if space == "nb201":
        from genas.spaces.nb201 import build_network
        return build_network(arch, num_classes=args.num_classes, C=args.C, N=args.N)
    from genas.spaces.darts.network import NetworkCIFAR
    from genas.spaces.darts import decode
    return NetworkCIFAR(decode(arch), C=args.C, layers=args.layers, num_classes=args.num_classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_archs(space: str, args: argparse.Namespace, device: torch.device) -> list[float]:
    kwargs = {"C": args.C, "N": args.N} if space == "nb201" else {"C": args.C, "layers": args.layers}
    torch.manual_seed(0)
    supernet = build_supernet(space, args.num_classes, **kwargs).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    supernet = supernet.to(memory_format=memory_format)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device).to(memory_format=memory_format)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    amp_dtype = AMP_DTYPES[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    rng = np.random.default_rng(args.seed)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    ratios = []
    for k in range(args.archs):
        arch = get_space(space).sample(rng)
        net = standalone_network(space, arch, args).to(device, memory_format=memory_format).train()
        path_params = sum(p.numel() for p in supernet.path_parameters(arch))
        candidates = {  # the trainer's optimizer (genas.train_supernet.build_optimizer) for both
            "supernet": (supernet, (arch,), build_optimizer(supernet, TRAIN_CFG, device)),
            "standalone": (net, (), build_optimizer(net, TRAIN_CFG, device)),
        }
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for run in range(args.warmup + args.runs):
            for name, (model, extra, optimizer) in candidates.items():
                _sync(device)
                start = clock()
                train_step(model, optimizer, x, y, *extra, grad_clip=5.0, scaler=scaler, amp_dtype=amp_dtype)
                _sync(device)
                if run >= args.warmup:
                    times[name].append(clock() - start)
        sup, alone = statistics.median(times["supernet"]), statistics.median(times["standalone"])
        ratios.append(sup / alone)
        net_params = sum(p.numel() for p in net.parameters())
        print(f"{space} arch {k} {get_space(space).to_string(arch)}\n"
              f"  params: path {path_params / 1e6:.3f}M, standalone {net_params / 1e6:.3f}M\n  step (median of {args.runs}): supernet {sup * 1e3:.2f} ms, standalone {alone * 1e3:.2f} ms, "
              f"ratio {sup / alone:.3f}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", choices=("nb201", "darts", "both"), default="nb201")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--N", type=int, default=5, help="NB201 cells per stage")
    parser.add_argument("--layers", type=int, default=8, help="DARTS cells")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--archs", type=int, default=3, help="sampled architectures")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (CPU device only)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu measures CPU time and cannot time GPU work; use --clock wall")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device}, batch {args.batch_size}x3x32x32, torch threads {torch.get_num_threads()}, "
          f"{args.clock} clock")
    for space in (("nb201", "darts") if args.space == "both" else (args.space,)):
        ratios = time_archs(space, args, device)
        print(f"{space}: SPOS step / standalone step = {statistics.median(ratios):.3f} "
              f"(median over {len(ratios)} archs; target <= 1.10)")


if __name__ == "__main__":
    main()

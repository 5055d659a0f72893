"""Which implementation of each speed switch is faster on this machine: the measurement behind the CPU defaults
of ``genas.spaces.pooling.AUTO`` and ``genas.train_supernet.SGD_IMPL`` (both implementations compute the same
function; ``tests/test_fast_paths.py``).

* ``op``: the pooling op alone (forward, forward + backward) at NB201's shapes;
* ``pooling``: average pooling ``native`` (torch's kernel) vs ``conv`` (depthwise convolution), in
  - NB201 flatness scoring (the scorer with its defaults: channels_last, one candidate = BN recalibration on
    ``--recal`` images + 3 sigmas x ``--val`` images, eval batch 256), and
  - the SPOS training step (NB201 and DARTS, batch 64, NCHW as the trainer runs);
* ``sgd``: the trainer's SGD step ``for-loop`` vs ``foreach`` (the optimizer step alone, on the gradients of a
  sampled NB201 path, C=16 N=5, and DARTS, C=16 8 layers; and within the whole training step).

Runs alternate A, B, A, B ... (a busy machine slows both alike); each figure is the median over ``--repeats``
of the process CPU time (``--clock cpu``, default: other processes do not inflate it; use ``--threads 1``) or
wall time. Run from the repo root::

    python benchmarks/bench_fast_paths.py --threads 1 --json benchmarks/results/fast_paths_cpu.json
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

from genas.core.config import DEFAULTS
from genas.core.io import atomic_write_json
from genas.spaces import build_supernet, get_space
from genas.spaces.pooling import pool_impl
from genas.train_supernet import build_optimizer, train_step

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def alternate(a: Callable[[], object], b: Callable[[], object], repeats: int, clock: Callable[[], float]
              ) -> tuple[float, float]:
    """Median seconds of ``a()`` and ``b()``, run in turn after one untimed call each."""
    a(), b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = clock()
            fn()
            out.append(clock() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def pooling_op(args: argparse.Namespace, clock) -> list[dict]:
    """The pooling op alone at NB201's shapes: 3x3 (count_include_pad=False) forward and forward + backward,
    2x2 stride-2 forward; NCHW and NHWC; batch 64 and 256."""
    import torch.nn.functional as F

    from genas.spaces.pooling import avg_pool2d_conv

    out = []
    reps = 10
    for batch in (64, 256):
        for channels, size in ((16, 32), (32, 16), (64, 8)):
            for layout in ("NCHW", "NHWC"):
                x = torch.randn(batch, channels, size, size)
                if layout == "NHWC":
                    x = x.contiguous(memory_format=torch.channels_last)
                xg, g = x.clone().requires_grad_(), torch.randn(batch, channels, size, size)
                with torch.no_grad():
                    fwd = alternate(lambda: [F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) for _ in range(reps)],
                                    lambda: [avg_pool2d_conv(x, 3, 1, 1, False) for _ in range(reps)],
                                    args.repeats * 3, clock)
                    fwd2 = alternate(lambda: [F.avg_pool2d(x, 2, 2, 0) for _ in range(reps)],
                                     lambda: [avg_pool2d_conv(x, 2, 2, 0, True) for _ in range(reps)],
                                     args.repeats * 3, clock)
                both = alternate(lambda: F.avg_pool2d(xg, 3, 1, 1, count_include_pad=False).backward(g),
                                 lambda: avg_pool2d_conv(xg, 3, 1, 1, False).backward(g), args.repeats * 3, clock)
                out.append({"what": f"pooling op, batch {batch}, {channels}x{size}x{size} {layout}",
                            "3x3_forward_native_over_conv": fwd[0] / fwd[1],
                            "3x3_forward_backward_native_over_conv": both[0] / both[1],
                            "2x2_forward_native_over_conv": fwd2[0] / fwd2[1]})
    return out


def scoring(args: argparse.Namespace, clock) -> dict:
    from genas.scoring.scorer import ArchScorer

    torch.manual_seed(0)
    net = build_supernet("nb201", 10, C=16, N=5)
    gen = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.randn(args.recal, 3, 32, 32, generator=gen), torch.randint(0, 10, (args.recal,)))
    val = TensorDataset(torch.randn(args.val, 3, 32, 32, generator=gen), torch.randint(0, 10, (args.val,)))
    cfg = {**DEFAULTS["score"], "metric": "flatness", "recalib_batches": -(-args.recal // 64),
           "batch_size_recalib": 64, "eval_batches": None, "eval_batch_size": 256}
    scorer = ArchScorer(net, cfg, train, val, "cpu")
    rng = np.random.default_rng(0)
    archs = [net.space.sample(rng) for _ in range(args.archs)]

    def run(impl: str) -> Callable[[], None]:
        def fn() -> None:
            with pool_impl(impl, "cpu"):
                for arch in archs:
                    scorer(arch)
        return fn

    native, conv = alternate(run("native"), run("conv"), args.repeats, clock)
    pools = sum(sum(1 for g in arch if g == 4) for arch in archs)
    return {"what": f"NB201 C=16 N=5 flatness, {len(archs)} candidates ({pools} avg_pool genes), {args.recal} recal + "
                    f"3 x {args.val} val, channels_last", "native_s": native, "conv_s": conv,
            "native_over_conv": native / conv}


def training(space: str, args: argparse.Namespace, clock, compare: str) -> dict:
    kwargs = {"C": 16, "N": 5} if space == "nb201" else {"C": 16, "layers": 8}
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    tcfg = DEFAULTS["train"]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    setups = {}
    variants = ("native", "conv") if compare == "pooling" else ("for-loop", "foreach")
    for variant in variants:
        torch.manual_seed(0)
        net = build_supernet(space, 10, **kwargs).train()
        opt = build_optimizer(net, tcfg, "cpu", impl=variant if compare == "sgd" else None)
        setups[variant] = (net, opt, np.random.default_rng(2))

    def run(variant: str) -> Callable[[], None]:
        net, opt, rng = setups[variant]
        impl = variant if compare == "pooling" else "native"

        def fn() -> None:
            with pool_impl(impl, "cpu"):
                for _ in range(args.steps):
                    train_step(net, opt, x, y, net.space.sample(rng), grad_clip=tcfg["grad_clip"], scaler=scaler)
        return fn

    a, b = alternate(run(variants[0]), run(variants[1]), args.repeats, clock)
    return {"what": f"{space} {kwargs} SPOS training, {args.steps} steps of batch 64", f"{variants[0]}_s": a,
            f"{variants[1]}_s": b, f"{variants[0]}_over_{variants[1]}": a / b}


def optimizer_step(space: str, args: argparse.Namespace, clock) -> dict:
    """The SGD step alone, on the gradients of one sampled path (the rest of the supernet has none)."""
    kwargs = {"C": 16, "N": 5} if space == "nb201" else {"C": 16, "layers": 8}
    tcfg = DEFAULTS["train"]
    opts = {}
    for impl in ("for-loop", "foreach"):
        torch.manual_seed(0)
        net = build_supernet(space, 10, **kwargs).train()
        arch = get_space(space).sample(np.random.default_rng(3))
        torch.nn.functional.cross_entropy(net(torch.randn(8, 3, 32, 32), arch), torch.randint(0, 10, (8,))).backward()
        opts[impl] = build_optimizer(net, tcfg, "cpu", impl=impl)

    def run(impl: str) -> Callable[[], None]:
        return lambda: [opts[impl].step() for _ in range(args.opt_steps)]

    a, b = alternate(run("for-loop"), run("foreach"), args.repeats, clock)
    return {"what": f"{space} {kwargs}: {args.opt_steps} optimizer steps on one path's gradients",
            "for-loop_s": a, "foreach_s": b, "for-loop_over_foreach": a / b}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--recal", type=int, default=850)
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--archs", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--opt-steps", type=int, default=50)
    p.add_argument("--only", default="op,pooling,sgd",
                   help="comma list of: op (the pooling op alone), pooling (scoring and training), sgd")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    only = set(args.only.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, median {args.clock} time of {args.repeats}, alternating")
    results = []
    if "op" in only:
        for row in pooling_op(args, clock):
            results.append(row)
            print(row)
    if "pooling" in only:
        results.append(scoring(args, clock))
        print(results[-1])
        for space in ("nb201", "darts"):
            results.append(training(space, args, clock, "pooling"))
            print(results[-1])
    if "sgd" in only:
        for space in ("nb201", "darts"):
            results.append(optimizer_step(space, args, clock))
            print(results[-1])
            results.append(training(space, args, clock, "sgd"))
            print(results[-1])
    if args.json:
        atomic_write_json(args.json, {"threads": torch.get_num_threads(), "clock": args.clock,
                                      "repeats": args.repeats, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

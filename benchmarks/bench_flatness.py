"""Cost of the flatness score per candidate, as ratios measured in one run on one machine.

1. overhead: flatness per candidate / (t clean validation passes + one BN-recalibration pass of the same
   sub-network) -- how close the evaluator is to the work it cannot avoid (target <= 1.05);
2. speed-up over the reference algorithm re-done naively here: deep copy of the whole supernet per candidate,
   cumulative noise on every supernet parameter, momentum-0.1 recalibration, batch 64, data re-read through a
   DataLoader on every pass, as the reference code does (target >= 1.2x on CPU);
3. equality: the naive algorithm with our recalibration rule (momentum=None), our noise draws and our batches
   gives the same losses and flatness as our evaluator (cumulative mode): the speed-up changes no result.
   With ``--channels-last`` the naive reference keeps NCHW (as the reference code); the loss difference that
   the memory format alone makes (float summation order) is printed separately.

Run from the repo root: ``python benchmarks/bench_flatness.py --device cpu`` (``--no-channels-last`` for NCHW).
Timings are the minimum over ``--repeats`` runs of each candidate; ``--clock cpu`` (process CPU time, use it
with ``--threads 1``) is robust to other processes on a busy machine.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from genas.core.config import DEFAULTS
from genas.data import build_search_data
from genas.core.io import atomic_write_json
from genas.scoring.perturbation import mean_loss, noise_seed, recalibrated_bn
from genas.scoring.formulas import flatness_from_losses
from genas.scoring.scorer import ArchScorer
from genas.spaces import build_supernet
from genas.spaces.base import Arch, Supernet

Noise = Callable[[str, int, torch.Tensor], torch.Tensor]


def naive_reference_flatness(supernet: Supernet, arch: Arch, recalib: Callable[[], Iterable],
                             val: Callable[[], Iterable], sigmas: Sequence[float], momentum: float | None,
                             noise: Noise, device: torch.device) -> list[float]:
    """The reference algorithm, written plainly: copy the supernet, recalibrate BN (reset, then ``momentum``),
    add cumulative noise to every parameter of the copy, evaluate each sigma over ``val()``."""
    model = copy.deepcopy(supernet)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = momentum
    model.train()
    losses, previous = [], 0.0
    with torch.no_grad():
        for x, _ in recalib():
            model(x.to(device), arch)
        model.eval()
        for i, sigma in enumerate(sigmas):
            for name, p in model.named_parameters():
                p.add_(noise(name, i, p), alpha=sigma - previous)
            previous = sigma
            total, count = 0.0, 0
            for x, y in val():
                x, y = x.to(device), torch.as_tensor(y).long().to(device)
                total += float(F.cross_entropy(model(x, arch), y, reduction="sum"))
                count += len(y)
            losses.append(total / count)
    return losses


def global_rng_noise(name: str, index: int, p: torch.Tensor) -> torch.Tensor:
    """The reference's draw: the global generator, one tensor per parameter per sigma."""
    return torch.randn(p.shape, device=p.device, dtype=p.dtype)


def seeded_noise(seed: int) -> Noise:
    """Our common-random-numbers draws, so the naive run sees exactly the noise of our evaluator."""
    def draw(name: str, index: int, p: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=p.device).manual_seed(noise_seed(seed, index, name))
        return torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
    return draw


def loader(dataset: Dataset, indices: np.ndarray, batch_size: int) -> Callable[[], DataLoader]:
    return lambda: DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    best = math.inf
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--space", default="nb201", choices=("nb201", "darts"))
    parser.add_argument("--C", type=int, default=8)
    parser.add_argument("--depth", type=int, default=2, help="NB201 cells per stage (N) / DARTS layers")
    parser.add_argument("--data", default="digits", help="dataset name of genas.data (default: embedded digits)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULTS["score"]["sigmas"]))
    parser.add_argument("--recalib-images", type=int, default=850, help="reference: max_train_img_size=850")
    parser.add_argument("--batch-size-recalib", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=256, help="ours; the reference uses 64")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                        default=DEFAULTS["score"]["channels_last"],
                        help="score in channels_last (ours only; default: the scorer's default)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    depth_key = "N" if args.space == "nb201" else "layers"
    data = build_search_data({**DEFAULTS["data"], "name": args.data, "root": args.data_root})
    supernet = build_supernet(args.space, data.num_classes, C=args.C, **{depth_key: args.depth}).to(device).eval()
    reference_net = copy.deepcopy(supernet)  # NCHW, as the reference code runs
    clock = CLOCKS[args.clock]
    rng = np.random.default_rng(args.seed)
    archs = [supernet.space.sample(rng) for _ in range(args.candidates)]
    recalib_batches = math.ceil(args.recalib_images / args.batch_size_recalib)
    score_cfg = {"metric": "flatness", "sigmas": args.sigmas, "recalib_batches": recalib_batches,
                 "batch_size_recalib": args.batch_size_recalib, "eval_batches": None,
                 "eval_batch_size": args.eval_batch_size, "seed": args.seed,
                 "channels_last": args.channels_last}
    scorer = ArchScorer(supernet, score_cfg, data.train, data.val, device)
    exact = ArchScorer(supernet, {**score_cfg, "noise": "cumulative"},
                       data.train, data.val, device)
    # the naive run reads the same images as ours, through a DataLoader at batch 64, on every pass
    train_idx = np.random.default_rng(args.seed).permutation(len(data.train))[:recalib_batches * args.batch_size_recalib]
    val_idx = np.random.default_rng(args.seed + 1).permutation(len(data.val))
    naive_recalib, naive_val = loader(data.train, train_idx, 64), loader(data.val, val_idx, 64)
    t = len(args.sigmas)
    print(f"{args.space} supernet C={args.C} {depth_key}={args.depth} on {device} "
          f"({torch.get_num_threads()} threads), {data.num_classes} classes; {len(scorer.val_batches)} val batches "
          f"of {args.eval_batch_size} ({sum(len(y) for _, y in scorer.val_batches)} images), recalibration "
          f"{recalib_batches} x {args.batch_size_recalib}; t={t} sigmas {args.sigmas}; channels_last "
          f"{args.channels_last}; min {args.clock} time of {args.repeats}")
    rows, max_diff, format_diff = [], 0.0, 0.0
    for arch in archs:
        def forward(x: torch.Tensor, arch: Arch = arch) -> torch.Tensor:
            return supernet(x, arch)

        t_flat = timed(lambda: scorer(arch), args.repeats, clock)
        with recalibrated_bn(supernet, forward, scorer.recalib_batches), torch.no_grad():  # restores BN state
            t_clean = timed(lambda: mean_loss(forward, scorer.val_batches), args.repeats, clock)
            supernet.train()
            t_recal = timed(lambda: [forward(x) for x, _ in scorer.recalib_batches], args.repeats, clock)
            supernet.eval()
        t_naive = timed(lambda: naive_reference_flatness(reference_net, arch, naive_recalib, naive_val, args.sigmas,
                                                         0.1, global_rng_noise, device), args.repeats, clock)
        ours = exact(arch)["losses"]
        same_batches = (lambda: exact.recalib_batches, lambda: exact.val_batches)
        naive = naive_reference_flatness(supernet, arch, *same_batches, args.sigmas, None, seeded_noise(args.seed),
                                         device)
        diff = max(abs(a - b) / abs(b) for a, b in zip(ours, naive))
        max_diff = max(max_diff, diff, abs(flatness_from_losses(ours, args.sigmas)
                                            / flatness_from_losses(naive, args.sigmas) - 1))
        if args.channels_last:
            nchw_batches = [[(x.contiguous(), y) for x, y in get()] for get in same_batches]
            nchw = naive_reference_flatness(reference_net, arch, lambda: nchw_batches[0], lambda: nchw_batches[1],
                                            args.sigmas, None, seeded_noise(args.seed), device)
            format_diff = max(format_diff, *(abs(a - b) / abs(b) for a, b in zip(ours, nchw)))
        rows.append({"arch": supernet.space.to_string(arch), "flatness_s": t_flat, "clean_pass_s": t_clean,
                     "recalib_s": t_recal, "naive_s": t_naive, "equal_losses_max_rel_diff": diff})
        print(f"  {rows[-1]['arch']}: flatness {t_flat:.3f}s, clean pass {t_clean:.3f}s, recalibration "
              f"{t_recal:.3f}s, naive reference {t_naive:.3f}s, equality run max rel diff {diff:.1e}")
    necessary = sum(t * r["clean_pass_s"] + r["recalib_s"] for r in rows)
    ratio_1 = sum(r["flatness_s"] for r in rows) / necessary
    ratio_2 = sum(r["naive_s"] for r in rows) / sum(r["flatness_s"] for r in rows)
    print(f"ratio 1  flatness / ({t} clean passes + 1 recalibration) = {ratio_1:.3f}   (target <= 1.05)")
    print(f"ratio 2  naive reference / ours = {ratio_2:.2f}x faster   (target >= 1.2x on CPU, >= 3x on GPU)")
    print(f"equality naive(momentum=None, our noise, our batches) vs ours: max relative difference {max_diff:.1e}"
          f" -> {'EQUAL' if max_diff == 0 else 'DIFFERENT'}")
    if args.channels_last:
        print(f"memory format alone (channels_last vs NCHW, same algorithm): max relative loss difference "
              f"{format_diff:.1e}")
    if args.json:
        atomic_write_json(args.json, {"args": vars(args), "device": str(device), "threads": torch.get_num_threads(),
                                      "ratio_1": ratio_1, "ratio_2": ratio_2, "equality_max_rel_diff": max_diff,
                                      "channels_last_max_rel_diff": format_diff if args.channels_last else None,
                                      "candidates": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How well does each search metric rank architectures? A ranking study with its own ground truth, on a CPU.

    .venv/bin/python benchmarks/bench_ranking.py                     # ~20 min on one thread (quiet machine)
    .venv/bin/python benchmarks/bench_ranking.py --quick             # smoke test: 8 archs, short schedules
    .venv/bin/python benchmarks/bench_ranking.py --results benchmarks/results/ranking_digits.md

Ground truth. A stratified sample of NAS-Bench-201 architectures (``--num-archs``, default 96: equal numbers
per count of convolution edges on the cell's live path, 0..6, one per isomorphism class, cells whose output
is always zero left out since they rank trivially) is trained standalone on the embedded digits data, every
one with the same macro network (NB201 skeleton, ``--C``, ``--N``), the same schedule and the same seeds
(``--seeds``, default 3: the accuracy is the mean; the table's "training-noise ceiling" row is the tau between
the first two seeds' accuracies, a rough ceiling for any metric). The
task is made hard on purpose so that accuracies spread: few training images (``--train-per-class``), 16x16
images, a narrow network, a short schedule. Ground truth = top-1 on a held-out, class-stratified TEST split
that the supernet, the scorer and the search never see; a SHIFTED copy of the test split (torchvision v2:
rotation up to 25 degrees, Gaussian blur, Gaussian noise; drawn once with a fixed seed) measures
generalisation under distribution shift.

Search side. One SPOS supernet of the same macro network is trained on the same training images (uniform
path sampling, the suite's ``train_step``), then every sampled architecture is scored with
:class:`genas.scoring.scorer.ArchScorer` on a separate validation split: accuracy, angle, flatness, naswot,
synflow, and the combinations (Eq. 5, gamma = 1), plus the parameter count as a naive baseline.

Report. Per metric: Kendall tau and Spearman rho against the clean and the shifted test accuracy, each with a
bootstrap 95% interval over architectures (``--bootstrap`` resamples), and the mean test accuracy of the
metric's top-5 architectures on the clean and the shifted split (the paper's generalisation claim in
miniature). Standalone results are cached in ``<out>/standalone.csv`` (a killed run resumes).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genas.scoring.formulas import combined_score, flatness_from_losses  # noqa: E402
from genas.scoring.scorer import ArchScorer  # noqa: E402
from genas.spaces import build_supernet  # noqa: E402
from genas.spaces.nb201 import build_network  # noqa: E402
from genas.spaces.nb201.space import NB201Space, cell_plan, enumerate_archs  # noqa: E402
from genas.train_supernet import train_step  # noqa: E402

METRICS = ("accuracy", "angle", "flatness", "naswot", "synflow", "angle+flatness", "accuracy+flatness",
           "naswot+flatness", "synflow+flatness", "angle+accuracy", "params (baseline)")
CONV_GENES = (2, 3)  # nor_conv_1x1, nor_conv_3x3


# ------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------
def load_splits(size: int, train_per_class: int, val_per_class: int, test_fraction: float, seed: int):
    """Class-stratified train / val / test splits of sklearn's digits at ``size`` x ``size`` (3 channels),
    normalised with the training split's statistics, plus the shifted test split."""
    from sklearn.datasets import load_digits
    from torchvision.transforms import v2

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    labels = torch.from_numpy(digits.target).long()
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == c))
        n_test = int(round(test_fraction * len(idx)))
        parts["test"] += idx[:n_test].tolist()
        parts["train"] += idx[n_test:n_test + train_per_class].tolist()
        parts["val"] += idx[n_test + train_per_class:n_test + train_per_class + val_per_class].tolist()
    shift = v2.Compose([v2.RandomRotation(25), v2.GaussianBlur(3, sigma=(0.3, 1.0)), v2.GaussianNoise(0.0, 0.15)])
    torch.manual_seed(seed + 1)
    test = images[parts["test"]].contiguous()
    shifted = torch.stack([shift(img).clamp_(0, 1) for img in test])
    mean = images[parts["train"]].mean(dim=(0, 2, 3), keepdim=True)
    std = images[parts["train"]].std(dim=(0, 2, 3), keepdim=True)
    norm = lambda x: ((x - mean) / std).contiguous()  # noqa: E731
    out = {k: (norm(images[v]), labels[v]) for k, v in parts.items() if k != "test"}
    out["test"] = (norm(test), labels[parts["test"]])
    out["shifted"] = (norm(shifted), labels[parts["test"]])
    return out


def random_translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding ``pad`` (per sample), the suite's digits augmentation."""
    if pad == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen).tolist()
    return torch.stack([padded[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(offsets)])


# ------------------------------------------------------------------------------------------------------
# Architectures
# ------------------------------------------------------------------------------------------------------
def live_convs(arch) -> int:
    return sum(1 for _, edges in cell_plan(arch) for gene, _ in edges if arch[gene] in CONV_GENES)


def cell_is_zero(arch) -> bool:
    """True when no path of non-``none`` edges leads from the cell input (node 0) to its output (node 3): the
    cell outputs zeros and the network a constant."""
    from genas.spaces.nb201.space import EDGES
    live = {0}
    for (target, src), gene in zip(EDGES, arch):  # EDGES are ordered by target node
        if gene != 0 and src in live:
            live.add(target)
    return 3 not in live


def stratified_archs(num: int, seed: int) -> list[tuple]:
    """``num`` architectures, one per isomorphism class, equally many per live-conv count 0..6."""
    space = NB201Space()
    strata: dict[int, list] = {}
    seen = set()
    for arch in enumerate_archs():
        key = space.key(arch)
        if key in seen or cell_is_zero(arch):
            continue
        seen.add(key)
        strata.setdefault(live_convs(arch), []).append(arch)
    rng = np.random.default_rng(seed)
    levels = sorted(strata)
    per = [num // len(levels) + (1 if i < num % len(levels) else 0) for i in range(len(levels))]
    chosen = []
    for level, k in zip(levels, per):
        pool = strata[level]
        chosen += [pool[i] for i in rng.choice(len(pool), size=min(k, len(pool)), replace=False)]
    return sorted(chosen)


# ------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------
def sgd(model, lr: float, steps: int):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr / 50)
    return opt, sched


def train(model, data, epochs: int, batch: int, lr: float, pad: int, seed: int, sample_arch=None) -> float:
    """SGD + cosine schedule; with ``sample_arch`` the model is a supernet trained one sampled path per step
    (SPOS). Returns the training accuracy of the last epoch."""
    x, y = data
    steps_per_epoch = len(x) // batch
    opt, sched = sgd(model, lr, epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    correct = seen = 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        correct = seen = 0
        for s in range(steps_per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            xb = random_translate(x[idx], pad, gen)
            args = (sample_arch(),) if sample_arch is not None else ()
            _, hits = train_step(model, opt, xb, y[idx], *args, grad_clip=5.0, scaler=scaler)
            sched.step()
            correct, seen = correct + int(hits), seen + len(idx)
    return correct / max(seen, 1)


@torch.no_grad()
def accuracy(net, data, batch: int = 512) -> float:
    net.eval()
    x, y = data
    hits = sum(int((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / len(x)


def standalone(archs, splits, args, cache: Path) -> dict[tuple[str, int], dict[str, float]]:
    """Train every architecture once per seed (``--seeds``); rows cached in ``cache`` as they finish."""
    space = NB201Space()
    done: dict[tuple[str, int], dict[str, float]] = {}
    fields = ["arch", "seed", "test", "shifted", "train", "params", "seconds"]
    if cache.is_file():
        with open(cache, newline="") as f:
            done = {(r["arch"], int(r["seed"])): {k: float(v) for k, v in r.items() if k not in ("arch", "seed")}
                    for r in csv.DictReader(f)}
    else:
        with open(cache, "w", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writeheader()
    for i, arch in enumerate(archs):
        name = space.to_string(arch)
        for seed in range(args.seed, args.seed + args.seeds):
            if (name, seed) in done:
                continue
            start = time.perf_counter()
            torch.manual_seed(seed)
            net = build_network(arch, num_classes=10, C=args.C, N=args.N)
            train_acc = train(net, splits["train"], args.epochs, args.batch, args.lr, args.pad, seed)
            row = {"arch": name, "seed": seed, "test": accuracy(net, splits["test"]),
                   "shifted": accuracy(net, splits["shifted"]), "train": train_acc,
                   "params": sum(p.numel() for p in net.parameters()), "seconds": time.perf_counter() - start}
            with open(cache, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields).writerow(row)
            done[(name, seed)] = {k: float(v) for k, v in row.items() if k not in ("arch", "seed")}
            print(f"  [{i + 1}/{len(archs)}] seed {seed} {name}  test {row['test']:.3f}  shifted "
                  f"{row['shifted']:.3f}  train {train_acc:.3f}  ({row['seconds']:.1f} s)", flush=True)
    return done


# ------------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------------
def score_all(supernet, init_state, archs, splits, args) -> dict[str, list[float]]:
    train_set = torch.utils.data.TensorDataset(*splits["train"])
    val_set = torch.utils.data.TensorDataset(*splits["val"])
    common = {"sigmas": list(args.sigmas), "alpha": 1.0, "gamma": args.gamma, "recalib_batches": None,
              "eval_batches": None, "eval_batch_size": 256, "batch_size_recalib": 256, "channels_last": False}
    make = lambda metric: ArchScorer(supernet, {**common, "metric": metric}, train_set, val_set, "cpu",  # noqa: E731
                                     init_state_dict=init_state)
    acc_flat, angle = make("accuracy+flatness"), make("angle")
    naswot, synflow = make("naswot+flatness"), make("synflow+flatness")  # carry the proxy normalisers
    sigma_1 = args.sigmas[0]
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for arch in archs:
        r = acc_flat(arch)
        flat = flatness_from_losses(r["losses"], args.sigmas, 1.0) if r["finite"] else -math.inf
        ang = angle.angle(arch) / math.pi
        nw, sf = naswot.proxy_value(arch), synflow.proxy_value(arch)
        values = {
            "accuracy": r["accuracy"], "angle": ang, "flatness": flat, "naswot": nw, "synflow": sf,
            "angle+flatness": combined_score(ang, flat, args.gamma, sigma_1),
            "accuracy+flatness": combined_score(r["accuracy"], flat, args.gamma, sigma_1),
            "naswot+flatness": combined_score(naswot.normalised_proxy(nw), flat, args.gamma, sigma_1),
            "synflow+flatness": combined_score(synflow.normalised_proxy(sf), flat, args.gamma, sigma_1),
            "angle+accuracy": ang + r["accuracy"],
            "params (baseline)": float(sum(p.numel() for n, p in supernet.named_parameters()
                                           if n in set(supernet.path_parameter_names(arch)))),
        }
        for m in METRICS:
            out[m].append(float(values[m]))
    return out


# ------------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------------
def _finite(scores: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(scores), scores, -1e300)  # -inf ranks last, as in the search


def correlations(scores, truth, resamples: int, seed: int) -> dict[str, tuple[float, float, float]]:
    s, t = _finite(np.asarray(scores, float)), np.asarray(truth, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(s), size=(resamples, len(s)))
    out = {}
    for name, fn in (("tau", stats.kendalltau), ("rho", stats.spearmanr)):
        point = float(fn(s, t).statistic)
        boot = np.array([fn(s[i], t[i]).statistic for i in idx], dtype=float)
        boot = boot[np.isfinite(boot)]
        out[name] = (point, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))
    return out


def top5(scores, truth) -> float:
    order = np.argsort(-_finite(np.asarray(scores, float)), kind="stable")[:5]
    return float(np.mean(np.asarray(truth, float)[order]))


def _ci(value: tuple[float, float, float]) -> str:
    return f"{value[0]:+.3f} [{value[1]:+.3f}, {value[2]:+.3f}]"


def report(scores, truth, args, meta: dict, per_seed: dict) -> str:
    clean, shifted = np.array(truth["test"]), np.array(truth["shifted"])
    p10, p90 = np.percentile(clean * 100, [10, 90])
    lines = [
        f"# Ranking study on digits ({len(clean)} NB201 architectures trained standalone)", "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; torch threads: {args.threads}; wall time: {meta['wall_min']:.1f} min",
        f"- standalone: NB201 macro C={args.C}, N={args.N}, {args.size}x{args.size} digits, "
        f"{args.train_per_class * 10} training images, {args.epochs} epochs, batch {args.batch}, lr {args.lr} "
        f"(cosine), random-crop padding {args.pad}; ground truth = mean over {args.seeds} seed(s) from {args.seed}",
        f"- supernet: same macro, same training images, SPOS uniform paths, {args.supernet_epochs} epochs "
        f"(final sampled-path training accuracy {meta['supernet_train_acc']:.3f}; validation accuracy of the "
        f"scored paths mean {meta['path_val_acc']:.3f})",
        f"- scorer: {args.val_per_class * 10} validation images, sigmas {list(args.sigmas)}, alpha 1, gamma "
        f"{args.gamma}; test split {meta['n_test']} images never seen by the supernet or the scorer; shifted = "
        f"rotation <= 25 deg + Gaussian blur + Gaussian noise (std 0.15)",
        f"- clean test accuracy: 10th percentile {p10:.1f}%, 90th percentile {p90:.1f}% (spread {p90 - p10:.1f} "
        f"points), best {clean.max() * 100:.1f}%, mean of all {clean.mean() * 100:.1f}%; shifted: mean "
        f"{shifted.mean() * 100:.1f}%, best {shifted.max() * 100:.1f}%",
        f"- intervals: bootstrap 95% over architectures ({args.bootstrap} resamples)", "",
        "| metric | Kendall tau (clean) | Spearman rho (clean) | Kendall tau (shifted) | top-5 clean acc | "
        "top-5 shifted acc |",
        "|---|---|---|---|---|---|",
    ]
    for m in METRICS:
        c = correlations(scores[m], clean, args.bootstrap, args.seed)
        sh = correlations(scores[m], shifted, args.bootstrap, args.seed)
        lines.append(f"| {m} | {_ci(c['tau'])} | {_ci(c['rho'])} | {_ci(sh['tau'])} | "
                     f"{top5(scores[m], clean) * 100:.1f}% | {top5(scores[m], shifted) * 100:.1f}% |")
    best5_c = np.sort(clean)[-5:].mean() * 100
    best5_s = np.sort(shifted)[-5:].mean() * 100
    if len(per_seed["test"]) >= 2:  # the ceiling set by training noise: one seed's accuracy ranking another's
        c = correlations(per_seed["test"][0], per_seed["test"][1], args.bootstrap, args.seed)
        sh = correlations(per_seed["shifted"][0], per_seed["shifted"][1], args.bootstrap, args.seed)
        lines.append(f"| (seed {args.seed} accuracy vs seed {args.seed + 1} accuracy: training-noise ceiling) | "
                     f"{_ci(c['tau'])} | {_ci(c['rho'])} | {_ci(sh['tau'])} | | |")
    lines += [f"| (oracle: best 5 by test accuracy) | | | | {best5_c:.1f}% | {best5_s:.1f}% |",
              f"| (random 5: mean of all) | | | | {clean.mean() * 100:.1f}% | {shifted.mean() * 100:.1f}% |"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench_ranking")
    p.add_argument("--results", type=Path, help="also write the markdown table here")
    p.add_argument("--num-archs", type=int, default=96)
    p.add_argument("--seeds", type=int, default=3, help="standalone trainings per architecture (averaged)")
    p.add_argument("--C", type=int, default=4)
    p.add_argument("--N", type=int, default=1)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--train-per-class", type=int, default=20)
    p.add_argument("--val-per-class", type=int, default=40)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--supernet-epochs", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--pad", type=int, default=2)
    p.add_argument("--sigmas", type=lambda s: tuple(float(v) for v in s.split(",")), default=(2e-3, 1e-2, 2e-2))
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke test: 8 archs, 2 epochs, 4 supernet epochs")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.num_archs, args.epochs, args.supernet_epochs, args.bootstrap = 8, 2, 4, 50
    if args.num_archs < 5:
        print("error: --num-archs must be >= 5 (top-5 picks)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    command = "python benchmarks/bench_ranking.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(args.size, args.train_per_class, args.val_per_class, 1 / 3, args.seed)
    archs = stratified_archs(args.num_archs, args.seed)
    print(f"{len(archs)} architectures; train {len(splits['train'][0])}, val {len(splits['val'][0])}, "
          f"test {len(splits['test'][0])} images", flush=True)

    print("standalone training:", flush=True)
    runs = standalone(archs, splits, args, args.out / "standalone.csv")
    space = NB201Space()
    names = [space.to_string(a) for a in archs]
    seeds = range(args.seed, args.seed + args.seeds)
    truth = {k: [float(np.mean([runs[(n, s)][k] for s in seeds])) for n in names] for k in ("test", "shifted")}
    per_seed = {k: [[runs[(n, s)][k] for n in names] for s in seeds] for k in ("test", "shifted")}
    truth_by_arch = {n: {"test": truth["test"][i]} for i, n in enumerate(names)}
    with open(args.out / "ground_truth.csv", "w", newline="") as f:  # the `arch,accuracy` layout of ablation.py
        writer = csv.writer(f)
        writer.writerow(["arch", "accuracy"])
        writer.writerows([n, truth_by_arch[n]["test"] * 100] for n in names)

    print("supernet training:", flush=True)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    supernet = build_supernet("nb201", 10, C=args.C, N=args.N)
    init_state = {k: v.clone() for k, v in supernet.state_dict().items()}
    arch_rng = np.random.default_rng(args.seed)
    train_acc = train(supernet, splits["train"], args.supernet_epochs, args.batch, args.lr, args.pad, args.seed,
                      sample_arch=lambda: space.sample(arch_rng))
    print(f"  {args.supernet_epochs} epochs in {time.perf_counter() - t0:.0f} s, sampled-path train acc "
          f"{train_acc:.3f}", flush=True)

    print("scoring:", flush=True)
    t0 = time.perf_counter()
    scores = score_all(supernet.eval(), init_state, archs, splits, args)
    print(f"  {len(archs)} architectures x {len(METRICS)} metrics in {time.perf_counter() - t0:.0f} s", flush=True)
    with open(args.out / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "test", "shifted", *METRICS])
        writer.writerows([n, truth["test"][i], truth["shifted"][i], *(scores[m][i] for m in METRICS)]
                         for i, n in enumerate(names))
    meta = {"command": command, "date": datetime.date.today().isoformat(),
            "wall_min": (time.perf_counter() - start) / 60, "supernet_train_acc": train_acc,
            "path_val_acc": float(np.mean(scores["accuracy"])), "n_test": len(splits["test"][0])}
    text = report(scores, truth, args, meta, per_seed)
    print("\n" + text)
    (args.out / "ranking.md").write_text(text, encoding="utf-8")
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

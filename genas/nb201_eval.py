"""How well a search score ranks NAS-Bench-201: Kendall tau / Spearman rho against the 200-epoch test
accuracy, and how good the search's pick is.

The scores CSV is the search's (``arch`` = benchmark arch string, ``score``; an exhaustive search writes all
15,625 rows). Ground truth comes from a CSV with one row per benchmark index (columns
``CIFAR10TestAccuracy200Epochs``, ``CIFAR100TestAccuracy200Epochs``, ``ImageNetTestAccuracy200Epochs``,
``ArchitectureString``) or, when the ``nats_bench`` package is installed and ``--benchmark-file`` is given,
from the official NATS-Bench API (``get_more_info(i, dataset, hp='200')['test-accuracy']``). The two are
joined on the arch string. A NaN score ranks as the worst (-inf), as in the search.

    python genas/nb201_eval.py --scores runs/search-x/scores.csv --ground-truth nb201.csv --dataset cifar10
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from genas.core.errors import UsageError, usage_errors
from genas.core.io import atomic_write_json

__all__ = ["DATASETS", "GROUND_TRUTH_COLUMNS", "read_scores", "read_ground_truth_column", "read_ground_truth_csv",
           "read_ground_truth_api",
           "evaluate", "main"]

DATASETS = ("cifar10", "cifar100", "ImageNet16-120")
GROUND_TRUTH_COLUMNS = {
    "cifar10": "CIFAR10TestAccuracy200Epochs",
    "cifar100": "CIFAR100TestAccuracy200Epochs",
    "ImageNet16-120": "ImageNetTestAccuracy200Epochs",
}
ARCH_COLUMN = "ArchitectureString"
TOPK = (1, 5, 10)


class EvalError(UsageError):
    """Unusable input; the message names the file and what to fix."""


def _dataset(name: str) -> str:
    matches = [d for d in DATASETS if d.lower() == name.lower()]
    if not matches:
        raise EvalError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    return matches[0]


def _read_csv(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    if not path.is_file():
        raise EvalError(f"{what} not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise EvalError(f"{path}: {what} lacks column(s) {missing} (has {reader.fieldnames})")
        return list(reader)


def read_scores(path: str | Path) -> list[tuple[str, float]]:
    """``(arch string, score)`` per row of a search scores CSV, in file order (the search writes its pick
    first among equal scores)."""
    path = Path(path)
    rows = _read_csv(path, ["arch", "score"], "scores CSV")
    out, seen = [], set()
    for i, row in enumerate(rows, start=2):
        arch = row["arch"].strip()
        if arch in seen:
            raise EvalError(f"{path}, line {i}: arch {arch!r} appears twice; one score per architecture is expected")
        seen.add(arch)
        try:
            score = float(row["score"])
        except ValueError:
            raise EvalError(f"{path}, line {i}: score {row['score']!r} is not a number") from None
        out.append((arch, -math.inf if math.isnan(score) else score))
    if not out:
        raise EvalError(f"{path}: the scores CSV has no rows")
    return out


def read_ground_truth_column(path: str | Path, column: str) -> dict[str, float]:
    """``arch string -> accuracy`` from column ``column`` of a table in the benchmark CSV layout
    (``ArchitectureString`` plus one accuracy column per dataset): the one reader of NB201 ground truth."""
    path = Path(path)
    truth = {}
    for i, row in enumerate(_read_csv(path, [ARCH_COLUMN, column], "ground-truth CSV"), start=2):
        try:
            truth[(row[ARCH_COLUMN] or "").strip()] = float(row[column])
        except (TypeError, ValueError):
            raise EvalError(f"{path}, line {i}: {column} {row[column]!r} is not a number") from None
    return truth


def read_ground_truth_csv(path: str | Path, dataset: str) -> dict[str, float]:
    """``arch string -> 200-epoch test accuracy (%)`` of ``dataset`` from the benchmark CSV layout."""
    return read_ground_truth_column(path, GROUND_TRUTH_COLUMNS[_dataset(dataset)])


def read_ground_truth_api(benchmark_file: str | Path, dataset: str) -> dict[str, float]:
    """The same mapping from the official NATS-Bench topology benchmark (needs ``nats_bench``)."""
    from nats_bench import create  # optional dependency: only imported on this path
    api = create(str(benchmark_file), "tss", fast_mode=True, verbose=False)
    dataset = _dataset(dataset)
    return {api.arch(i): float(api.get_more_info(i, dataset, hp="200", is_random=False)["test-accuracy"])
            for i in range(len(api))}


def evaluate(scores: Sequence[tuple[str, float]], truth: Mapping[str, float],
             topk: Sequence[int] = TOPK) -> dict[str, Any]:
    """Rank correlations over the joined rows, and the ground-truth quality of the best-scored architectures.

    ``percentile`` of the pick: percent of all ground-truth architectures with a lower accuracy.
    """
    missing = [arch for arch, _ in scores if arch not in truth]
    if missing:
        raise EvalError(f"{len(missing)} of {len(scores)} scored architectures did not join with the ground truth "
                        f"(e.g. {missing[:3]}); the scores CSV's 'arch' must be NB201 arch strings "
                        f"|op~0|+|op~0|op~1|+|op~0|op~1|op~2| as in the benchmark")
    if len(scores) < 2:
        raise EvalError("rank correlation needs at least 2 scored architectures")
    s = np.array([v for _, v in scores], dtype=float)
    acc = np.array([truth[a] for a, _ in scores], dtype=float)
    order = sorted(range(len(scores)), key=lambda i: -s[i])  # stable: file order among ties
    all_acc = np.array(list(truth.values()), dtype=float)
    pick = scores[order[0]][0]
    pick_acc = truth[pick]
    return {
        "num_joined": len(scores),
        "num_ground_truth": len(truth),
        "kendall_tau": float(stats.kendalltau(s, acc).statistic),
        "spearman_rho": float(stats.spearmanr(s, acc).statistic),
        "pick": {"arch": pick, "score": float(s[order[0]]), "test_accuracy": pick_acc,
                 "rank": int((all_acc > pick_acc).sum()) + 1,
                 "percentile": float(100.0 * (all_acc < pick_acc).sum() / len(all_acc))},
        "best_in_benchmark": float(all_acc.max()),
        "topk_best_accuracy": {str(k): float(acc[order[:k]].max()) for k in topk if k <= len(scores)},
    }


def _format(result: Mapping[str, Any], dataset: str) -> str:
    pick = result["pick"]
    lines = [f"NAS-Bench-201 {dataset}: {result['num_joined']} scored architectures joined "
             f"({result['num_ground_truth']} in the ground truth)",
             f"  Kendall tau   {result['kendall_tau']:.4f}",
             f"  Spearman rho  {result['spearman_rho']:.4f}",
             f"  pick          {pick['arch']}",
             f"                test accuracy {pick['test_accuracy']:.2f}% (rank {pick['rank']}, better than "
             f"{pick['percentile']:.2f}% of the space; best {result['best_in_benchmark']:.2f}%)"]
    lines += [f"  best of top-{k:<3} {acc:.2f}%" for k, acc in result["topk_best_accuracy"].items()]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", required=True, type=Path, help="scores.csv written by genas/search.py")
    p.add_argument("--ground-truth", type=Path, help="benchmark CSV (ArchitectureString + accuracy columns)")
    p.add_argument("--benchmark-file", type=Path, help="official NATS-Bench tss file/folder (needs nats_bench)")
    p.add_argument("--dataset", required=True, help=f"one of {DATASETS}")
    p.add_argument("--topk", type=int, nargs="+", default=list(TOPK), help="k of the top-k accuracies")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    return p


@usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    dataset = _dataset(args.dataset)
    if args.benchmark_file is not None:
        try:
            truth, source = read_ground_truth_api(args.benchmark_file, dataset), str(args.benchmark_file)
        except ImportError:
            if args.ground_truth is None:
                raise EvalError("--benchmark-file needs the nats_bench package (pip install nats_bench); "
                                "or pass --ground-truth CSV") from None
            print("note: nats_bench is not installed; using the --ground-truth CSV", file=sys.stderr)
            truth, source = read_ground_truth_csv(args.ground_truth, dataset), str(args.ground_truth)
    elif args.ground_truth is not None:
        truth, source = read_ground_truth_csv(args.ground_truth, dataset), str(args.ground_truth)
    else:
        raise EvalError("give --ground-truth CSV or --benchmark-file (official NATS-Bench file)")
    result = {"dataset": dataset, "scores": str(args.scores), "ground_truth": source,
              **evaluate(read_scores(args.scores), truth, sorted(set(args.topk)))}
    print(_format(result, dataset))
    if args.out is not None:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

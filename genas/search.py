"""GeNAS search, end to end: train the one-shot supernet (unless given one), score candidates with the
config's metric (flatness, angle, accuracy or a combination) and search the space for the best architecture.

    python genas/search.py                                     # default config: NB201 on digits, < 10 min on CPU
    python genas/search.py --config configs/search/nb201_cifar10.yaml --supernet runs/x/supernet/final.pt
    python genas/search.py --config ... --metric angle+flatness --sigmas 2e-3,1e-2,2e-2 --gamma 1.5
    python genas/search.py --config ... --resume                # continue a killed search (same result)
    python genas/search.py --config ... --opts search.population=20 train.epochs=5
    torchrun --nproc_per_node 8 genas/search.py --config ... --device cuda   # DDP training, candidates sharded

Under ``torchrun`` the supernet trains with DDP, then each generation's candidates are split over the ranks
(round robin, fixed), each rank scores its share on its ``LOCAL_RANK`` device (``--device cuda``), the results
are gathered so every rank holds the same memo, and rank 0 alone writes files: the result equals the
single-process one, and ``--resume`` works with any number of processes. ``summary.json`` records
``world_size`` and ``evaluations_per_rank``.

Files in the output folder (default ``runs/search-<config name>``): ``best_genotype.json`` (readable by
``backbones`` for DARTS), ``topk.csv``, ``search_log.csv`` (one row per iteration), ``scores.csv`` (one row per
scored architecture; for an exhaustive NB201 search one row per each of the 15,625 architectures, keyed by arch
string, for ``genas/nb201_eval.py``: each scored on its own with ``search.dedupe: exact``, the default, or
inheriting its isomorphism class's score with ``isomorphic``), ``best_score.png``, ``cell.png``, ``summary.json`` (the suite's result
format), ``config.yaml``, ``search_state.json`` (resumable state) and ``supernet/`` when trained here.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


from genas.core.errors import UsageError, usage_errors
from genas.core.config import dump_config, load_config
from genas.data import build_search_data
from genas.core.distributed import DistInfo, barrier, cleanup_distributed, init_distributed, resolve_device
from genas.evolution import (Search, SearchOutcome, SearchSettings, StateError, check_algorithm,
                             expand_to_all)
from genas.cost import EVAL_NETWORK, CostConstraint, NetworkCost
from genas.core.io import atomic_write_json, atomic_write_text, sha256_of, write_rows_csv
from genas.core.results import write_result
from genas.scoring.scorer import check_score_config
from genas.spaces import SearchSpace, get_space, init_checkpoint_path, load_supernet, space_options

__all__ = ["main", "score_rows", "write_scores_csv", "write_rows_csv", "write_best_genotype", "SearchCLIError"]

log = logging.getLogger("genas.search")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "search" / "default.yaml"
STATE_FILE = "search_state.json"
# Scorer outputs given their own columns, in this order; other scalar outputs follow.
RESULT_COLUMNS = ("flatness", "accuracy", "angle", "finite", "seconds")


class SearchCLIError(UsageError):
    """Unusable command line or inputs; printed as one line, exit status 2, nothing written."""


# ------------------------------------------------------------------------------------------------------
# Output tables
# ------------------------------------------------------------------------------------------------------
def _cell(value: Any) -> Any:
    return "" if value is None else value


def _loss_column(sigma: float) -> str:
    return f"loss_sigma_{float(sigma):g}"  # genas.plots reads the sigma back from the column name


def score_rows(space: SearchSpace, outcome: SearchOutcome, sigmas: Sequence[float],
               params_of: Any = None, all_archs: Iterable | None = None) -> list[dict[str, Any]]:
    """One row per architecture, best first (ties by key): arch string, key, score, the loss at each sigma,
    the scorer's other outputs and (``params_of(arch)``) the standalone parameter count.

    With ``all_archs``, every member of a scored key (``search.dedupe: isomorphic``: an isomorphism class) gets a
    row carrying the key's result; the scored representative comes first within its class (it is the search's
    pick for the best class). With ``exact`` every architecture is its own key.
    """
    members: dict[str, list] = {}
    if all_archs is not None:
        for arch, key in expand_to_all(space, outcome, all_archs):
            members.setdefault(key, []).append(arch)
    extra_columns = sorted({k for e in outcome.memo.values() for k, v in e["result"].items()
                            if k not in ("score", "losses", *RESULT_COLUMNS) and not isinstance(v, (list, dict))})
    rows = []
    for key in outcome.ranked_keys():
        result, rep = outcome.result(key), outcome.arch(key)
        archs = [rep] + [a for a in members.get(key, []) if a != rep]
        losses = result.get("losses") or [None] * len(sigmas)
        if len(losses) != len(sigmas):
            raise ValueError(f"the scorer returned {len(losses)} losses for {len(sigmas)} sigmas")
        for arch in archs:
            row = {"arch": space.to_string(arch), "key": key, "score": result["score"]}
            row.update({_loss_column(s): _cell(v) for s, v in zip(sigmas, losses)})
            row.update({c: _cell(result.get(c)) for c in (*RESULT_COLUMNS, *extra_columns)})
            if params_of is not None:
                row["params"] = params_of(arch)
            rows.append(row)
    return rows


def write_scores_csv(path: str | Path, space: SearchSpace, outcome: SearchOutcome, sigmas: Sequence[float],
                     params_of: Any = None, all_archs: Iterable | None = None) -> int:
    """``scores.csv`` (see :func:`score_rows`); returns the number of rows."""
    rows = score_rows(space, outcome, sigmas, params_of, all_archs)
    write_rows_csv(path, rows)
    return len(rows)


def write_best_genotype(path: str | Path, space: SearchSpace, outcome: SearchOutcome, metric: str) -> dict[str, Any]:
    """``best_genotype.json``: ``space.to_json(best)`` (DARTS: a ``genotype`` dict that ``backbones`` reads, e.g.
    ``timm.create_model("darts_imagenet", genotype=path)``) plus its key, score and metric."""
    record = {**space.to_json(outcome.best_arch), "key": outcome.best_key, "score": outcome.best_score,
              "metric": metric}
    atomic_write_json(path, record)
    return record


# ------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="search YAML (default: %(default)s)")
    p.add_argument("--metric", help="score.metric: flatness, accuracy, angle, angle+flatness, accuracy+flatness, "
                                    "angle+accuracy, naswot, synflow, naswot+flatness, synflow+flatness")
    p.add_argument("--sigmas", help="score.sigmas as a comma list, e.g. 2e-3,1e-2,2e-2")
    p.add_argument("--alpha", type=float, help="score.alpha (weight of the depth term |L_1/sigma_1|)")
    p.add_argument("--gamma", type=float, help="score.gamma (weight of flatness in combined metrics)")
    p.add_argument("--algorithm", help="search.algorithm: evolution, random or exhaustive (NB201 only)")
    p.add_argument("--supernet", type=Path, help="trained supernet checkpoint (final.pt); default: train one")
    p.add_argument("--out", type=Path, help="output folder (default runs/search-<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the search (and training) saved in --out")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the config's train.device); under "
                                    "torchrun, cuda is each rank's LOCAL_RANK GPU")
    p.add_argument("--save-every", type=int, default=10,
                   help="also save the search state every N scored candidates (default %(default)s; 0: per iteration)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="dotted config overrides, e.g. search.population=20 train.epochs=5")
    return p


def _overrides(args: argparse.Namespace) -> list[str]:
    """Flags as dotted overrides, applied after ``--opts`` so an explicit flag wins."""
    out = list(args.opts)
    if args.sigmas is not None:
        try:
            sigmas = [float(s) for s in args.sigmas.split(",") if s.strip()]
        except ValueError:
            raise SearchCLIError(f"--sigmas {args.sigmas!r}: expected a comma list of numbers like 2e-3,1e-2,2e-2") from None
        out.append(f"score.sigmas=[{', '.join(repr(s) for s in sigmas)}]")
    for flag, key in (("metric", "score.metric"), ("alpha", "score.alpha"), ("gamma", "score.gamma"),
                      ("algorithm", "search.algorithm"), ("device", "train.device")):
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={value}")
    return out


class _Plan:
    """Everything checked before the first file is written."""

    def __init__(self, args: argparse.Namespace):
        self.config_path = args.config
        self.cfg = load_config(args.config, _overrides(args))
        self.space = get_space(self.cfg["space"], **space_options(self.cfg["search"]))
        try:
            self.settings = SearchSettings.from_config(self.cfg["search"])
            check_algorithm(self.space, self.settings)
            check_score_config(self.cfg["score"])
            if int(self.cfg["train"]["val_paths"]) < 0:
                raise ValueError(f"train.val_paths must be >= 0 (0: skip the path-accuracy check), got "
                                 f"{self.cfg['train']['val_paths']}")
        except ValueError as e:
            raise SearchCLIError(f"{args.config}: {e}") from None
        self.out = args.out if args.out is not None else REPO / "runs" / f"search-{args.config.stem}"
        self.metric = self.cfg["score"]["metric"]
        self.needs_init = "angle" in self.metric.split("+")
        self.trained_here = args.supernet is None
        if args.supernet is not None:
            if not args.supernet.is_file():
                raise SearchCLIError(f"--supernet {args.supernet}: file not found (give a final.pt written by "
                                     f"genas/train_supernet.py, or leave --supernet out to train one)")
            self.ckpt = args.supernet
        else:
            self.ckpt = self.out / "supernet" / "final.pt"
        self.init_path = init_checkpoint_path(self.ckpt)  # init.pt, or a reference checkpoint_epoch_0.pth.tar
        if self.needs_init and not self.trained_here and not self.init_path.is_file():
            raise SearchCLIError(f"metric {self.metric!r} needs the epoch-0 weights {self.init_path} next to "
                                 f"--supernet (written by genas/train_supernet.py as init.pt)")
        self.state_path = self.out / STATE_FILE
        if self.state_path.is_file() and not args.resume:
            raise SearchCLIError(f"{self.out} already holds a search ({STATE_FILE}); pass --resume to continue it "
                                 f"(a finished one just rewrites its outputs) or choose another --out")
        try:
            self.device = resolve_device(self.cfg["train"]["device"], int(os.environ.get("LOCAL_RANK", "0")))
        except RuntimeError as e:  # also torch's "Expected one of cpu, cuda, ..." for a malformed name
            raise SearchCLIError(f"--device / train.device: {e}") from None


def _load_supernet(plan: _Plan, num_classes: int, path: Path | None = None):
    """Our checkpoint (its own supernet options) or a reference-layout one (built with the config's supernet
    section), on the CPU: genas.spaces.load_supernet, which also refuses another space or class count."""
    path = path or plan.ckpt
    try:
        return load_supernet(path, plan.space.name, num_classes, **plan.cfg["supernet"])
    except (ValueError, RuntimeError, pickle.UnpicklingError) as e:
        raise SearchCLIError(f"cannot load the supernet checkpoint {path}: {e}") from None


def _constraint(plan: _Plan, num_classes: int, input_shape: tuple[int, ...]) -> tuple[NetworkCost | None, CostConstraint | None]:
    try:
        cost = NetworkCost(plan.space, num_classes, tuple(input_shape))
    except ImportError as e:
        if plan.cfg["search"]["max_params"] is not None or plan.cfg["search"]["max_flops"] is not None:
            raise SearchCLIError(str(e)) from None
        log.warning("%s: the params column is left out", e)
        return None, None
    try:
        constraint = CostConstraint(cost, plan.cfg["search"]["max_params"], plan.cfg["search"]["max_flops"])
    except ValueError as e:
        raise SearchCLIError(f"{plan.config_path}: {e}") from None
    return cost, (constraint if constraint.active else None)


def _plot(out: Path, best_json: Path, log_csv: Path) -> list[str]:
    """The cell diagram and the best-score curve (genas.plots); a plotting failure never loses a search."""
    from genas import plots
    written = []
    for name, draw in (("cell.png", lambda p: plots.plot_cell(best_json, p)),
                       ("best_score.png", lambda p: plots.plot_best_score(log_csv, p))):
        try:
            draw(out / name)
            written.append(name)
        except (ValueError, RuntimeError) as e:
            log.warning("could not draw %s: %s", name, e)
    return written


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """The whole search; under ``torchrun`` every rank calls it (see ``Multi-GPU`` in the README): DDP training,
    candidates sharded over the ranks, each on its ``LOCAL_RANK`` device; rank 0 alone writes files and returns
    the summary (other ranks return ``None``)."""
    plan = _Plan(args)  # every usage check, on every rank, before any collective or file
    import torch.distributed as dist
    caller_group = dist.is_initialized()  # a caller's process group is the caller's to close
    info = init_distributed(plan.cfg["train"]["device"])
    plan.device = info.device
    try:
        return _run(args, plan, info)
    finally:
        if not caller_group:
            cleanup_distributed()


def _run(args: argparse.Namespace, plan: _Plan, info: DistInfo) -> dict[str, Any] | None:
    data = build_search_data(plan.cfg["data"])
    cost, constraint = _constraint(plan, data.num_classes, data.input_shape)

    supernet_seconds = None
    if plan.trained_here:  # trains into <out>/supernet, or returns at once when final.pt is there
        from genas.train_supernet import train_supernet
        start = time.perf_counter()
        reused = plan.ckpt.is_file()
        plan.ckpt = train_supernet(plan.cfg, plan.out, resume=True, show_progress=not args.no_progress)
        supernet_seconds = None if reused else time.perf_counter() - start
    supernet = _load_supernet(plan, data.num_classes).to(plan.device)
    from genas.train_supernet import sampled_path_accuracy
    val_paths = int(plan.cfg["train"]["val_paths"])  # rank 0 reports it; 0 skips it (e.g. a big DARTS val split on CPU)
    path_accuracy = (sampled_path_accuracy(supernet, data.train, data.val, plan.device, num_paths=val_paths,
                                           seed=int(plan.cfg["train"]["seed"])) if info.is_main and val_paths > 0
                     else None)
    init_state = _load_supernet(plan, data.num_classes, plan.init_path).state_dict() if plan.needs_init else None

    from genas.scoring.scorer import ArchScorer
    scorer = ArchScorer(supernet, plan.cfg["score"], data.train, data.val, plan.device, init_state_dict=init_state)
    sigmas = list(plan.cfg["score"]["sigmas"]) if "flatness" in plan.metric.split("+") else []
    if info.is_main:
        plan.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(plan.out / "config.yaml", dump_config(plan.cfg))
    ckpt_sha = sha256_of(plan.ckpt)
    fingerprint = {"score": plan.cfg["score"], "data": plan.cfg["data"], "supernet_sha256": ckpt_sha,
                   "max_params": plan.cfg["search"]["max_params"], "max_flops": plan.cfg["search"]["max_flops"]}
    search = Search(plan.space, scorer, plan.settings, constraint=constraint, state_path=plan.state_path,
                    save_every=args.save_every, fingerprint=fingerprint, progress=not args.no_progress)
    try:
        outcome = search.run(resume=args.resume)
    except StateError as e:
        raise SearchCLIError(str(e)) from None

    provenance = {"supernet_seconds": supernet_seconds, "supernet_val_accuracy": path_accuracy, "supernet_checkpoint": str(plan.ckpt),
                  "supernet_sha256": ckpt_sha, "device": str(plan.device), "world_size": info.world_size,
                  "evaluations_per_rank": outcome.evaluations_per_rank}
    result = _write_outputs(plan, outcome, cost, sigmas, provenance) if info.is_main else None
    barrier()  # every rank leaves once rank 0 has written the outputs
    return result


def _write_outputs(plan: _Plan, outcome: SearchOutcome, cost: NetworkCost | None, sigmas: list[float],
                   provenance: dict[str, Any]) -> dict[str, Any]:
    """Every output file of a finished search; returns what the printed summary needs."""
    out, space = plan.out, plan.space
    all_archs = space.enumerate_archs() if plan.settings.algorithm == "exhaustive" else None
    params_of = cost.params if cost is not None else None
    rows = score_rows(space, outcome, sigmas, params_of, all_archs)
    write_rows_csv(out / "scores.csv", rows)
    firsts: dict[str, dict[str, Any]] = {}  # the first row of each class is its scored representative
    for row in rows:
        firsts.setdefault(row["key"], row)
    write_rows_csv(out / "topk.csv", [{"rank": i + 1, **row}
                                      for i, row in enumerate(list(firsts.values())[: plan.settings.topk])])
    write_rows_csv(out / "search_log.csv", outcome.history,
                   ["iteration", "best_score", "mean_topk_score", "evaluated", "elapsed_s"])
    best_json = write_best_genotype(out / "best_genotype.json", space, outcome, plan.metric)
    figures = _plot(out, out / "best_genotype.json", out / "search_log.csv")
    params = params_of(outcome.best_arch) if params_of is not None else None
    arch_text = space.to_string(outcome.best_arch)
    files = ["best_genotype.json", "topk.csv", "search_log.csv", f"scores.csv ({len(rows)} rows)", *figures,
             "summary.json", "config.yaml", STATE_FILE]
    meta: dict[str, Any] = {
        "metric": plan.metric, "space": space.name, "dataset": plan.cfg["data"]["name"],
        "algorithm": plan.settings.algorithm, "params_m": params / 1e6 if params is not None else None,
        "search_seconds": outcome.seconds, "num_evaluations": outcome.num_evaluations,
        "num_nonfinite": outcome.num_nonfinite, "sigmas": sigmas or None, "alpha": plan.cfg["score"]["alpha"],
        "gamma": plan.cfg["score"]["gamma"], **provenance, "config": plan.cfg, "files": files,
    }
    if space.name == "darts":
        meta["genotype"], model = best_json["genotype"], f"search-{plan.config_path.stem}"
    else:
        meta["arch"], model = arch_text, arch_text
    write_result(out / "summary.json", kind="search", model=model, metrics={"score": outcome.best_score}, **meta)
    return {"out": out, "arch": arch_text, "score": outcome.best_score, "params": params, "outcome": outcome,
            "metric": plan.metric, "files": files, "supernet_seconds": provenance["supernet_seconds"],
            "supernet_val_accuracy": provenance["supernet_val_accuracy"], "space": space.name}


def _print_summary(r: Mapping[str, Any]) -> None:
    outcome: SearchOutcome = r["outcome"]
    params = (f"{r['params'] / 1e6:.3f} M params as {EVAL_NETWORK[r['space']]}" if r["params"] is not None
              else "params not counted")
    print(f"\nbest architecture ({r['metric']} = {r['score']:.6g}, {params}):\n  {r['arch']}")
    timing = f"search {outcome.seconds:.1f} s ({outcome.seconds / 3600:.3f} h)"
    if r["supernet_seconds"] is not None:
        timing += f", supernet training {r['supernet_seconds']:.1f} s"
    acc = r["supernet_val_accuracy"]
    if acc is not None:
        print(f"supernet: validation accuracy of {acc['num_paths']} sampled paths mean {acc['mean']:.3f} (median "
              f"{acc['median']:.3f}, min {acc['min']:.3f}, max {acc['max']:.3f}; {acc['num_images']} images)")
    print(f"{outcome.num_evaluations} architectures scored in {len(outcome.history)} iteration(s); {timing}")
    if outcome.num_nonfinite:
        print(f"warning: {outcome.num_nonfinite} candidate(s) had a non-finite perturbed loss and got the worst "
              f"score (-inf); if many, lower the sigmas", file=sys.stderr)
    print(f"outputs in {r['out']}: {', '.join(r['files'])}")


@usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    main_rank = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run(args)
    if result is not None:  # rank 0 (the only process without torchrun)
        _print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m suite run|status MANIFEST``: the matrix of a manifest, run where it is not done, and its state.

    python -m suite run configs/suite/smoke.yaml --device cpu            # here: the cells not done, one by one
    python -m suite run configs/suite/table4.yaml --data-root /data      # here, one cell per visible GPU
    python -m suite run configs/suite/table4.yaml --launcher slurm --partition gpu            # print the plan
    python -m suite run configs/suite/table4.yaml --launcher slurm --partition gpu --submit   # submit it
    python -m suite status configs/suite/table4.yaml                     # done / missing / failed / stale

A run does the cells that are missing, failed or stale (see :mod:`suite.cells`), prints one line per cell as it
finishes and a summary, and exits 1 when a cell failed (its error and log stay beside its result path).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from typing import Sequence

from tqdm import tqdm

from genas.core.errors import usage_errors
from suite.cells import STATES, cell_state
from suite.launchers import (DEFAULT_MAX_ARRAY_SIZE, DEFAULT_PARALLELISM, LauncherError, format_plan, plan_slurm,
                             read_jobs, run_local, submit_plan)
from suite.manifest import Manifest, load_manifest

__all__ = ["main", "status_rows"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="the manifest YAML, e.g. configs/suite/table4.yaml")
    p.add_argument("--data-root", help="folder the evaluations' data paths are relative to (default: the "
                                       "manifest's data_root, else ../shared/data beside the repository)")
    p.add_argument("--out", help="output folder (default: the manifest's out, else runs/suite/<name>)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m suite", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the cells that are not done")
    _add_common(run)
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="auto: cuda when a GPU is visible (one cell per GPU), else cpu (one cell at a time)")
    run.add_argument("--launcher", choices=("local", "slurm"), default="local")
    run.add_argument("--submit", action="store_true", help="slurm: submit the plan (without it: print it only)")
    run.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                     help="slurm launcher: submitit's cluster (local / debug run the same jobs here, for tests)")
    run.add_argument("--partition", help="slurm partition (default: the manifest's slurm.partition)")
    run.add_argument("--array-parallelism", type=int, help="slurm: array tasks running at once (default: the "
                                                           f"manifest's, else {DEFAULT_PARALLELISM})")
    run.add_argument("--max-array-size", type=int, help="slurm: the cluster's MaxArraySize - 1 (default: the "
                                                        f"manifest's, else {DEFAULT_MAX_ARRAY_SIZE})")
    run.add_argument("--threads", type=int, help="CPU threads of each cell's processes (OMP_NUM_THREADS); default: "
                                                 "inherited. 1 is fastest on a machine shared with other jobs")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (the per-cell lines stay)")
    status = sub.add_parser("status", help="list every cell: done, missing, failed (last log line), stale")
    _add_common(status)
    return p


def _device(name: str) -> str:
    from suite.launchers import visible_gpus

    if name == "auto":
        return "cuda" if visible_gpus() else "cpu"
    if name == "cuda" and not visible_gpus():
        raise LauncherError("--device cuda: no GPU is visible here; use --device cpu")
    return name


def status_rows(manifest: Manifest) -> list[tuple[str, str, str, str]]:
    """``(model, evaluation, state, detail)`` of every cell; a missing / failed cell submitted to SLURM with
    the same settings names its job."""
    jobs = read_jobs(manifest.out)
    rows = []
    for cell in manifest.cells():
        state, detail = cell_state(cell, manifest.out)
        job = jobs.get(cell.key)
        if state in ("missing", "failed") and job and job.get("hash") == cell.hash:
            detail = f"job {job['job_id']} ({job['cluster']}, submitted {job['submitted']})" + (
                f"; {detail}" if detail else "")
        rows.append((cell.model["name"], cell.evaluation, state, detail))
    return rows


def _status(manifest: Manifest) -> int:
    rows = status_rows(manifest)
    width = max(len(f"{m}/{e}") for m, e, _, _ in rows)
    print(f"{manifest.name}: {len(rows)} cells in {manifest.out}")
    for model, evaluation, state, detail in rows:
        print(f"  {f'{model}/{evaluation}':<{width}}  {state:<7}  {detail}".rstrip())
    counts = Counter(state for _, _, state, _ in rows)
    print("  " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES))
    return 0


def _run(manifest: Manifest, args: argparse.Namespace) -> int:
    cells = manifest.cells()
    todo = [c for c in cells if cell_state(c, manifest.out)[0] != "done"]
    if args.threads is not None:
        if args.threads < 1:
            raise LauncherError(f"--threads {args.threads}: give a number of threads >= 1")
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # the cells inherit it
    dry_run = args.launcher == "slurm" and not args.submit
    if dry_run:
        for what in manifest.missing_inputs(todo):
            print(f"warning: {what} not found (on this machine)", file=sys.stderr)
    else:
        manifest.check_inputs(todo)
    # SLURM's nodes have the GPUs, not this shell: auto means cuda there
    device = ("cpu" if args.device == "cpu" else "cuda") if args.launcher == "slurm" else _device(args.device)
    if args.launcher == "slurm":
        slurm = manifest.slurm
        partition = args.partition or slurm.get("partition")
        plan = plan_slurm(todo, manifest.name, device,
                          args.max_array_size or slurm.get("max_array_size") or DEFAULT_MAX_ARRAY_SIZE,
                          args.array_parallelism or slurm.get("array_parallelism") or DEFAULT_PARALLELISM)
        print(format_plan(plan, partition))
        print(f"  ({len(cells) - len(todo)} of {len(cells)} cells done already, not submitted)")
        if not args.submit:
            print("dry run: add --submit to submit")
            return 0
        if not todo:
            return 0
        jobs = submit_plan(plan, todo, manifest.out, args.cluster, partition, slurm)
        print(f"submitted {len(jobs)} job(s) to {args.cluster}: {', '.join(str(j.job_id) for j in jobs[:10])}"
              + (" ..." if len(jobs) > 10 else "") + f"; python -m suite status {args.manifest} follows them")
        if args.cluster == "slurm":
            return 0
        results = [job.result() for job in jobs]  # local / debug: wait here, as a test would
        return _summary(manifest, results, len(cells) - len(todo))
    if not todo:
        print(f"{manifest.name}: all {len(cells)} cells done ({manifest.out}); nothing to run")
        return 0
    print(f"{manifest.name}: {len(todo)} of {len(cells)} cells to run on {device} -> {manifest.out}")
    bar = tqdm(total=len(todo), unit="cell", desc=manifest.name, disable=args.no_progress, file=sys.stderr)

    def done(result: dict) -> None:
        line = f"{result['state']:<6} {result['key']} ({result['seconds']:.0f} s)"
        bar.write(line + (f": {result['error']}" if result["error"] else ""), file=sys.stdout)
        bar.update(1)

    try:
        results = run_local(todo, manifest.out, device, on_done=done)
    finally:
        bar.close()
    return _summary(manifest, results, len(cells) - len(todo))


def _summary(manifest: Manifest, results: list[dict], skipped: int) -> int:
    failed = [r for r in results if r["state"] != "done"]
    seconds = sum(r["seconds"] for r in results)
    print(f"{manifest.name}: {len(results) - len(failed)} cell(s) done, {len(failed)} failed, {skipped} done "
          f"before (skipped); {seconds:.0f} s of cell time. Results: {manifest.out}")
    for r in failed:
        print(f"  failed {r['key']}: {r['error']}")
    if failed:
        print(f"  (logs: {manifest.out}/<model>/<evaluation>.log; a re-run does the failed cells again)")
    return 1 if failed else 0


@usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    manifest = load_manifest(args.manifest, args.data_root, args.out)
    if args.command == "status":
        return _status(manifest)
    return _run(manifest, args)

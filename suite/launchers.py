"""Where the cells run: here (GPUs shared out one cell per GPU, or one cell at a time on the CPU), or on SLURM as
submitit job arrays.

SLURM: the cells to do are grouped by the resources they ask for (one job array per group, cut into arrays of at
most ``max_array_size`` tasks, ``slurm_array_parallelism`` of them running at once). Each array task is one cell
(:func:`slurm_task`): a multi-GPU cell of a torchrun command line is ``gpus`` SLURM tasks whose RANK / WORLD_SIZE /
MASTER_ADDR come from ``submitit.helpers.TorchDistributedEnvironment`` with a port derived from the cell's hash;
Detectron2 (which starts its own processes) gets one task and all the GPUs. The plan and the cell -> job id map
are kept in ``<out>/.suite/`` for ``status`` and re-runs.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from genas.core.errors import UsageError
from genas.core.io import atomic_write_json
from suite.cells import Cell, run_cell
from suite.evaluations import DETECTION, EVALUATIONS, free_port

__all__ = ["LauncherError", "visible_gpus", "run_local", "plan_slurm", "format_plan", "submit_plan", "slurm_task",
           "read_jobs", "STATE_DIR"]

STATE_DIR = ".suite"
DEFAULT_MAX_ARRAY_SIZE = 1000  # SLURM's default MaxArraySize is 1001
DEFAULT_PARALLELISM = 64


class LauncherError(UsageError):
    """A launcher that cannot run here (no GPU for --device cuda, no sbatch for --launcher slurm ...)."""


def visible_gpus() -> list[str]:
    """The GPU ids this process may use (``CUDA_VISIBLE_DEVICES`` when set, else every device torch sees)."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()][:torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def run_local(cells: Sequence[Cell], out: str | os.PathLike, device: str,
              on_done: Callable[[dict[str, Any]], None] = lambda r: None) -> list[dict[str, Any]]:
    """Run ``cells`` on this machine. ``device`` ``cpu``: one after another, one process each. ``cuda``: as many
    at a time as the visible GPUs allow, a cell of ``gpus: N`` waiting for N free GPUs (N is capped at the GPUs
    there are), each with its own ``CUDA_VISIBLE_DEVICES`` and torchrun port."""
    results: list[dict[str, Any]] = []
    if device == "cpu":
        for cell in cells:
            results.append(run_cell(cell, out, "cpu", env={"CUDA_VISIBLE_DEVICES": ""}))
            on_done(results[-1])
        return results
    gpus = visible_gpus()
    if not gpus:
        raise LauncherError("--device cuda: no GPU is visible here; run with --device cpu")
    free = list(gpus)
    pending = list(cells)
    running = 0
    changed = threading.Condition()

    def work(cell: Cell, ids: list[str]) -> None:
        nonlocal running
        try:
            result = run_cell(cell, out, "cuda", nproc=len(ids), port=free_port(),
                              env={"CUDA_VISIBLE_DEVICES": ",".join(ids)})
        except Exception as e:  # noqa: BLE001  (a crash of the runner itself must not hang the others)
            result = {"key": cell.key, "state": "failed", "seconds": 0.0, "error": f"{type(e).__name__}: {e}"}
        with changed:
            free.extend(ids)
            running -= 1
            results.append(result)
            on_done(result)
            changed.notify_all()

    with changed:
        while pending or running:
            for cell in list(pending):
                need = min(max(1, int(cell.resources.get("gpus", 1))), len(gpus))
                if need <= len(free):
                    ids, free[:] = free[:need], free[need:]
                    pending.remove(cell)
                    running += 1
                    threading.Thread(target=work, args=(cell, ids), daemon=True).start()
            changed.wait()
    return results


# --------------------------------------------------------------------------------------------------
# SLURM through submitit
# --------------------------------------------------------------------------------------------------
def _tasks(cell: Cell, device: str) -> int:
    """SLURM tasks of a cell: one per GPU for torchrun command lines, one for Detectron2 (it spawns)."""
    gpus = int(cell.resources.get("gpus", 1)) if device == "cuda" else 0
    return 1 if gpus <= 1 or EVALUATIONS[cell.evaluation].cli == DETECTION else gpus


def plan_slurm(cells: Sequence[Cell], name: str, device: str = "cuda", max_array_size: int = DEFAULT_MAX_ARRAY_SIZE,
               parallelism: int = DEFAULT_PARALLELISM) -> dict[str, Any]:
    """Job arrays for ``cells`` (the ones to do): one per resource set, cut under ``max_array_size``."""
    if max_array_size < 1 or parallelism < 1:
        raise LauncherError("max_array_size and array_parallelism must be >= 1")
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        r = cell.resources
        gpus = int(r.get("gpus", 1)) if device == "cuda" else 0
        key = (gpus, int(r["cpus"]), int(r["mem_gb"]), int(r["time_min"]), _tasks(cell, device))
        groups.setdefault(key, []).append(cell)
    arrays = []
    for (gpus, cpus, mem_gb, time_min, tasks), members in groups.items():
        for start in range(0, len(members), max_array_size):
            chunk = members[start:start + max_array_size]
            arrays.append({"name": f"suite-{name}", "gpus_per_node": gpus, "tasks_per_node": tasks,
                           "cpus_per_task": max(1, cpus // tasks), "mem_gb": mem_gb, "timeout_min": time_min,
                           "array_parallelism": min(parallelism, len(chunk)),
                           "cells": [c.key for c in chunk]})
    return {"manifest": name, "device": device, "max_array_size": max_array_size, "arrays": arrays,
            "num_cells": len(cells)}


def format_plan(plan: dict[str, Any], partition: str | None) -> str:
    lines = [f"SLURM plan for {plan['manifest']}: {plan['num_cells']} cell(s) to run in {len(plan['arrays'])} job "
             f"array(s) (partition {partition or 'the cluster default'}; max array size {plan['max_array_size']})"]
    for i, a in enumerate(plan["arrays"]):
        lines.append(f"  array {i}: {len(a['cells'])} task(s), {a['array_parallelism']} at a time; per task "
                     f"{a['gpus_per_node']} GPU(s), {a['tasks_per_node']} process(es), "
                     f"{a['cpus_per_task'] * a['tasks_per_node']} CPUs, {a['mem_gb']} GB, {a['timeout_min']} min")
        lines += [f"    {key}" for key in a["cells"]]
    return "\n".join(lines)


def read_jobs(out: str | os.PathLike) -> dict[str, Any]:
    """The cell -> job map of earlier submissions (``<out>/.suite/jobs.json``; empty when none)."""
    path = Path(out) / STATE_DIR / "jobs.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def slurm_task(cell: dict[str, Any], out: str, device: str) -> dict[str, Any]:
    """What one array task runs (pickled by submitit): the cell, with the torch environment of its SLURM tasks
    when it has several (one process per task, rank 0 files the result)."""
    import submitit

    env: dict[str, str] = {}
    rank = 0
    c = Cell.from_dict(cell)
    nproc = int(c.resources.get("gpus", 1)) if device == "cuda" else 1
    port = 20000 + int(c.hash, 16) % 20000  # unique per cell, the same in every task of the cell
    job_env = submitit.JobEnvironment()
    if job_env.num_tasks > 1:
        dist_env = submitit.helpers.TorchDistributedEnvironment()
        rank = dist_env.rank
        env = {"RANK": str(dist_env.rank), "WORLD_SIZE": str(dist_env.world_size),
               "LOCAL_RANK": str(dist_env.local_rank), "LOCAL_WORLD_SIZE": str(dist_env.local_world_size),
               "MASTER_ADDR": dist_env.master_addr, "MASTER_PORT": str(port)}
    return run_cell(c, out, device, nproc=nproc, port=port, env=env, rank=rank)


def submit_plan(plan: dict[str, Any], cells: Sequence[Cell], out: str | os.PathLike, cluster: str = "slurm",
                partition: str | None = None, slurm: dict[str, Any] | None = None) -> list[Any]:
    """Submit every array of ``plan`` with submitit's ``AutoExecutor(cluster=cluster)`` (``slurm``; ``local`` /
    ``debug`` run the same jobs on this machine, for tests). Stores the plan and the cell -> job id map under
    ``<out>/.suite/``; returns the submitit jobs."""
    import submitit

    by_key = {c.key: c for c in cells}
    state = Path(out) / STATE_DIR
    slurm = dict(slurm or {})
    extra = {f"slurm_{k}": slurm[k] for k in ("account", "qos", "constraint", "comment") if slurm.get(k)}
    if slurm.get("additional"):
        extra["slurm_additional_parameters"] = dict(slurm["additional"])
    try:
        executor = submitit.AutoExecutor(folder=state / "submitit" / "%j", cluster=cluster)
    except (RuntimeError, ValueError) as e:
        raise LauncherError(f"--launcher slurm (cluster {cluster}): {e}") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    jobs_file = state / "jobs.json"
    submitted = read_jobs(out)
    all_jobs = []
    for array in plan["arrays"]:
        params = dict(name=array["name"], timeout_min=array["timeout_min"], mem_gb=array["mem_gb"],
                      cpus_per_task=array["cpus_per_task"], tasks_per_node=array["tasks_per_node"], nodes=1,
                      slurm_array_parallelism=array["array_parallelism"], **extra)
        if array["gpus_per_node"]:
            params["gpus_per_node"] = array["gpus_per_node"]
        if partition:
            params["slurm_partition"] = partition
        executor.update_parameters(**params)
        with executor.batch():
            jobs = [executor.submit(slurm_task, by_key[key].to_dict(), str(out), plan["device"])
                    for key in array["cells"]]
        for key, job in zip(array["cells"], jobs):
            submitted[key] = {"job_id": str(job.job_id), "hash": by_key[key].hash, "cluster": cluster,
                              "submitted": stamp}
        array["job_ids"] = [str(j.job_id) for j in jobs]
        all_jobs += jobs
    atomic_write_json(state / f"plan-{stamp}.json", {**plan, "cluster": cluster, "partition": partition})
    atomic_write_json(jobs_file, submitted)
    return all_jobs

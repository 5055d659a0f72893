"""One cell of the matrix: (model, evaluation, hash of its resolved settings), its files, its state, its run.

Files of a cell under the output folder ``<out>``::

    <out>/<model>/<evaluation>.json    the result (genas.core.results schema; meta.suite.hash = the cell's hash)
    <out>/<model>/<evaluation>.log     stdout + stderr of every attempt (appended, one header line each)
    <out>/<model>/<evaluation>.error   the last failure of this hash: return code, failing step, last log line
    <out>/.work/<model>/<evaluation>/  the command line's own folder (checkpoints, Detectron2 / MMEngine logs)

State: ``done`` (the result carries the cell's hash), ``failed`` (no such result, an error record of this hash),
``stale`` (a result of other settings), ``missing`` (nothing yet). A run does every cell that is not done.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from genas.core.io import atomic_write_json, sha256_of
from genas.core.results import ResultFileError, read_result, validate_result
from suite.evaluations import EVALUATIONS, PATH_OPTIONS, UNHASHED, Step, build_steps, last_checkpoint, model_files

__all__ = ["HASH_VERSION", "Cell", "cell_state", "run_cell", "STATES"]

HASH_VERSION = 1
STATES = ("done", "missing", "failed", "stale")
WORK = ".work"
MODELS = ".models"


def _file_identity(path: str | None) -> Any:
    """A file as the hash sees it: path, size and modification time (a new checkpoint at the same path makes the
    cells that read it stale, without reading gigabytes on every ``status``)."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        return {"path": str(p)}
    stat = p.stat()
    return {"path": str(p), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass
class Cell:
    model: dict[str, Any]          # a resolved model (suite.manifest.resolve_models)
    evaluation: str
    data_root: str
    data: str                      # the evaluation's data folder (absolute)
    options: dict[str, Any]        # every option of the evaluation, defaults filled in, paths absolute
    resources: dict[str, Any]
    hash: str = field(default="")

    def __post_init__(self) -> None:
        if not self.hash:
            self.hash = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def key(self) -> str:
        return f"{self.model['name']}/{self.evaluation}"

    def settings(self) -> dict[str, Any]:
        """What the numbers depend on: the model (architecture, arguments, weights file), the evaluation, its data
        and its options (the content of its config file, not only the path). Resources and workers are not."""
        model = self.model
        local = model["local_dir"]
        options = {k: v for k, v in self.options.items() if k not in UNHASHED}
        for key in PATH_OPTIONS:
            if key in options and Path(options[key]).is_file():
                options[key] = {"path": options[key], "sha256": sha256_of(options[key])}
        return {"version": HASH_VERSION, "evaluation": self.evaluation, "data": self.data, "options": options,
                "model": {"architecture": model["architecture"], "model_args": model["model_args"],
                          "weights": _file_identity(model["weights"]), "pretrained": model["pretrained"],
                          "local_dir": local and {"path": local,
                                                  "config": sha256_of(Path(local) / "config.json")}}}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Cell":
        return cls(**data)

    def paths(self, out: str | os.PathLike) -> dict[str, Path]:
        folder = Path(out) / self.model["name"]
        return {"result": folder / f"{self.evaluation}.json", "log": folder / f"{self.evaluation}.log",
                "error": folder / f"{self.evaluation}.error",
                "work": Path(out) / WORK / self.model["name"] / self.evaluation}


def last_log_line(path: Path) -> str:
    """The last non-empty line of a log (what a failure is summarised by)."""
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
        lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def cell_state(cell: Cell, out: str | os.PathLike) -> tuple[str, str]:
    """``(state, detail)`` of a cell in ``out``: see the module docstring."""
    paths = cell.paths(out)
    result_hash = None
    if paths["result"].is_file():
        try:
            result_hash = read_result(paths["result"])["meta"].get("suite", {}).get("hash")
        except ResultFileError:
            result_hash = "unreadable"
        if result_hash == cell.hash:
            return "done", str(paths["result"])
    if paths["error"].is_file():
        try:
            error = json.loads(paths["error"].read_text(encoding="utf-8"))
        except (OSError, ValueError):
            error = {}
        if error.get("hash") == cell.hash:
            return "failed", f"{error.get('step', '')} exit {error.get('returncode')}: {error.get('last_line', '')}"
    if result_hash is not None:
        return "stale", f"{paths['result']} has settings {result_hash}, the manifest's are {cell.hash}"
    return "missing", ""


def _launch(step: Step, nproc: int, port: int, rank_env: bool, cli: str) -> list[str]:
    """``step.argv`` for ``nproc`` processes: torchrun (local), Detectron2's own ``--num-gpus``, or unchanged
    when SLURM's tasks are the processes (``rank_env``: RANK / WORLD_SIZE / MASTER_* come from submitit)."""
    argv = list(step.argv)
    if nproc <= 1:
        return argv
    if cli == "segmentation":
        argv.insert(3, "--launcher")
        argv.insert(4, "pytorch")
    if step.spawns:
        return argv[:2] + ["--num-gpus", str(nproc), "--dist-url", f"tcp://127.0.0.1:{port}"] + argv[2:]
    if rank_env:
        return argv
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(port)] + argv[1:]


def run_cell(cell: Cell | Mapping[str, Any], out: str | os.PathLike, device: str = "cpu", nproc: int = 1,
             port: int = 29500, env: Mapping[str, str] | None = None, rank: int = 0) -> dict[str, Any]:
    """Run one cell's command lines in fresh subprocesses and file its result (or its error).

    ``nproc`` processes per command (``device`` ``cuda``: one per visible GPU); ``env`` is added to the
    environment (``CUDA_VISIBLE_DEVICES``, or SLURM's torch distributed variables, ``rank`` being this task's).
    Only rank 0 writes the result, the error record and the log. Returns ``{"key", "state", "seconds", "error"}``.
    """
    cell = cell if isinstance(cell, Cell) else Cell.from_dict(cell)
    out = Path(out)
    paths = cell.paths(out)
    rank_env = bool(env and "RANK" in env)
    main = rank == 0
    start = time.perf_counter()
    paths["result"].parent.mkdir(parents=True, exist_ok=True)
    paths["work"].mkdir(parents=True, exist_ok=True)
    if main and paths["error"].exists():
        paths["error"].unlink()
    log_path = paths["log"] if main else paths["work"] / f"rank{rank}.log"
    step_name, returncode = "prepare", None
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"## {time.strftime('%Y-%m-%d %H:%M:%S')} cell {cell.key} hash {cell.hash} device {device} "
                      f"x{nproc}\n")
            log.flush()
            try:
                files = model_files(cell.model, out / MODELS)
                steps, produced = build_steps(cell.to_dict(), files, paths["work"], device)
            except Exception as e:  # noqa: BLE001  (a model that cannot be built is this cell's failure)
                log.write(f"error: {type(e).__name__}: {e}\n")
                raise _CellFailed("prepare", None) from None
            if main and produced.exists():
                produced.unlink()
            proc_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
            if EVALUATIONS[cell.evaluation].cli == "detection":
                proc_env["DETECTRON2_DATASETS"] = cell.data
            for i, step in enumerate(steps):
                step_name = Path(step.argv[1]).name if len(step.argv) > 1 else "command"
                argv = [last_checkpoint(paths["work"]) if a == "{last_checkpoint}" else a for a in step.argv]
                argv = _launch(Step(argv, step.spawns), nproc, port + i, rank_env,
                               EVALUATIONS[cell.evaluation].cli)
                log.write("$ " + " ".join(argv) + "\n")
                log.flush()
                returncode = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, env=proc_env,
                                             cwd=str(Path(__file__).resolve().parents[1]))
                if returncode != 0:
                    raise _CellFailed(step_name, returncode)
            if main:
                step_name = "result"
                if not produced.is_file():
                    log.write(f"error: the command line wrote no result file {produced}\n")
                    raise _CellFailed(step_name, 0)
                _file_result(cell, produced, paths["result"], time.perf_counter() - start, steps)
    except Exception as e:  # noqa: BLE001  (whatever stops a cell is its failure; the run goes on)
        if isinstance(e, _CellFailed):
            step_name, returncode = e.step, e.returncode
        else:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"error: {e}\n" if isinstance(e, (FileNotFoundError, ResultFileError))
                          else f"error: {type(e).__name__}: {e}\n")
        seconds = time.perf_counter() - start
        line = last_log_line(log_path)
        if main:
            atomic_write_json(paths["error"], {"hash": cell.hash, "cell": cell.key, "step": step_name,
                                               "returncode": returncode, "last_line": line, "log": str(log_path),
                                               "seconds": round(seconds, 1), "finished": time.time()})
        return {"key": cell.key, "state": "failed", "seconds": seconds, "error": line}
    return {"key": cell.key, "state": "done", "seconds": time.perf_counter() - start, "error": ""}


def _params_m(name: str) -> float | None:
    """Parameters (millions) of the classifier a robustness cell evaluated (a timm or ``local-dir:`` name)."""
    import timm

    import backbones  # noqa: F401  (registers the GeNAS / DARTS models)
    from genas.cost import count_params

    try:
        return round(count_params(timm.create_model(name, num_classes=1000)) / 1e6, 4)
    except Exception:  # noqa: BLE001  (a size is a courtesy to the report, never a reason to fail the cell)
        return None


class _CellFailed(Exception):
    def __init__(self, step: str, returncode: int | None):
        super().__init__(step)
        self.step, self.returncode = step, returncode


def _file_result(cell: Cell, produced: Path, target: Path, seconds: float, steps: list[Step]) -> None:
    """Move the command line's result to the cell's path: the model named as in the manifest, the cell's hash and
    settings in ``meta.suite`` (the command line's own file is removed, so a report over ``<out>`` counts it once)."""
    result = read_result(produced)
    result["meta"]["suite"] = {"hash": cell.hash, "evaluation": cell.evaluation, "model": cell.model["name"],
                               "cli_model": result["model"], "seconds": round(seconds, 1),
                               "commands": [" ".join(s.argv) for s in steps], "settings": cell.settings()}
    if result["kind"] == "robustness" and "params_m" not in result["meta"] and cell.model["name"] != result["model"]:
        result["meta"]["params_m"] = _params_m(result["model"])  # the report cannot size a manifest-only name
    result["model"] = cell.model["name"]
    atomic_write_json(target, validate_result(result, source=str(produced)))
    produced.unlink()

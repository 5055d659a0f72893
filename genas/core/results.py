"""The one JSON format every stage writes its measured results in, and the report reads.

A result file is a JSON object::

    {"schema": "genas-result/1",
     "kind": "search" | "robustness" | "detection" | "segmentation" | "imagenet",
     "model": "<timm model name or genotype name>",
     "metrics": {"<name>": <float or null>, ...},
     "meta": {...free-form provenance: dataset, checkpoint sha256, timings, counts...}}

Metric names per kind (the report's columns):
    robustness: set in meta["set"] (imagenet | imagenet-v2 | imagenet-a | imagenet-r | imagenet-sketch |
                imagenet-c | imagenet-real | imagenet-o); metrics top1, top5 (percent) or, for imagenet-o, aupr,
                auroc, fpr95 (percent); imagenet-real: real_top1 (percent); imagenet-c: error/<c>/<s>, error/<c>,
                ce/<c>, mce, relative_ce/<c>, relative_mce (percent); every set: ece (percent) and nll
    detection: AP, AP50, AP75, APs, APm, APl (COCO, percent)
    segmentation: mIoU, mAcc, aAcc (percent)
    search: score of the best architecture, plus meta["metric"], meta["genotype"], meta["params_m"]
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from genas.core.errors import UsageError
from genas.core.io import atomic_write_json

SCHEMA = "genas-result/1"
KINDS = ("search", "robustness", "detection", "segmentation", "imagenet")

__all__ = ["SCHEMA", "SCHEMA_TAG", "KINDS", "ResultFileError", "write_result", "read_result", "validate_result",
           "find_result_files"]


class ResultFileError(UsageError):
    """A result JSON that cannot be read or does not follow the schema; the message names the file."""


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; a missing measurement is null
    return value


def write_result(path: str | os.PathLike, kind: str, model: str, metrics: Mapping[str, Any],
                 **meta: Any) -> Path:
    """Atomically write one result file in the suite's schema."""
    result = {"schema": SCHEMA, "kind": kind, "model": model,
              "metrics": {k: _clean(float(v) if v is not None else None) for k, v in metrics.items()},
              "meta": meta}
    validate_result(result, source=str(path))
    return atomic_write_json(path, result)


def validate_result(result: Any, source: str = "<result>") -> dict:
    if not isinstance(result, dict):
        raise ResultFileError(f"{source}: expected a JSON object, got {type(result).__name__}")
    if result.get("schema") != SCHEMA:
        raise ResultFileError(f"{source}: 'schema' must be {SCHEMA!r}, got {result.get('schema')!r}")
    if result.get("kind") not in KINDS:
        raise ResultFileError(f"{source}: 'kind' must be one of {KINDS}, got {result.get('kind')!r}")
    if not isinstance(result.get("model"), str) or not result["model"]:
        raise ResultFileError(f"{source}: 'model' must be a non-empty string")
    metrics = result.get("metrics")
    if not isinstance(metrics, dict):
        raise ResultFileError(f"{source}: 'metrics' must be an object of name -> number")
    for k, v in metrics.items():
        if v is not None and not isinstance(v, (int, float)):
            raise ResultFileError(f"{source}: metric {k!r} must be a number or null, got {v!r}")
    if not isinstance(result.get("meta", {}), dict):
        raise ResultFileError(f"{source}: 'meta' must be an object")
    return result


def read_result(path: str | os.PathLike) -> dict:
    """Read and validate one result file; errors name the file and what is wrong."""
    path = Path(path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultFileError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ResultFileError(f"{path}: not valid JSON ({e})") from None
    return validate_result(result, source=str(path))


SCHEMA_TAG = SCHEMA.split("/")[0].encode()  # b"genas-result": what a result file's text carries


def find_result_files(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """Every ``*.json`` under ``dirs`` (recursively, sorted, each once even when folders overlap) whose text
    carries the result schema tag; other JSON files (Detectron2's and MMEngine's JSON-lines logs) are skipped.
    A ``dirs`` entry that is not a folder is a :class:`ResultFileError`."""
    found = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise ResultFileError(f"--results {d}: not a folder")
        found += [p for p in sorted(d.rglob("*.json")) if p.is_file() and SCHEMA_TAG in p.read_bytes()]
    return list(dict.fromkeys(p.resolve() for p in found))

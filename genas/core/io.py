"""Atomic file writes and safe checkpoint loading.

Every result, log summary and checkpoint of the suite goes through these helpers so that a crash or a
kill never leaves a half-written file behind: data is written to a temporary file in the same folder and
moved into place with ``os.replace`` (atomic on POSIX).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "atomic_torch_save", "load_checkpoint",
           "sha256_of", "write_rows_csv", "CsvLog"]


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], None]) -> Path:
    """Call ``write_fn(tmp_path)`` then move the temporary file onto ``path``.

    The temporary file is created like a plain ``open(path, "w")`` creates a file (``O_CREAT`` with mode 0666,
    which the kernel reduces by the current umask, e.g. to 0644), not ``mkstemp``'s private 0600: results, logs
    and checkpoints are meant to be read by the team. ``O_EXCL`` and a random name keep it private to this call.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return atomic_write(path, _write)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (never unpickles arbitrary objects).

    Raises ``FileNotFoundError`` with the path when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (checkpoint provenance in result files and resume fingerprints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_rows_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
                   fieldnames: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV atomically (columns: ``fieldnames`` or the first row's keys)."""
    fields = list(fieldnames if fieldnames is not None else (rows[0].keys() if rows else []))

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return atomic_write(path, write)


class CsvLog:
    """Append-only CSV log of a resumable run: on resume, rows logged after the restored ``step`` (work that
    is redone) are dropped first, so the log of a resumed run equals that of an uninterrupted one."""

    def __init__(self, path: str | os.PathLike, fields: Sequence[str], resume_step: int = 0):
        self.path, self.fields = Path(path), tuple(fields)
        rows = []
        if resume_step > 0 and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        write_rows_csv(self.path, rows, self.fields)

    def write(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)

"""The manifest: which models, which named evaluations, which data, where the results go. Validated as a whole
before anything is written (unknown keys are refused with the known ones).

.. code-block:: yaml

    name: table4                      # default: the file name
    out: runs/suite/table4            # default: runs/suite/<name>
    data_root: /data                  # default: ../shared/data; --data-root overrides
    models:
      - genas_c100                    # a timm name (backbones registers the GeNAS ones)
      - "genas*"                      # a wildcard: timm.list_models("genas*")
      - local-dir:hub/mine            # a folder in timm's hub format (python -m backbones.export)
      - name: genas_c100              # a mapping: weights (ImageNet checkpoint) and/or a genotype
        weights: runs/genas_c100/model_final.pth
      - name: mine
        genotype: runs/search/best_genotype.json   # or a Genotype string / published name
        C: 46
        weights: runs/mine/model_final.pth
    evaluations:
      imagenet-v2: {data: imagenetv2-matched-frequency-format-val}
      coco-retinanet:
        opts: {SOLVER.IMS_PER_BATCH: 16}
        resources: {gpus: 8, time_min: 1440}
    slurm: {partition: gpu, array_parallelism: 32, max_array_size: 1000}

Relative paths in a manifest (``out``, ``data_root``, weights, genotype files, configs) are relative to the
repository root; an evaluation's ``data`` / ``in_dist`` relative to the data root.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from genas.core.config import load_yaml_file
from genas.core.errors import UsageError
from suite.cells import Cell
from suite.evaluations import EVALUATIONS, RESOURCE_KEYS, REPO

__all__ = ["ManifestError", "Manifest", "load_manifest", "DEFAULT_DATA_ROOT"]

DEFAULT_DATA_ROOT = "../shared/data"
TOP_KEYS = ("name", "out", "data_root", "models", "evaluations", "slurm")
MODEL_KEYS = ("name", "model", "weights", "pretrained", "genotype", "C", "layers")
SLURM_KEYS = ("partition", "array_parallelism", "max_array_size", "account", "qos", "constraint", "comment",
              "additional")
COMMON_KEYS = ("data", "resources")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ManifestError(UsageError):
    """A manifest that cannot run; the message names the file, the entry and what would work."""


def _refuse_unknown(where: str, given: Mapping[str, Any], known: tuple[str, ...] | list[str]) -> None:
    unknown = [k for k in given if k not in known]
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known keys: {', '.join(known)}")


def _path(value: Any, base: Path, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: expected a path, got {value!r}")
    p = Path(os.path.expanduser(value))
    return str((p if p.is_absolute() else base / p).resolve())


class Manifest:
    """A checked manifest: resolved models and evaluation settings; :meth:`cells` is the matrix."""

    def __init__(self, path: str | os.PathLike, data_root: str | None = None, out: str | None = None):
        self.path = Path(path)
        raw = load_yaml_file(self.path)
        where = str(self.path)
        _refuse_unknown(where, raw, TOP_KEYS)
        self.name = str(raw.get("name") or self.path.stem)
        if not NAME_RE.match(self.name):
            raise ManifestError(f"{where}: name {self.name!r} must be letters, digits, '.', '_' or '-'")
        self.out = (str(Path(out).resolve()) if out else
                    _path(raw.get("out") or f"runs/suite/{self.name}", REPO, f"{where}: out"))
        self.data_root = (str(Path(data_root).resolve()) if data_root else
                          _path(raw.get("data_root") or DEFAULT_DATA_ROOT, REPO, f"{where}: data_root"))
        slurm = raw.get("slurm") or {}
        if not isinstance(slurm, dict):
            raise ManifestError(f"{where}: slurm must be a mapping with keys among {', '.join(SLURM_KEYS)}")
        _refuse_unknown(f"{where}: slurm", slurm, SLURM_KEYS)
        self.slurm = dict(slurm)
        self.models = self._models(raw.get("models"), where)
        self.evaluations = self._evaluations(raw.get("evaluations"), where)

    # ----------------------------------------------------------------------------------------------
    def _models(self, entries: Any, where: str) -> list[dict[str, Any]]:
        if not isinstance(entries, list) or not entries:
            raise ManifestError(f"{where}: models must be a non-empty list (timm names, 'local-dir:' folders, "
                                f"wildcards like 'genas*', or mappings with keys {', '.join(MODEL_KEYS)})")
        import timm

        import backbones  # noqa: F401  (registers the GeNAS / DARTS models with timm)

        models: list[dict[str, Any]] = []
        for i, entry in enumerate(entries):
            at = f"{where}: models[{i}]"
            entry = {"name": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ManifestError(f"{at}: expected a model name or a mapping with 'name' and keys among "
                                    f"{', '.join(MODEL_KEYS)}, got {entry!r}")
            _refuse_unknown(at, entry, MODEL_KEYS)
            name = entry["name"]
            if any(c in name for c in "*?[") and not name.startswith("local-dir:"):
                if set(entry) - {"name", "pretrained"}:
                    raise ManifestError(f"{at}: a wildcard ({name}) takes no weights or genotype (they differ "
                                        f"per model); list those models one by one")
                names = timm.list_models(name)
                if not names:
                    raise ManifestError(f"{at}: wildcard {name!r} matches no timm model (the suite's GeNAS ones "
                                        f"are timm.list_models('genas*'))")
                models += [self._model({**entry, "name": n}, f"{at} ({n})") for n in names]
            else:
                models.append(self._model(entry, at))
        seen: dict[str, int] = {}
        for m in models:
            seen[m["name"]] = seen.get(m["name"], 0) + 1
        twice = [n for n, c in seen.items() if c > 1]
        if twice:
            raise ManifestError(f"{where}: model(s) {', '.join(twice)} listed twice; give each a distinct 'name'")
        return models

    def _model(self, entry: dict[str, Any], at: str) -> dict[str, Any]:
        from backbones.darts_net import GENERIC
        from backbones.names import check_model_name
        from genas.spaces.darts import parse_genotype
        from genas.spaces.darts.genotype import genotype_to_json

        name = entry["name"]
        weights = _path(entry["weights"], REPO, f"{at}: weights") if entry.get("weights") is not None else None
        local_dir = None
        model_args: dict[str, Any] = {}
        if name.startswith("local-dir:"):
            local_dir = _path(name[len("local-dir:"):], REPO, f"{at}: local-dir")
            label = Path(local_dir).name
        else:
            label = name
        architecture = entry.get("model", name if local_dir is None else None)
        if "genotype" in entry or "C" in entry or "layers" in entry:
            architecture = entry.get("model", "darts_imagenet")
            if architecture not in GENERIC:
                raise ManifestError(f"{at}: genotype / C / layers are for the generic models {', '.join(GENERIC)} "
                                    f"(key 'model'), not {architecture!r}")
            genotype = entry.get("genotype")
            if isinstance(genotype, str) and genotype.endswith(".json"):
                genotype = _path(genotype, REPO, f"{at}: genotype")
            try:
                model_args["genotype"] = genotype_to_json(parse_genotype(genotype)) if genotype is not None else None
            except (ValueError, OSError, TypeError, KeyError) as e:
                raise ManifestError(f"{at}: genotype {entry.get('genotype')!r}: {e}") from None
            if model_args["genotype"] is None:
                del model_args["genotype"]
            for key in ("C", "layers"):
                if key in entry:
                    if not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] < 1:
                        raise ManifestError(f"{at}: {key} must be a positive integer, got {entry[key]!r}")
                    model_args[key] = entry[key]
        if not NAME_RE.match(label):
            raise ManifestError(f"{at}: model name {label!r} is used as a folder name: letters, digits, '.', '_', "
                                f"'-'; give the entry a 'name' and its timm name as 'model'")
        folder_weights = None
        if local_dir is not None:
            import json
            try:
                check_model_name(f"local-dir:{local_dir}", f"{at}: model")
                config = json.loads((Path(local_dir) / "config.json").read_text(encoding="utf-8"))
            except (UsageError, OSError, ValueError) as e:
                raise ManifestError(str(e)) from None
            architecture = config.get("architecture")
            model_args = dict(config.get("model_args") or {})
            folder_weights = next((str(Path(local_dir) / f) for f in ("model.safetensors", "pytorch_model.bin")
                                   if (Path(local_dir) / f).is_file()), None)
        try:
            check_model_name(architecture, f"{at}: model")
        except UsageError as e:
            raise ManifestError(str(e)) from None
        pretrained = entry.get("pretrained", False)
        if not isinstance(pretrained, bool):
            raise ManifestError(f"{at}: pretrained must be true or false")
        return {"name": label, "architecture": architecture, "model_args": model_args,
                "weights": weights or folder_weights, "weights_from_cli": weights is not None,
                "pretrained": pretrained, "local_dir": local_dir}

    # ----------------------------------------------------------------------------------------------
    def _evaluations(self, entries: Any, where: str) -> dict[str, dict[str, Any]]:
        if isinstance(entries, list):
            entries = {e: None for e in entries} if all(isinstance(e, str) for e in entries) else entries
        if not isinstance(entries, dict) or not entries:
            raise ManifestError(f"{where}: evaluations must be a non-empty mapping (or list) of names among "
                                f"{', '.join(EVALUATIONS)}")
        _refuse_unknown(f"{where}: evaluations", entries, list(EVALUATIONS))
        resolved = {}
        for name, given in entries.items():
            at = f"{where}: evaluations.{name}"
            given = given or {}
            if not isinstance(given, dict):
                raise ManifestError(f"{at}: expected a mapping of options, got {given!r}")
            ev = EVALUATIONS[name]
            defaults = ev.options()
            _refuse_unknown(at, given, list(COMMON_KEYS) + list(defaults))
            options = {**defaults, **{k: v for k, v in given.items() if k not in COMMON_KEYS}}
            for key in ("opts", "cfg_options"):
                if key in options and not isinstance(options[key], dict):
                    raise ManifestError(f"{at}: {key} must be a mapping of KEY: value")
            if "config" in options:
                options["config"] = _path(options["config"], REPO, f"{at}: config")
            resources = dict(ev.resources)
            given_resources = given.get("resources") or {}
            if not isinstance(given_resources, dict):
                raise ManifestError(f"{at}: resources must be a mapping with keys among {', '.join(RESOURCE_KEYS)}")
            _refuse_unknown(f"{at}.resources", given_resources, RESOURCE_KEYS)
            resources.update(given_resources)
            for key, value in resources.items():
                if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "gpus" else 1):
                    raise ManifestError(f"{at}.resources.{key} must be a positive integer, got {value!r}")
            resolved[name] = {"data": given.get("data", ev.data), "options": options, "resources": resources}
        return resolved

    # ----------------------------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        """Every (model, evaluation) cell, models in manifest order, evaluations in manifest order."""
        cells = []
        for model in self.models:
            for name, ev in self.evaluations.items():
                where = f"{self.path}: evaluations.{name}"
                data = _path(ev["data"], Path(self.data_root), f"{where}: data")
                options = dict(ev["options"])
                if options.get("in_dist"):
                    options["in_dist"] = _path(options["in_dist"], Path(self.data_root), f"{where}: in_dist")
                cells.append(Cell(model=model, evaluation=name, data_root=self.data_root, data=data,
                                  options=options, resources=dict(ev["resources"])))
        return cells

    def missing_inputs(self, cells: list[Cell]) -> list[str]:
        """The data folders, config and weights files the cells read that do not exist (each once)."""
        missing: list[str] = []
        for cell in cells:
            for what, path in (("data", cell.data), ("in_dist", cell.options.get("in_dist")),
                               ("config", cell.options.get("config")), ("weights", cell.model["weights"])):
                if path and not Path(path).exists() and f"{what} {path}" not in missing:
                    missing.append(f"{what} {path}")
        return missing

    def check_inputs(self, cells: list[Cell]) -> None:
        """Before a run: every input of the cells exists, else one error listing what is missing."""
        missing = self.missing_inputs(cells)
        if missing:
            raise ManifestError(f"{self.path}: not found (data root {self.data_root}; --data-root to point "
                                f"elsewhere): {'; '.join(missing)}")


def load_manifest(path: str | os.PathLike, data_root: str | None = None, out: str | None = None) -> Manifest:
    if not Path(path).is_file():
        raise ManifestError(f"manifest {path} not found; the shipped ones are configs/suite/*.yaml")
    return Manifest(path, data_root, out)

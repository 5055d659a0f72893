"""Ablation sweeps over ONE trained supernet: how well each setting of the score ranks architectures.

    python genas/ablation.py --supernet runs/x/supernet/final.pt --config runs/x/config.yaml \\
        --ground-truth nb201.csv --dataset cifar10 --out runs/x/ablation --archs sample:200 \\
        --sigmas "1e-6,5e-6,1e-5;5e-4,1e-3,2e-3;2e-3,1e-2,2e-2;2e-3,2e-2,4e-2" --alpha 0,0.1,0.5,1,4,16 \\
        --positions all,cells --direction random,hessian --noise independent,cumulative \\
        --metric flatness,angle,accuracy,angle+flatness,accuracy+flatness,naswot,synflow --gamma 0,0.5,1.5,6,16

Each axis is swept one factor at a time around the config's ``score`` section (the paper's Tables 5-7 vary
one setting with the others at their defaults) and gives one table (``<axis>.md`` / ``<axis>.csv``; all of them
in ``ablation.md``): rows = the settings, columns = Kendall tau and Spearman rho (scipy) against the ground
truth with a bootstrap 95% interval over architectures, and the paper's published tau for the same setting
(``configs/published_results.yaml``, section ``nb201_kendall_tau``) where it exists. ``ablation.png`` plots
every axis; ``ablation.json`` holds all numbers. The sigma, positions, direction and noise axes score
``flatness`` (F of Eq. 4 with the config's alpha, as in the paper's tables); the alpha axis scores F at each
alpha; the metric axis scores each metric; the gamma axis scores each ``...+flatness`` metric of ``--metric``
(default: accuracy+flatness, and angle+flatness when ``init.pt`` is next to the supernet) at each gamma.

Cost. Perturbed losses are computed once per (architecture, sigma list, positions, direction, noise) and
accuracy, angle, naswot and synflow once per architecture; all are cached on disk under ``<out>/cache`` as
they are computed (a killed run resumes where it stopped; a later run with more axis values reuses them),
so the alpha and gamma axes cost no forward pass at all. Cache files are keyed by a hash of the supernet
checkpoint, the data config and every score option that changes the value.

Architectures: ``--archs all`` (every architecture of the ground truth) or ``sample:N`` (N drawn once with
``--seed``, the same for every cell of every table). Ground truth: a CSV ``arch,accuracy`` or the NAS-Bench-201
layout of ``genas/nb201_eval.py`` (``ArchitectureString`` + one accuracy column per dataset; ``--dataset``).

Under ``torchrun`` the architectures are sharded deterministically (rank r computes indices r::world of the
list), each rank appends to its own cache files, the values are gathered with ``all_gather_object`` and
rank 0 writes the tables. Every option is validated before the first file is written; a bad one is one
``error:`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

if __package__ in (None, ""):  # run as a script: python genas/ablation.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import yaml
from scipy import stats

from genas.core.config import ConfigError, load_config
from genas.core.distributed import shard
from genas.core.errors import UsageError, usage_errors
from genas.core.io import atomic_write_json, atomic_write_text, sha256_of
from genas.scoring.formulas import check_sigmas
from genas.scoring.scorer import METRICS, check_score_config, combine_parts

__all__ = ["AblationError", "AXES", "parse_axes", "read_ground_truth", "choose_archs", "shard", "cache_key", "LossCache",
           "score_values", "correlation_with_ci", "main"]

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_FILE = REPO / "configs" / "published_results.yaml"
AXES = ("sigmas", "alpha", "positions", "direction", "noise", "metric", "gamma")
PUBLISHED_DATASETS = ("cifar10", "ImageNet16-120")
# Score options that cannot change a cached value (a perturbed loss, accuracy, angle, proxy): they only enter
# the combination of the cached parts. Every other score option is part of the cache key.
NON_CACHE_KEYS = ("alpha", "gamma", "gamma_acc", "flatness_eps", "metric")
FLATNESS_SETTING_AXES = ("sigmas", "positions", "direction", "noise")


class AblationError(UsageError):
    """An unusable option or input of the ablation CLI (one line, exit status 2)."""


# ------------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------------
def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AblationError(f"{flag} {text!r}: expected a comma list of numbers like 0,0.5,1") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise AblationError(f"{flag} {text!r}: expected finite numbers")
    return values


def _words(text: str, flag: str, allowed: Sequence[str]) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        raise AblationError(f"{flag} {text!r}: each value must be one of {list(allowed)}" +
                            (f" (got {bad})" if bad else ""))
    return list(dict.fromkeys(values))


def parse_axes(args: argparse.Namespace) -> dict[str, list]:
    """The sweep axes given on the command line, parsed and checked (``AblationError`` on a bad one)."""
    axes: dict[str, list] = {}
    if args.sigmas is not None:
        lists = []
        for part in args.sigmas.split(";"):
            if not part.strip():
                continue
            try:
                lists.append(list(check_sigmas(_floats(part, "--sigmas"))))
            except ValueError as e:
                raise AblationError(f"--sigmas {part!r}: {e}") from None
        if not lists:
            raise AblationError(f"--sigmas {args.sigmas!r}: give sigma lists separated by ';', e.g. "
                                f"\"1e-6,5e-6,1e-5;2e-3,1e-2,2e-2\"")
        axes["sigmas"] = lists
    if args.alpha is not None:
        axes["alpha"] = _floats(args.alpha, "--alpha")
        if any(a < 0 for a in axes["alpha"]):
            raise AblationError(f"--alpha {args.alpha!r}: alpha must be >= 0")
    if args.gamma is not None:
        axes["gamma"] = _floats(args.gamma, "--gamma")
    for flag, allowed in (("positions", ("all", "cells")), ("direction", ("random", "hessian")),
                          ("noise", ("independent", "cumulative")), ("metric", METRICS)):
        text = getattr(args, flag)
        if text is not None:
            axes[flag] = _words(text, f"--{flag}", allowed)
    if not axes:
        raise AblationError("no sweep axis given: pass at least one of --sigmas, --alpha, --positions, "
                            "--direction, --noise, --metric, --gamma")
    return axes


def read_ground_truth(path: Path, dataset: str | None) -> tuple[dict[str, float], str]:
    """``arch string -> accuracy`` and a label of the column read, from ``arch,accuracy`` or the NB201 layout."""
    from genas.nb201_eval import ARCH_COLUMN, GROUND_TRUTH_COLUMNS, EvalError, read_ground_truth_csv
    if not path.is_file():
        raise AblationError(f"--ground-truth {path}: file not found")
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if "arch" in header and "accuracy" in header:
        truth: dict[str, float] = {}
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    truth[row["arch"].strip()] = float(row["accuracy"])
                except ValueError:
                    raise AblationError(f"{path}, line {line}: accuracy {row['accuracy']!r} is not a number") from None
        return truth, "accuracy"
    if ARCH_COLUMN in header:
        if dataset is None:
            raise AblationError(f"{path} is in the NAS-Bench-201 layout: pass --dataset (one of "
                                f"{list(GROUND_TRUTH_COLUMNS)}) to choose its accuracy column")
        try:
            return read_ground_truth_csv(path, dataset), dataset
        except EvalError as e:
            raise AblationError(str(e)) from None
    raise AblationError(f"{path}: expected columns 'arch,accuracy' or the NAS-Bench-201 layout "
                        f"({ARCH_COLUMN} + accuracy columns); found {header}")


def choose_archs(names: Sequence[str], spec: str, seed: int) -> list[str]:
    """``all`` -> every name (file order); ``sample:N`` -> N names drawn once with ``seed`` (sorted draw)."""
    if spec == "all":
        return list(names)
    if spec.startswith("sample:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = -1
        if n < 3 or n > len(names):
            raise AblationError(f"--archs {spec!r}: N must be an integer between 3 and the {len(names)} "
                                f"architectures of the ground truth")
        picks = np.random.default_rng(seed).choice(len(names), size=n, replace=False)
        return [names[i] for i in sorted(picks)]
    raise AblationError(f"--archs {spec!r}: expected 'all' or 'sample:N'")


# ------------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------------
def _key_hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_key(supernet_sha: str, data_cfg: Mapping[str, Any], score: Mapping[str, Any],
              setting: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a cached accuracy / proxy value (``setting=None``) or perturbed loss list (``setting``: its sigmas,
    positions, direction, noise) depends on: the supernet, the data config and every score option except
    :data:`NON_CACHE_KEYS`. Without a setting the perturbation options of :data:`FLATNESS_SETTING_AXES` are
    left out (accuracy and proxies do not perturb)."""
    key: dict[str, Any] = {"supernet_sha256": supernet_sha, "data": dict(data_cfg)}
    for name, value in score.items():
        if name not in NON_CACHE_KEYS and (setting is not None or name not in FLATNESS_SETTING_AXES):
            key[name] = list(value) if name == "sigmas" else value
    if setting is not None:
        key.update({k: (list(v) if k == "sigmas" else v) for k, v in setting.items()})
    return key


class LossCache:
    """One quantity (``losses`` of one setting, ``accuracy``, ``angle``, ...) per architecture, appended to
    ``<dir>/<name>-<hash>-r<rank>.jsonl`` as it is computed; reading merges the files of every rank."""

    def __init__(self, directory: Path, name: str, key: Mapping[str, Any], rank: int = 0):
        self.directory, self.name, self.key = Path(directory), name, dict(key)
        self.hash = _key_hash({"name": name, **self.key})
        self.path = self.directory / f"{name}-{self.hash}-r{rank}.jsonl"

    def load(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for path in sorted(self.directory.glob(f"{self.name}-{self.hash}-r*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: recomputed
                    continue
                values[entry["arch"]] = entry["value"]
        return values

    def append(self, arch: str, value: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        key_file = self.directory / f"{self.name}-{self.hash}.key.json"
        if not key_file.is_file():
            atomic_write_json(key_file, {"name": self.name, **self.key})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"arch": arch, "value": value}) + "\n")


# ------------------------------------------------------------------------------------------------------
# Scores and statistics
# ------------------------------------------------------------------------------------------------------
def score_values(metric: str, parts: Mapping[str, Any], score_cfg: Mapping[str, Any],
                 references: Mapping[str, float]) -> float:
    """The score of one architecture from its cached parts (``losses``, ``accuracy``, ``angle`` in radians,
    ``naswot``, ``log_synflow`` as needed) under the full score config ``score_cfg`` (the config's ``score``
    section with the swept setting, alpha and gamma applied): ``genas.scoring.scorer.combine_parts``, the
    combination ``ArchScorer`` itself uses; ``references`` holds the proxy normalisers of ``<proxy>+flatness``."""
    proxy = next((p for p in metric.split("+") if p in references), None)
    return combine_parts(metric, parts, score_cfg, references[proxy] if proxy else None)[0]


def _rankable(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return np.where(np.isnan(a), -np.inf, a)  # NaN ranks as the worst, as in the search


def correlation_with_ci(scores: Sequence[float], truth: Sequence[float], resamples: int, seed: int
                        ) -> dict[str, list[float | None]]:
    """Kendall tau and Spearman rho with a percentile bootstrap 95% interval over architectures
    (``[point, low, high]``; the interval is ``None`` with ``resamples=0``)."""
    s, t = _rankable(scores), np.asarray(truth, dtype=float)
    s = np.where(np.isinf(s), np.sign(s) * 1e300, s)
    idx = np.random.default_rng(seed).integers(0, len(s), size=(resamples, len(s)))
    out: dict[str, list[float | None]] = {}
    for name, fn in (("kendall_tau", stats.kendalltau), ("spearman_rho", stats.spearmanr)):
        point = float(fn(s, t).statistic)
        if resamples:
            with warnings.catch_warnings():  # a resample of tied values has no correlation: left out
                warnings.simplefilter("ignore", stats.ConstantInputWarning)
                boot = np.array([fn(s[i], t[i]).statistic for i in idx], dtype=float)
            boot = boot[np.isfinite(boot)]
            low, high = (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))) if len(boot) else (None, None)
        else:
            low = high = None
        out[name] = [point, low, high]
    return out


# ------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--supernet", type=Path, required=True, help="trained supernet (final.pt)")
    p.add_argument("--config", type=Path, required=True, help="search config (e.g. the config.yaml a search wrote)")
    p.add_argument("--ground-truth", type=Path, required=True, help="CSV arch,accuracy or the NB201 layout")
    p.add_argument("--out", type=Path, required=True, help="output folder (tables, plot, cache/)")
    p.add_argument("--dataset", help="NB201-layout ground truth: cifar10, cifar100 or ImageNet16-120 "
                                     "(default: from the config's data.name)")
    p.add_argument("--sigmas", help='sigma lists separated by ";", e.g. "1e-6,5e-6,1e-5;2e-3,1e-2,2e-2"')
    p.add_argument("--alpha", help="comma list, e.g. 0,0.1,0.5,1,4,16")
    p.add_argument("--positions", help="comma list of all, cells")
    p.add_argument("--direction", help="comma list of random, hessian")
    p.add_argument("--noise", help="comma list of independent, cumulative")
    p.add_argument("--metric", help=f"comma list of {', '.join(METRICS)}")
    p.add_argument("--gamma", help="comma list, e.g. 0,0.5,1.5,6,16")
    p.add_argument("--archs", default="sample:100", help="all or sample:N (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the architecture sample and the bootstrap")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the config's train.device)")
    p.add_argument("--no-plot", action="store_true", help="skip ablation.png")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides")
    return p


class _Plan:
    """Everything checked before anything is written."""

    def __init__(self, args: argparse.Namespace):
        from genas.data import DatasetError, build_search_data
        from genas.spaces import get_space, init_checkpoint_path

        self.args = args
        self.axes = parse_axes(args)
        if args.bootstrap < 0:
            raise AblationError(f"--bootstrap {args.bootstrap}: must be >= 0")
        if not args.supernet.is_file():
            raise AblationError(f"--supernet {args.supernet}: file not found (a final.pt of genas/train_supernet.py)")
        overrides = list(args.opts) + ([f"train.device={args.device}"] if args.device else [])
        try:
            self.cfg = load_config(args.config, overrides)
        except ConfigError as e:
            raise AblationError(str(e)) from None
        self.score = dict(self.cfg["score"])
        self.space = get_space(self.cfg["space"])
        dataset = args.dataset if args.dataset is not None else _nb201_dataset(self.cfg["data"]["name"])
        truth, self.truth_label = read_ground_truth(args.ground_truth, dataset)
        names = []
        for name in truth:
            try:
                names.append(self.space.to_string(self.space.from_string(name)))
            except ValueError as e:
                raise AblationError(f"{args.ground_truth}: arch {name!r} is not a {self.space.name} "
                                    f"architecture ({e})") from None
        self.truth = {self.space.to_string(self.space.from_string(n)): v for n, v in truth.items()}
        self.archs = choose_archs(list(dict.fromkeys(names)), args.archs, args.seed)
        self.metrics = self.axes.get("metric", [])
        init_path = self.init_path = init_checkpoint_path(args.supernet)
        self.has_init = init_path.is_file()
        gamma_metrics = [m for m in self.metrics if "flatness" in m.split("+") and m != "flatness"]
        if "gamma" in self.axes and not gamma_metrics:
            gamma_metrics = ["accuracy+flatness"] + (["angle+flatness"] if self.has_init else [])
        self.gamma_metrics = gamma_metrics
        needed = set(self.metrics) | set(self.gamma_metrics)
        self.needs = {part for m in needed for part in m.split("+")}
        if any(a in self.axes for a in FLATNESS_SETTING_AXES) or "alpha" in self.axes:
            self.needs.add("flatness")
        if "angle" in self.needs and not self.has_init:
            raise AblationError(f"the angle metrics need the epoch-0 weights {init_path} next to --supernet "
                                f"(written by genas/train_supernet.py as init.pt)")
        alphas = self.axes.get("alpha", []) + [float(self.score["alpha"])]
        sigma_lists = self.axes.get("sigmas", []) + [list(self.score["sigmas"])]
        if 0.0 in alphas and any(len(s) < 2 for s in sigma_lists):
            raise AblationError("alpha=0 (Eq. 3) needs sigma lists of at least two sigmas")
        self.settings = self._loss_settings()
        for setting in self.settings or [{}]:  # every swept score setting is valid (ArchScorer's own checks)
            try:
                check_score_config({**self.score, **setting})
            except ValueError as e:
                raise AblationError(f"score setting {setting}: {e}" if setting else f"score: {e}") from None
        try:
            from genas.core.distributed import resolve_device
            self.device = resolve_device(self.cfg["train"]["device"], int(os.environ.get("LOCAL_RANK", "0")))
        except RuntimeError as e:
            raise AblationError(f"--device / train.device: {e}") from None
        try:
            self.data = build_search_data(self.cfg["data"])
        except DatasetError as e:
            raise AblationError(str(e)) from None
        from genas.spaces import LayoutError, load_supernet

        def load(path: Path):  # our checkpoint or a reference-layout one (as genas/search.py loads them)
            try:
                return load_supernet(path, self.space.name, self.data.num_classes, **self.cfg["supernet"])
            except LayoutError as e:  # its message names the file
                raise AblationError(str(e)) from None
            except (ValueError, RuntimeError, KeyError, pickle.UnpicklingError) as e:
                raise AblationError(f"cannot load the supernet checkpoint {path}: {e}") from None

        self.supernet = load(args.supernet).to(self.device)
        self.init_state = load(init_path).state_dict() if "angle" in self.needs else None
        self.published = _published()
        self.supernet_sha = sha256_of(args.supernet)

    def default_setting(self) -> dict[str, Any]:
        return {k: (list(self.score[k]) if k == "sigmas" else self.score[k]) for k in FLATNESS_SETTING_AXES}

    def _loss_settings(self) -> list[dict[str, Any]]:
        if "flatness" not in self.needs:
            return []
        settings = [self.default_setting()]
        for axis in FLATNESS_SETTING_AXES:
            for value in self.axes.get(axis, []):
                settings.append({**self.default_setting(), axis: value})
        unique = {json.dumps(s, sort_keys=True): s for s in settings}
        return list(unique.values())


def _nb201_dataset(name: str) -> str | None:
    """The NAS-Bench-201 dataset of a config's ``data.name`` (genas/nb201_eval.py's matching), None if none."""
    from genas.nb201_eval import EvalError, _dataset
    try:
        return _dataset(name)
    except EvalError:
        return None


def _published() -> dict[str, Any]:
    try:
        data = yaml.safe_load(PUBLISHED_FILE.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return data.get("nb201_kendall_tau", {}) if isinstance(data, dict) else {}


def _published_for(published: Mapping[str, Any], axis: str, setting: Any) -> dict[str, float]:
    for row in published.get(axis, []) or []:
        value = row.get("setting")
        same = (len(value) == len(setting) and np.allclose(value, setting, rtol=1e-9, atol=0)) \
            if isinstance(value, list) and isinstance(setting, list) else \
            (value == setting or (isinstance(value, (int, float)) and isinstance(setting, (int, float))
                                  and math.isclose(float(value), float(setting))))
        if same:
            return {d: row[d] for d in PUBLISHED_DATASETS if d in row}
    return {}


class _Computer:
    """Fills the caches for this rank's architectures and gathers every rank's values."""

    def __init__(self, plan: _Plan, rank: int, world: int):
        self.plan, self.rank, self.world = plan, rank, world
        self.cache_dir = plan.args.out / "cache"
        self.base_key = cache_key(plan.supernet_sha, plan.cfg["data"], plan.score)
        self.mine = shard(plan.archs, rank, world)

    def _scorer(self, metric: str, extra: Mapping[str, Any] | None = None):
        from genas.scoring.scorer import ArchScorer
        cfg = {**self.plan.score, **(extra or {}), "metric": metric}
        return ArchScorer(self.plan.supernet, cfg, self.plan.data.train, self.plan.data.val, self.plan.device,
                          init_state_dict=self.plan.init_state)

    def _fill(self, cache: LossCache, compute: Callable[[str], Any]) -> dict[str, Any]:
        done = cache.load()
        for name in self.mine:
            if name not in done:
                value = compute(name)
                cache.append(name, value)
                done[name] = value
        return self._gather({n: done[n] for n in self.mine})

    def _gather(self, local: dict[str, Any]) -> dict[str, Any]:
        if self.world == 1:
            return local
        import torch.distributed as dist
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, local)
        merged: dict[str, Any] = {}
        for part in parts:
            merged.update(part)
        return merged

    def run(self) -> dict[str, Any]:
        plan, space = self.plan, self.plan.space
        arch = space.from_string
        values: dict[str, Any] = {"losses": {}, "references": {}}
        for setting in plan.settings:
            key = cache_key(plan.supernet_sha, plan.cfg["data"], plan.score, setting)
            scorer = self._scorer("flatness", setting)
            values["losses"][json.dumps(setting, sort_keys=True)] = self._fill(
                LossCache(self.cache_dir, "losses", key, self.rank), lambda n: scorer(arch(n))["losses"])
        if "accuracy" in plan.needs:
            scorer = self._scorer("accuracy")
            values["accuracy"] = self._fill(LossCache(self.cache_dir, "accuracy", self.base_key, self.rank),
                                            lambda n: scorer(arch(n))["accuracy"])
        if "angle" in plan.needs:
            scorer = self._scorer("angle")
            key = {"supernet_sha256": plan.supernet_sha, "init_sha256": sha256_of(plan.init_path),
                   "angle_vector": plan.score["angle_vector"]}
            values["angle"] = self._fill(LossCache(self.cache_dir, "angle", key, self.rank),
                                         lambda n: scorer.angle(arch(n)))
        for proxy, column in (("naswot", "naswot"), ("synflow", "log_synflow")):
            if proxy not in plan.needs:
                continue
            scorer = self._scorer(proxy)
            values[column] = self._fill(LossCache(self.cache_dir, proxy, self.base_key, self.rank),
                                        lambda n, s=scorer, c=column: s(arch(n))[c])
            if any(proxy in m.split("+") and "flatness" in m.split("+") for m in (*plan.metrics, *plan.gamma_metrics)):
                values["references"][proxy] = self._reference(proxy)
        return values

    def _reference(self, proxy: str) -> float:
        path = self.cache_dir / f"reference-{proxy}-{_key_hash(self.base_key)}.json"
        if path.is_file():
            return float(json.loads(path.read_text(encoding="utf-8"))["reference"])
        reference = self._scorer(f"{proxy}+flatness").proxy_reference
        if self.rank == 0:
            atomic_write_json(path, {"proxy": proxy, "reference": reference, **self.base_key})
        return reference


def _parts(values: Mapping[str, Any], name: str, setting_key: str | None) -> dict[str, Any]:
    parts = {k: values[k][name] for k in ("accuracy", "angle", "naswot", "log_synflow") if k in values}
    if setting_key is not None:
        parts["losses"] = values["losses"][setting_key][name]
    return parts


def _label(axis: str, value: Any) -> str:
    if axis == "sigmas":
        return "{" + ", ".join(f"{v:g}" for v in value) + "}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def build_tables(plan: _Plan, values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """One table per axis: ``{"columns": [...], "rows": [{"setting", <column>: {kendall_tau, spearman_rho},
    "published": {...}}]}``."""
    truth = [plan.truth[n] for n in plan.archs]
    default = plan.default_setting()
    alpha, gamma = float(plan.score["alpha"]), float(plan.score["gamma"])
    args = plan.args

    def scores(metric: str, setting: Mapping[str, Any] | None, a: float, g: float) -> list[float]:
        key = json.dumps(dict(setting), sort_keys=True) if setting is not None else None
        cfg = {**plan.score, **(setting or {}), "alpha": a, "gamma": g}
        return [score_values(metric, _parts(values, n, key), cfg, values["references"]) for n in plan.archs]

    def cell(s: list[float]) -> dict[str, Any]:
        return correlation_with_ci(s, truth, args.bootstrap, args.seed)

    tables: dict[str, dict[str, Any]] = {}
    for axis in plan.axes:
        rows = []
        if axis in FLATNESS_SETTING_AXES:
            for value in plan.axes[axis]:
                setting = {**default, axis: value}
                rows.append({"setting": value, "flatness": cell(scores("flatness", setting, alpha, gamma)),
                             "published": _published_for(plan.published, axis, value)})
            columns = ["flatness"]
        elif axis == "alpha":
            for value in plan.axes[axis]:
                rows.append({"setting": value, "flatness": cell(scores("flatness", default, value, gamma)),
                             "published": _published_for(plan.published, axis, value)})
            columns = ["flatness"]
        elif axis == "metric":
            for metric in plan.axes[axis]:
                setting = default if "flatness" in metric.split("+") else None
                rows.append({"setting": metric, "score": cell(scores(metric, setting, alpha, gamma)), "published": {}})
            columns = ["score"]
        else:  # gamma
            for value in plan.axes[axis]:
                row: dict[str, Any] = {"setting": value, "published": {}}
                for metric in plan.gamma_metrics:
                    row[metric] = cell(scores(metric, default, alpha, value))
                rows.append(row)
            columns = list(plan.gamma_metrics)
        tables[axis] = {"columns": columns, "rows": rows}
    return tables


def _fmt(stat: Sequence[float | None]) -> str:
    point, low, high = stat
    return f"{point:.4f}" if low is None else f"{point:.4f} [{low:.3f}, {high:.3f}]"


AXIS_TITLES = {"sigmas": "perturbation range sigma (paper Table 5)", "alpha": "alpha of Eq. 4 (paper Table 6)",
               "positions": "perturbation positions (paper Table 7)", "direction": "perturbation direction "
               "(paper Table 7)", "noise": "noise mode (independent = paper Eq. 4, cumulative = reference code)",
               "metric": "search metric", "gamma": "gamma of Eq. 5 (paper Tables 8-10 report ImageNet top-1, "
               "not tau)"}


def render(plan: _Plan, tables: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Markdown and CSV text per axis."""
    md, csvs = {}, {}
    n, label = len(plan.archs), plan.truth_label
    for axis, table in tables.items():
        has_pub = any(r["published"] for r in table["rows"])
        head = ["setting"]
        for c in table["columns"]:
            head += [f"Kendall tau ({c})", f"Spearman rho ({c})"] if len(table["columns"]) > 1 else \
                ["Kendall tau", "Spearman rho"]
        pub_cols = [d for d in PUBLISHED_DATASETS if any(d in r["published"] for r in table["rows"])] if has_pub else []
        head += [f"paper tau {d}" for d in pub_cols]
        lines = [f"## {AXIS_TITLES[axis]}", "",
                 f"{n} architectures, ground truth {plan.args.ground_truth.name} ({label}); intervals: "
                 f"bootstrap 95% over architectures ({plan.args.bootstrap} resamples); other settings: "
                 f"{_other_settings(plan, axis)}", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        buf = io.StringIO()
        writer = csv.writer(buf)
        csv_head = ["setting"]
        for c in table["columns"]:
            csv_head += [f"{c}_kendall_tau", f"{c}_tau_low", f"{c}_tau_high", f"{c}_spearman_rho", f"{c}_rho_low",
                         f"{c}_rho_high"]
        writer.writerow(csv_head + [f"paper_tau_{d}" for d in pub_cols])
        for row in table["rows"]:
            cells = [_label(axis, row["setting"])]
            csv_row = [_label(axis, row["setting"])]
            for c in table["columns"]:
                cells += [_fmt(row[c]["kendall_tau"]), _fmt(row[c]["spearman_rho"])]
                csv_row += [*row[c]["kendall_tau"], *row[c]["spearman_rho"]]
            cells += [f"{row['published'][d]:.4f}" if d in row["published"] else "—" for d in pub_cols]
            csv_row += [row["published"].get(d, "") for d in pub_cols]
            lines.append("| " + " | ".join(cells) + " |")
            writer.writerow(["" if v is None else v for v in csv_row])
        md[axis] = "\n".join(lines) + "\n"
        csvs[axis] = buf.getvalue()
    return md, csvs


def _other_settings(plan: _Plan, axis: str) -> str:
    s = plan.score
    items = {"sigmas": _label("sigmas", list(s["sigmas"])), "alpha": f"{s['alpha']:g}", "positions": s["positions"],
             "direction": s["direction"], "noise": s["noise"], "gamma": f"{s['gamma']:g}"}
    return ", ".join(f"{k} {v}" for k, v in items.items() if k != axis)


def plot(tables: Mapping[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4.2 * len(tables), 3.8), dpi=110)
    for i, (axis, table) in enumerate(tables.items()):
        ax = fig.add_subplot(1, len(tables), i + 1)
        labels = [_label(axis, r["setting"]) for r in table["rows"]]
        x = np.arange(len(labels))
        for j, column in enumerate(table["columns"]):
            tau = [r[column]["kendall_tau"] for r in table["rows"]]
            point = np.array([t[0] for t in tau])
            low = np.array([t[1] if t[1] is not None else t[0] for t in tau])
            high = np.array([t[2] if t[2] is not None else t[0] for t in tau])
            offset = (j - (len(table["columns"]) - 1) / 2) * 0.12
            ax.errorbar(x + offset, point, yerr=[point - low, high - point], fmt="o-", capsize=3, label=f"ours ({column})")
        for d, marker in zip(PUBLISHED_DATASETS, ("s", "^")):
            pub = [(k, r["published"][d]) for k, r in enumerate(table["rows"]) if d in r["published"]]
            if pub:
                ax.plot([k for k, _ in pub], [v for _, v in pub], marker, mfc="none", color="gray",
                        label=f"paper ({d})")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(axis)
        ax.set_ylabel("Kendall tau")
        ax.axhline(0, color="black", lw=0.5)
        ax.legend(fontsize=6)
    fig.tight_layout()
    from genas.plots import save_figure
    return save_figure(fig, path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from genas.core.distributed import cleanup_distributed, init_distributed
    plan = _Plan(args)  # every check; nothing written yet
    caller_group = torch.distributed.is_initialized()
    info = init_distributed(plan.cfg["train"]["device"])
    try:
        values = _Computer(plan, info.rank, info.world_size).run()
        if not info.is_main:
            return {}
        tables = build_tables(plan, values)
        md, csvs = render(plan, tables)
        out = args.out
        for axis in tables:
            atomic_write_text(out / f"{axis}.md", md[axis])
            atomic_write_text(out / f"{axis}.csv", csvs[axis])
        header = (f"# Ablation over one supernet\n\nsupernet {args.supernet} (sha256 {plan.supernet_sha[:12]}), config "
                  f"{args.config}, {len(plan.archs)} architectures ({args.archs}, seed {args.seed})\n\n")
        atomic_write_text(out / "ablation.md", header + "\n".join(md[a] for a in tables))
        atomic_write_json(out / "ablation.json", {"supernet": str(args.supernet), "supernet_sha256": plan.supernet_sha,
                                                  "config": str(args.config), "ground_truth": str(args.ground_truth),
                                                  "archs": plan.archs, "tables": tables})
        files = [f"{a}.{ext}" for a in tables for ext in ("md", "csv")] + ["ablation.md", "ablation.json"]
        if not args.no_plot:
            plot(tables, out / "ablation.png")
            files.append("ablation.png")
        return {"out": out, "tables": tables, "md": md, "files": files, "archs": plan.archs}
    finally:
        if not caller_group:
            cleanup_distributed()


@usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result = run(args)
    if result:
        for text in result["md"].values():
            print(text)
        print(f"outputs in {result['out']}: {', '.join(result['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

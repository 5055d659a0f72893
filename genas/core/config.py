"""One YAML file per run: defaults, loading, dotted command-line overrides and validation.

Every stage (supernet training, scoring, search) reads the same dict, so all keys live in :data:`DEFAULTS`
and a misspelt key is an error that names it instead of a silently ignored setting. YAML files are plain
(no ``_base_`` inheritance): a file overrides the defaults, then ``section.key=value`` overrides the file.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from genas.core.errors import UsageError

__all__ = ["DEFAULTS", "SUPERNET_DEFAULTS", "CHOICES", "ConfigError", "load_config", "merge_config",
           "parse_override", "dump_config", "load_yaml_file"]

# Width/depth kwargs of genas.spaces.build_supernet per space; the "supernet" section is validated against
# the defaults of the run's space (NB201 and DARTS take different arguments).
# affine: BN scale/shift in the searched ops (NB201: the cell ops only; RLNAS: false). pool_bn: a BatchNorm after
# each DARTS pooling op, as in the reference supernet's MixedOp (needed to load its checkpoints).
SUPERNET_DEFAULTS: dict[str, dict[str, Any]] = {
    "nb201": {"C": 16, "N": 5, "affine": True},
    "darts": {"C": 16, "layers": 8, "affine": True, "pool_bn": False},
}

DEFAULTS: dict[str, Any] = {
    "space": "nb201",
    "supernet": dict(SUPERNET_DEFAULTS["nb201"]),
    "data": {
        "name": "digits",
        "root": None,           # dataset folder; required for every dataset but the embedded digits
        "split_seed": 0,        # seed of the fixed 50/50 split of the training set into search-train/val
        "download": False,      # opt-in: let torchvision download CIFAR into root
        "augment": "auto",      # auto | none | crop | crop_flip (auto: crop_flip, digits: crop)
        "crop_padding": None,   # zero padding of the random crop; null: image size // 8 (4 at 32x32)
        "image_size": 32,       # imagefolder only: images are resized and centre-cropped to this size
        "split_file": None,     # AutoDL split file (cifar-split.txt, cifar100-test-split.txt, ...) instead of split_seed
    },
    "train": {
        "epochs": 250,
        "batch_size": 64,
        "lr": 0.025,
        "lr_min": 0.001,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "grad_clip": 5.0,        # max gradient norm; 0: no clipping (RLNAS NB201)
        "nesterov": False,       # RLNAS NB201: true
        "lr_schedule": "per_step",  # per_step: cosine over all steps | per_epoch (AutoDL, RLNAS NB201: constant in an
                                    # epoch, epoch 0 at lr) | per_epoch_shifted (GeNAS / RLNAS DARTS: epoch e at e+1)
        "sampling": "shared",    # shared: one arch for every cell | per_cell: each NB201 cell draws its own (RLNAS)
        "zero_grad": "none",     # none: off-path weights untouched | zeros: torch 1.x zero_grad() (reference)
        "random_labels": False,  # RLNAS: one fixed random label per training example
        "seed": 0,
        "workers": 2,
        "checkpoint_every_steps": 500,
        "log_every_steps": 10,
        "val_paths": 10,         # sampled paths whose validation accuracy the search reports (0: skip the check)
        "device": "auto",        # auto | cpu | cuda | cuda:N
        "amp": None,             # null | bf16 | fp16
        "channels_last": False,
    },
    "score": {
        "metric": "flatness",
        "sigmas": [0.002, 0.01, 0.02],
        "alpha": 1.0,
        "gamma": 1.0,
        "noise": "independent",
        "common_random_numbers": True,
        "fresh_draws": False,     # reference: noise and BN batches from one stream that runs on across candidates
        "bn_recal": "exact",      # exact: cumulative average | reference: reset to 0/1, momentum-0.1 EMA
        "loss_mean": "samples",   # samples: mean over images | batches: mean of per-batch means (reference)
        "val_order": "seeded",    # seeded: validation batches in a seeded order | file: the split's order (reference)
        "flatness_eps": 0.0,      # added to the flatness denominator (reference: 1e-5)
        "angle_vector": "compact",  # compact (path weights + one constant per parameter-free op) | reference
        "gamma_acc": 1.0,         # weight of accuracy in angle+accuracy (paper Table 10)
        "recalib_batches_acc": None,  # BN batches for the accuracy of accuracy+flatness (null: recalib_batches)
        "positions": "all",
        "direction": "random",
        "recalib_batches": 10,
        "eval_batches": 10,
        "eval_batch_size": 256,
        "batch_size_recalib": 256,
        "seed": 0,
        "hessian_iters": 10,
        "hessian_tol": 1.0e-4,
        "amp": None,              # autocast for scoring; refused when sigma_1 is below the dtype's resolution
        "amp_allow_rank_change": False,  # score.amp is refused unless true: bf16 changed the ranking (README)
        "noise_stream": "path",   # path: draws for the path's parameters | reference: the reference's global stream
                                  # (every supernet parameter in its named_parameters() order, torch.normal)
        "recal_order": "seeded",  # seeded: BN batches in a seeded order | file: the first training images in file
                                  # order (the reference's unshuffled loader)
        "channels_last": True,    # ~1.7x faster NB201 scoring on CPU; changes float summation order only
    },
    "search": {
        "algorithm": "evolution",
        "population": 100,
        "topk": 30,
        "mutation_num": 50,
        "mutation_prob": 0.1,
        "crossover_num": 50,
        "iterations": 20,
        "random_num": 1000,
        "max_params": None,
        "max_flops": None,
        "seed": 0,
        "crossover": None,        # null: the space's own (DARTS per_node, NB201 per_gene) | per_node | per_gene
        "mutation_genes": "all",  # all | normal (DARTS reference: only the 14 normal-cell genes mutate)
        "mutation_ops": "all",    # all | no_none (RLNAS NB201: a mutated gene never becomes none)
        # exact: every gene tuple is its own candidate (reference; exhaustive NB201 scores all 15,625)
        # isomorphic: NB201 isomorphic cells share one score (6,466 classes; a speed option)
        "dedupe": "exact",
    },
}

# Allowed values of the enumerated keys (dotted names).
CHOICES: dict[str, tuple] = {
    "space": tuple(SUPERNET_DEFAULTS),
    "data.name": ("digits", "cifar10", "cifar100", "imagenet16-120", "imagefolder"),
    "data.augment": ("auto", "none", "crop", "crop_flip"),
    "train.amp": (None, "bf16", "fp16"),
    "train.lr_schedule": ("per_step", "per_epoch", "per_epoch_shifted"),
    "score.metric": ("flatness", "accuracy", "angle", "angle+flatness", "accuracy+flatness", "angle+accuracy",
                     "naswot", "synflow", "naswot+flatness", "synflow+flatness"),
    "score.noise": ("independent", "cumulative"),
    "score.positions": ("all", "cells"),
    "score.direction": ("random", "hessian"),
    "score.amp": (None, "bf16", "fp16"),
    "search.algorithm": ("evolution", "random", "exhaustive"),
    "train.sampling": ("shared", "per_cell"),
    "train.zero_grad": ("none", "zeros"),
    "score.bn_recal": ("exact", "reference"),
    "score.loss_mean": ("samples", "batches"),
    "score.val_order": ("seeded", "file"),
    "score.recal_order": ("seeded", "file"),
    "score.noise_stream": ("path", "reference"),
    "score.angle_vector": ("compact", "reference"),
    "search.crossover": (None, "per_node", "per_gene"),
    "search.mutation_genes": ("all", "normal"),
    "search.mutation_ops": ("all", "no_none"),
    "search.dedupe": ("exact", "isomorphic"),
}


class ConfigError(UsageError):
    """A config file or override that cannot be used; the message names the key and the source."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-4`` as a float (YAML 1.1 would read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_yaml_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping of settings in the YAML file at ``path``, read with the project's loader (``3e-5`` is a float);
    an empty file is ``{}``. Raises :class:`ConfigError` for a missing file, invalid YAML or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = _yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
    return loaded or {}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> (["train", "epochs"], 3); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value (e.g. train.epochs=3)")
    try:
        parsed = _yaml_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.strip().split("."), parsed


def _defaults_for(space: Any) -> dict[str, Any]:
    defaults = copy.deepcopy(DEFAULTS)
    if space in SUPERNET_DEFAULTS:
        defaults["supernet"] = dict(SUPERNET_DEFAULTS[space])
    return defaults


def _check_value(name: str, value: Any, default: Any, source: str) -> Any:
    """Type-check ``value`` against the default's type; ints are accepted (and converted) where floats are."""
    if name in CHOICES:
        if value not in CHOICES[name]:
            raise ConfigError(f"{source}: {name} must be one of {list(CHOICES[name])}, got {value!r}")
        return value
    if default is None:  # free-form keys (paths, optional limits)
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, list):
        ok = isinstance(value, list)
        if ok and default:
            value = [_check_value(f"{name}[{i}]", v, default[0], source) for i, v in enumerate(value)]
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{source}: {name} must be of type {type(default).__name__} (like {default!r}), "
                          f"got {value!r}")
    return value


# Keys of earlier releases that a config may still hold: an error that says why they went.
REMOVED: dict[str, str] = {
    "score.batched_sigmas": "the vmap evaluation of the t sigmas crashed in cuDNN batch norm on CUDA and took "
                            "0.59-0.75x the speed of sequential scoring on CPU",
}


def merge_config(base: dict[str, Any], update: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """Return ``base`` updated by ``update`` (recursively); unknown keys and wrong types raise ConfigError."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in merged and name in REMOVED:
            raise ConfigError(f"{source}: {name} was removed ({REMOVED[name]}); delete the key")
        if key not in merged:
            where = f" in {prefix[:-1]!r}" if prefix else ""
            raise ConfigError(f"{source}: unknown config key {name!r} (known keys{where}: "
                              f"{', '.join(map(str, merged))})")
        if isinstance(merged[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {name} must be a mapping of keys, got {value!r}")
            merged[key] = merge_config(merged[key], value, source, prefix=f"{name}.")
        else:
            merged[key] = _check_value(name, value, merged[key], source)
    return merged


def _set_dotted(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            node = tree[key] = {}
        tree = node
    tree[keys[-1]] = value


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The full config of a run: :data:`DEFAULTS` <- YAML file at ``path`` (if any) <- dotted ``overrides``.

    The ``supernet`` section takes the defaults of the chosen ``space`` (:data:`SUPERNET_DEFAULTS`).
    Raises :class:`ConfigError` naming the file/override and key for unknown keys, wrong types and bad values.
    """
    user: dict[str, Any] = load_yaml_file(path) if path is not None else {}
    parsed = [(text, *parse_override(text)) for text in overrides]
    space = next((v for _, k, v in reversed(parsed) if k == ["space"]), user.get("space", DEFAULTS["space"]))
    cfg = merge_config(_defaults_for(space), user, source=str(path) if path else "config")
    for text, keys, value in parsed:
        patch: dict[str, Any] = {}
        _set_dotted(patch, keys, value)
        cfg = merge_config(cfg, patch, source=f"override {text!r}")
    return cfg


def dump_config(cfg: Mapping[str, Any]) -> str:
    """YAML text of a config (saved next to a run's outputs for provenance)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False)

"""Loading supernet weights from a file, whichever layout it has: this suite's checkpoints, or the reference
code's (GeNAS / RLNAS DARTS ``train_supernet/train.py``: ``checkpoint_epoch_{0,250}.pth.tar`` =
``{"epoch", "state_dict", "optimizer"}`` with keys ``cells.K._ops.E._ops.IDX...``; RLNAS NAS-Bench-201:
``{"search_model", ...}`` with keys ``cells.K.edges.I<-J.OP...``; or a bare state dict).

A reference-layout file is renamed key by key to this suite's supernet (see the supernets'
``convert_reference_state_dict``) and must then fit it exactly: every tensor has one home and every supernet
tensor is filled, or :class:`~genas.spaces.base.LayoutError` names the first missing / unexpected keys.
"""
from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from genas.spaces.base import LayoutError, Supernet
from genas.spaces.registry import build_supernet

__all__ = ["load_supernet", "read_state_dict", "init_checkpoint_path", "fit_state_dict"]

_SHOWN = 5  # keys named in an error message


def _read(path: Path) -> Any:
    if not path.is_file():
        raise LayoutError(f"supernet checkpoint {path}: file not found")
    try:
        # RLNAS checkpoints hold their argparse.Namespace; nothing else beyond tensors and containers is allowed
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise LayoutError(f"supernet checkpoint {path}: cannot be read as a torch checkpoint of tensors "
                          f"({message})") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(state_dict, our_meta)`` of a checkpoint file: ``our_meta`` is ``{"space", "supernet",
    "num_classes"}`` for a file of :mod:`genas.train_supernet`, None for a reference-layout file."""
    path = Path(path)
    ckpt = _read(path)
    if isinstance(ckpt, Mapping) and {"model", "space", "supernet", "num_classes"} <= set(ckpt):
        meta = {k: ckpt[k] for k in ("space", "supernet", "num_classes")}
        return dict(ckpt["model"]), meta
    for key in ("state_dict", "search_model", "model"):  # GeNAS / RLNAS DARTS, RLNAS NB201, generic
        if isinstance(ckpt, Mapping) and _is_state_dict(ckpt.get(key)):
            state = dict(ckpt[key])
            break
    else:
        if not _is_state_dict(ckpt):
            keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
            raise LayoutError(f"supernet checkpoint {path}: no state dict found (expected a file of "
                              f"genas/train_supernet.py, a reference checkpoint with 'state_dict' or "
                              f"'search_model', or a bare state dict; got {keys})")
        state = dict(ckpt)
    if state and all(k.startswith("module.") for k in state):  # saved from (Distributed)DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, None


def _hint(missing: list[str], unexpected: list[str], options: Mapping[str, Any]) -> str:
    pool_bn = re.compile(r"\.(max|avg)_pool_3x3\.1\.")
    if any(pool_bn.search(k) for k in unexpected) and not options.get("pool_bn"):
        return "; the file has a BatchNorm after each pooling op (the reference supernet): set supernet.pool_bn=true"
    if any(pool_bn.search(k) for k in missing) and options.get("pool_bn"):
        return "; the file has no BatchNorm after the pooling ops: set supernet.pool_bn=false"
    if missing and all(k.endswith((".weight", ".bias")) for k in missing) and options.get("affine", True):
        return "; the file's cell BNs have no scale/shift: set supernet.affine=false"
    if unexpected and all(k.endswith((".weight", ".bias")) for k in unexpected) and not options.get("affine", True):
        return "; the file's cell BNs have a scale/shift: set supernet.affine=true"
    return ""


def fit_state_dict(model: Supernet, state: Mapping[str, torch.Tensor], source: str,
                   options: Mapping[str, Any]) -> None:
    """Load ``state`` into ``model`` exactly (strict), or raise :class:`LayoutError` naming the first missing /
    unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:_SHOWN])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first: {', '.join(unexpected[:_SHOWN])}")
        raise LayoutError(f"{source} does not fit the {model.space.name} supernet "
                          f"({', '.join(f'{k}={v}' for k, v in options.items())}): {'; '.join(parts)}"
                          f"{_hint(missing, unexpected, options)}")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        shown = ", ".join(f"{k} {a} vs {b}" for k, a, b in wrong[:_SHOWN])
        raise LayoutError(f"{source}: {len(wrong)} tensor(s) have another shape than in the supernet "
                          f"(file vs supernet), first: {shown}; check supernet.C / layers / N and the dataset's "
                          f"number of classes")
    model.load_state_dict(state, strict=True)


def load_supernet(path: str | Path, space: str, num_classes: int, **supernet_options: Any) -> Supernet:
    """The ``space`` supernet (on the CPU) holding the weights of the file at ``path``.

    A checkpoint of :mod:`genas.train_supernet` carries its own supernet options (they are used;
    ``supernet_options`` are not) and must be of ``space`` and ``num_classes``. A reference-layout file (see
    the module docstring) is built with ``supernet_options`` (e.g. ``pool_bn=True`` for the GeNAS DARTS
    supernet, ``affine=False`` for RLNAS NAS-Bench-201) and its keys renamed to ours.
    Raises :class:`LayoutError` naming the first missing / unexpected keys when the file does not fit.
    """
    path = Path(path)
    state, meta = read_state_dict(path)
    if meta is not None:
        if meta["space"] != space:
            raise LayoutError(f"{path} is a {meta['space']} supernet but the config searches {space}")
        if int(meta["num_classes"]) != int(num_classes):
            raise LayoutError(f"{path} classifies {meta['num_classes']} classes but the data has {num_classes}")
        options = dict(meta["supernet"])
    else:
        options = dict(supernet_options)
    model = build_supernet(space, num_classes, **options)
    if meta is None and model.is_reference_state_dict(state):
        state = model.convert_reference_state_dict(state)
    fit_state_dict(model, state, str(path), options)
    return model


_EPOCH_FILE = re.compile(r"^(.*epoch_)(\d+)(\.pth(?:\.tar)?)$")


def init_checkpoint_path(path: str | Path) -> Path:
    """The epoch-0 weights that go with the supernet file ``path`` (for the angle): ``init.pt`` next to a
    file of :mod:`genas.train_supernet`; ``checkpoint_epoch_0.pth.tar`` next to a reference
    ``checkpoint_epoch_N.pth.tar`` (RLNAS NB201: ``seed-S_epoch_0.pth``)."""
    path = Path(path)
    match = _EPOCH_FILE.match(path.name)
    if match is not None:
        return path.with_name(f"{match[1]}0{match[3]}")
    return path.with_name("init.pt")

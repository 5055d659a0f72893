"""Folder layouts of ImageNet and its distribution-shift variants, with their explicit class -> label maps.

Each variant ships as class folders, but the folder names mean different things: ImageNet val, -Sketch, -A, -R
and -O use wnids, ImageNet-V2 uses the class INDEX as the folder name (``0``..``999``), which
``torchvision.datasets.ImageFolder`` would silently mis-map (it sorts names as strings: ``10`` < ``2``), and
ImageNet-C nests ``<corruption>/<severity>/<wnid>/``. So every layout here states its folder -> target map and
is checked folder by folder (names only) before any image is read.

Class lists come from timm where timm ships them (``timm/data/_info``: the 1k order, ImageNet-A and -R synsets
and their 1k indices, the ReaL labels); only ImageNet-O's 200 wnids, which timm lacks, live in
``robustness/class_lists``. Folder scans are torchvision's ``make_dataset``.
"""
from __future__ import annotations

import json
import os
import pkgutil
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from PIL import Image
from timm.data import ImageNetInfo, get_img_extensions
from torchvision.datasets.folder import make_dataset

from genas.core.errors import UsageError

__all__ = ["SETS", "CORRUPTIONS", "EXTRA_CORRUPTIONS", "SEVERITIES", "LayoutError", "ClassLayout",
           "imagenet1k_wnids", "subset_wnids", "timm_subset_indices", "indices_in_1k", "real_labels",
           "layout_for", "scan_images", "scan_imagenet_c", "real_label_sets", "ImageSamples", "collate_samples",
           "Batch"]

SETS = ("imagenet", "imagenet-v2", "imagenet-a", "imagenet-r", "imagenet-sketch", "imagenet-c", "imagenet-real",
        "imagenet-o")
#: the 15 corruptions of the ImageNet-C benchmark (mCE is their mean CE), in the paper's order
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
#: the 4 held-out corruptions of the release (``extra.tar``): reported apart, never in mCE
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)
_REAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.[A-Za-z]+$")


class LayoutError(UsageError):
    """A dataset root that is missing, has the wrong class folders, or holds no images."""


@lru_cache(maxsize=None)
def imagenet1k_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k wnids in class-index order (timm's own list, the order every timm head uses)."""
    return tuple(ImageNetInfo("imagenet-1k").label_names())


def _timm_info(name: str) -> str:
    return pkgutil.get_data("timm.data", f"_info/{name}").decode("utf-8")


@lru_cache(maxsize=None)
def subset_wnids(name: str) -> tuple[str, ...]:
    """The 200 sorted wnids of ``imagenet_a`` / ``imagenet_r`` (timm's lists) or ``imagenet_o`` (ours)."""
    if name in ("imagenet_a", "imagenet_r"):
        text = _timm_info(f"{name}_synsets.txt")
    elif name == "imagenet_o":
        text = resources.files("robustness").joinpath("class_lists", "imagenet_o_wnids.txt").read_text("utf-8")
    else:
        raise ValueError(f"no 200-class list {name!r} (imagenet_a, imagenet_r, imagenet_o)")
    return tuple(text.split())


@lru_cache(maxsize=None)
def timm_subset_indices(name: str) -> tuple[int, ...]:
    """timm's 1k-head indices of ``imagenet_a`` / ``imagenet_r`` (what the restricted logits keep)."""
    return tuple(int(i) for i in _timm_info(f"{name}_indices.txt").split())


def indices_in_1k(wnids: Sequence[str]) -> list[int]:
    """Positions of ``wnids`` in the ImageNet-1k head, i.e. which logits a 200-class subset keeps."""
    position = {w: i for i, w in enumerate(imagenet1k_wnids())}
    return [position[w] for w in wnids]


@lru_cache(maxsize=None)
def real_labels() -> tuple[tuple[int, ...], ...]:
    """ReaL multi-labels (Beyer et al. 2020) of the 50,000 val images in file-number order (timm's copy); an
    empty tuple marks an image the ReaL raters found no valid label for."""
    return tuple(tuple(labels) for labels in json.loads(_timm_info("imagenet_real_labels.json")))


@dataclass(frozen=True)
class ClassLayout:
    """Which class folders a root must hold and the label each folder's images get."""
    description: str                  # for error messages: what a correct root looks like
    folder_to_target: Mapping[str, int]
    allow_extra: bool = False         # an ImageNet val root used for 200 classes holds 800 more folders

    def check(self, root: Path, set_name: str) -> None:
        """Raise LayoutError naming what is missing or extra (and the layout the folders do match, if any)."""
        if not root.is_dir():
            raise LayoutError(f"{set_name}: data root not found: {root} (expected {self.description})")
        present = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        missing = sorted(set(self.folder_to_target) - present, key=_natural)
        extra = [] if self.allow_extra else sorted(present - set(self.folder_to_target), key=_natural)
        if not missing and not extra:
            return
        parts = [f"{set_name}: {root} is not in the expected layout: {self.description}"]
        if missing:
            parts.append(f"missing {len(missing)} class folder(s), e.g. {', '.join(missing[:5])}")
        if extra:
            parts.append(f"unexpected {len(extra)} folder(s), e.g. {', '.join(extra[:5])}")
        if len(present) == 1:
            inner = root / next(iter(present))
            if {p.name for p in inner.iterdir() if p.is_dir()} >= set(self.folder_to_target):
                parts.append(f"the class folders are one level down: did you mean --data {inner}?")
        if not self.allow_extra:
            matches = _matching_sets(present, exclude=set_name)
            if matches:
                parts.append(f"the folders match the {' / '.join(matches)} layout: did you mean --set {matches[0]}"
                             + (f" (or {', '.join(matches[1:])})" if matches[1:] else "") + "?")
        raise LayoutError("; ".join(parts))


def _natural(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 30, name)


def _matching_sets(present: set[str], exclude: str) -> list[str]:
    return [name for name in SETS if name not in (exclude, "imagenet-c")
            and set(layout_for(name).folder_to_target) == present]


def _wnid_layout(description: str, wnids: Sequence[str], allow_extra: bool = False) -> ClassLayout:
    return ClassLayout(description, {w: i for i, w in enumerate(wnids)}, allow_extra=allow_extra)


@lru_cache(maxsize=None)
def layout_for(set_name: str, in_distribution: bool = False) -> ClassLayout:
    """The class layout of a set; ``in_distribution`` gives ImageNet-O's in-distribution (ImageNet val) side.

    For ImageNet-C it is the layout of one ``<corruption>/<severity>`` folder (see :func:`scan_imagenet_c`).
    """
    wnids_1k = imagenet1k_wnids()
    if set_name in ("imagenet", "imagenet-real"):
        return _wnid_layout("1000 ImageNet-1k wnid folders (n01440764/ ... n15075141/), the standard val layout"
                            + (" with the original ILSVRC2012_val_XXXXXXXX file names" if set_name != "imagenet"
                               else ""), wnids_1k)
    if set_name == "imagenet-sketch":
        return _wnid_layout("1000 ImageNet-1k wnid folders, the sketch/ folder of ImageNet-Sketch", wnids_1k)
    if set_name == "imagenet-c":
        return _wnid_layout("1000 ImageNet-1k wnid folders in each <corruption>/<severity>/ folder", wnids_1k)
    if set_name == "imagenet-v2":
        return ClassLayout("1000 folders named 0..999 = ImageNet-1k class index (ImageNetV2 matched-frequency, "
                           "threshold0.7 or top-images format)", {str(i): i for i in range(len(wnids_1k))})
    if set_name == "imagenet-a":
        return _wnid_layout("the 200 ImageNet-A wnid folders (n01498041/ ...), as in imagenet-a.tar",
                            subset_wnids("imagenet_a"))
    if set_name == "imagenet-r":
        return _wnid_layout("the 200 ImageNet-R wnid folders (n01443537/ ...), as in imagenet-r.tar",
                            subset_wnids("imagenet_r"))
    if set_name == "imagenet-o":
        wnids = subset_wnids("imagenet_o")
        if in_distribution:
            return _wnid_layout("an ImageNet val root holding (at least) the 200 ImageNet-O class wnid folders",
                                wnids, allow_extra=True)
        return _wnid_layout("the 200 ImageNet-O wnid folders (n01443537/ ...), as in imagenet-o.tar", wnids)
    raise ValueError(f"unknown set {set_name!r}; choose one of {', '.join(SETS)}")


def scan_images(root: str | os.PathLike, layout: ClassLayout, set_name: str) -> list[tuple[str, int]]:
    """Check the layout, then list (path, target) for every image under the class folders, in sorted order."""
    root = Path(root)
    layout.check(root, set_name)
    extensions = tuple(get_img_extensions())
    samples = make_dataset(str(root), dict(layout.folder_to_target), extensions=extensions, allow_empty=True)
    if not samples:
        raise LayoutError(f"{set_name}: no images ({', '.join(sorted(extensions))}) found in the class folders "
                          f"of {root}")
    return samples


def scan_imagenet_c(root: str | os.PathLike, corruptions: Sequence[str], severities: Sequence[int]
                    ) -> tuple[list[tuple[str, int]], list[int], list[tuple[str, int]], list[str]]:
    """Check and list an ImageNet-C root ``<corruption>/<severity>/<wnid>/``: ``(samples, group of each sample,
    groups as (corruption, severity), selected corruptions missing from the root)``.

    A partial release (some corruption folders absent) is fine: the missing ones are returned; an unknown
    corruption folder, a missing severity folder or a wrong class layout inside one is a :class:`LayoutError`.
    Every folder is checked before any file is listed.
    """
    root = Path(root)
    known = CORRUPTIONS + EXTRA_CORRUPTIONS
    description = (f"<corruption>/<severity 1-5>/<wnid>/ folders, corruptions among {', '.join(known)} (the "
                   f"ImageNet-C release; a partial one is fine)")
    if not root.is_dir():
        raise LayoutError(f"imagenet-c: data root not found: {root} (expected {description})")
    present = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    unknown = sorted(present - set(known))
    if unknown:
        hint = ("; the folders look like class folders: point --data at the ImageNet-C root, not at one "
                "severity folder" if any(n.startswith("n") and n[1:].isdigit() for n in unknown) else "")
        raise LayoutError(f"imagenet-c: {root} is not in the expected layout: {description}; unknown corruption "
                          f"folder(s) {', '.join(unknown[:5])}{hint}")
    selected = [c for c in corruptions if c in present]
    missing = [c for c in corruptions if c not in present]
    if not selected:
        raise LayoutError(f"imagenet-c: {root} holds none of the selected corruptions ({', '.join(corruptions)}); "
                          f"expected {description}")
    layout = layout_for("imagenet-c")
    groups = [(c, s) for c in selected for s in severities]
    for c, s in groups:
        layout.check(root / c / str(s), f"imagenet-c {c} severity {s}")
    samples: list[tuple[str, int]] = []
    group_of: list[int] = []
    extensions = tuple(get_img_extensions())
    for g, (c, s) in enumerate(groups):
        found = make_dataset(str(root / c / str(s)), dict(layout.folder_to_target), extensions=extensions,
                             allow_empty=True)
        if not found:
            raise LayoutError(f"imagenet-c: no images in {root / c / str(s)}")
        samples += found
        group_of += [g] * len(found)
    return samples, group_of, groups, missing


def real_label_sets(samples: Sequence[tuple[str, int]]) -> list[tuple[int, ...]]:
    """The ReaL label set of each val image, from its file name ``ILSVRC2012_val_<8 digits>.<ext>`` (names only:
    a renamed or foreign file is a :class:`LayoutError` naming it before any image is read)."""
    labels = real_labels()
    out = []
    for path, _ in samples:
        match = _REAL_NAME.match(os.path.basename(path))
        number = int(match.group(1)) if match else 0
        if not 1 <= number <= len(labels):
            raise LayoutError(f"imagenet-real: {path} is not an ImageNet val file name ILSVRC2012_val_00000001 .. "
                              f"{len(labels):08d} (the ReaL labels are keyed by it); use the original val files")
        out.append(labels[number - 1])
    return out


class ImageSamples(torch.utils.data.Dataset):
    """(path, target) samples -> (image tensor or None, sample index, path, error message or '').

    An unreadable file is returned as ``None`` with PIL's reason instead of raising inside a worker, so the
    caller decides (fail naming the file, or skip and count) and its message is not buried in a worker traceback.
    ``indices`` (default all) selects the samples this process reads, e.g. one rank's shard under torchrun.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Image.Image], torch.Tensor],
                 indices: Sequence[int] | None = None):
        self.samples = list(samples)
        self.indices = list(range(len(self.samples))) if indices is None else list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor | None, int, str, str]:
        index = self.indices[position]
        path, _ = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            return None, index, path, f"{type(e).__name__}: {e}"
        return self.transform(image), index, path, ""


@dataclass
class Batch:
    images: torch.Tensor | None       # None when every image of the batch was unreadable
    indices: torch.Tensor             # sample indices of the readable images
    paths: list[str]
    unreadable: list[tuple[str, str]]  # (path, reason)


def collate_samples(items: list[tuple[torch.Tensor | None, int, str, str]]) -> Batch:
    good = [item for item in items if item[0] is not None]
    return Batch(images=torch.stack([item[0] for item in good]) if good else None,
                 indices=torch.tensor([item[1] for item in good], dtype=torch.long),
                 paths=[item[2] for item in good],
                 unreadable=[(item[2], item[3]) for item in items if item[0] is None])

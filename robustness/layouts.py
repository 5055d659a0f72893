"""Folder layouts of ImageNet and its distribution-shift variants, with their explicit class -> label maps.

Each variant ships as class folders, but the folder names mean different things: ImageNet val and ImageNet-A/-O
use wnids (sorted wnid order = class order), ImageNet-V2 uses the class INDEX as the folder name (``0``..``999``),
which ``torchvision.datasets.ImageFolder`` would silently mis-map (it sorts names as strings: ``10`` < ``2``).
So every layout here states its folder -> target map and is checked folder by folder before any image is read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from PIL import Image
from timm.data import ImageNetInfo, get_img_extensions

__all__ = ["SETS", "LayoutError", "ClassLayout", "imagenet1k_wnids", "embedded_wnids", "indices_in_1k",
           "layout_for", "scan_images", "ImageSamples", "collate_samples", "Batch"]

SETS = ("imagenet", "imagenet-v2", "imagenet-a", "imagenet-o")


class LayoutError(ValueError):
    """A dataset root that is missing, has the wrong class folders, or holds no images."""


@lru_cache(maxsize=None)
def imagenet1k_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k wnids in class-index order (timm's own list, the order every timm head uses)."""
    return tuple(ImageNetInfo("imagenet-1k").label_names())


@lru_cache(maxsize=None)
def embedded_wnids(name: str) -> tuple[str, ...]:
    """A class list shipped in ``robustness/class_lists`` (``imagenet_a`` or ``imagenet_o``), 200 sorted wnids."""
    text = resources.files("robustness").joinpath("class_lists", f"{name}_wnids.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def indices_in_1k(wnids: Sequence[str]) -> list[int]:
    """Positions of ``wnids`` in the ImageNet-1k head, i.e. which logits a 200-class subset keeps."""
    position = {w: i for i, w in enumerate(imagenet1k_wnids())}
    return [position[w] for w in wnids]


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
        if not self.allow_extra:
            parts.extend(f"the folders match the {other} layout: did you mean --set {other}?"
                         for other in _matching_sets(present, exclude=set_name))
        raise LayoutError("; ".join(parts))


def _natural(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 30, name)


def _matching_sets(present: set[str], exclude: str) -> list[str]:
    return [name for name in SETS if name != exclude and set(layout_for(name).folder_to_target) == present]


@lru_cache(maxsize=None)
def layout_for(set_name: str, in_distribution: bool = False) -> ClassLayout:
    """The class layout of a set; ``in_distribution`` gives ImageNet-O's in-distribution (ImageNet val) side."""
    wnids_1k = imagenet1k_wnids()
    if set_name == "imagenet":
        return ClassLayout("1000 ImageNet-1k wnid folders (n01440764/ ... n15075141/), the standard val layout",
                           {w: i for i, w in enumerate(wnids_1k)})
    if set_name == "imagenet-v2":
        return ClassLayout("1000 folders named 0..999 = ImageNet-1k class index (ImageNetV2 matched-frequency, "
                           "threshold0.7 or top-images format)", {str(i): i for i in range(len(wnids_1k))})
    if set_name == "imagenet-a":
        wnids = embedded_wnids("imagenet_a")
        return ClassLayout("the 200 ImageNet-A wnid folders (n01498041/ ...), as in imagenet-a.tar",
                           {w: i for i, w in enumerate(wnids)})
    if set_name == "imagenet-o":
        wnids = embedded_wnids("imagenet_o")
        if in_distribution:
            return ClassLayout("an ImageNet val root holding (at least) the 200 ImageNet-O class wnid folders",
                               {w: i for i, w in enumerate(wnids)}, allow_extra=True)
        return ClassLayout("the 200 ImageNet-O wnid folders (n01443537/ ...), as in imagenet-o.tar",
                           {w: i for i, w in enumerate(wnids)})
    raise ValueError(f"unknown set {set_name!r}; choose one of {', '.join(SETS)}")


def scan_images(root: str | os.PathLike, layout: ClassLayout, set_name: str) -> list[tuple[str, int]]:
    """Check the layout, then list (path, target) for every image under the class folders, in sorted order."""
    root = Path(root)
    layout.check(root, set_name)
    extensions = get_img_extensions(as_set=True)
    samples = []
    for folder, target in sorted(layout.folder_to_target.items()):
        for dirpath, dirnames, filenames in os.walk(root / folder, followlinks=True):
            dirnames.sort()
            samples.extend((os.path.join(dirpath, f), target) for f in sorted(filenames)
                           if os.path.splitext(f)[1].lower() in extensions)
    if not samples:
        raise LayoutError(f"{set_name}: no images ({', '.join(sorted(extensions))}) found in the class folders "
                          f"of {root}")
    return samples


class ImageSamples(torch.utils.data.Dataset):
    """(path, target) samples -> (image tensor or None, target, path, error message or '').

    An unreadable file is returned as ``None`` with PIL's reason instead of raising inside a worker, so the
    caller decides (fail naming the file, or skip and count) and its message is not buried in a worker traceback.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Image.Image], torch.Tensor]):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str, str]:
        path, target = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            return None, target, path, f"{type(e).__name__}: {e}"
        return self.transform(image), target, path, ""


@dataclass
class Batch:
    images: torch.Tensor | None       # None when every image of the batch was unreadable
    targets: torch.Tensor
    paths: list[str]
    unreadable: list[tuple[str, str]]  # (path, reason)


def collate_samples(items: list[tuple[torch.Tensor | None, int, str, str]]) -> Batch:
    good = [item for item in items if item[0] is not None]
    return Batch(images=torch.stack([item[0] for item in good]) if good else None,
                 targets=torch.tensor([item[1] for item in good], dtype=torch.long),
                 paths=[item[2] for item in good],
                 unreadable=[(item[2], item[3]) for item in items if item[0] is None])

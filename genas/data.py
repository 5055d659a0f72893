"""Search datasets: the 50/50 split of a training set into search-train and search-val.

Supported (``data.name``): CIFAR-10/100 from a local torchvision root, ImageNet16-120 (the downsampled-ImageNet
pickles used by NAS-Bench-201), any ImageFolder root, and the embedded default ``digits`` (scikit-learn's 1,797
real 8x8 handwritten digits, upsampled to 3x32x32; needs no download). Nothing is downloaded unless
``data.download: true`` is set (CIFAR only).

Augmentation is reproducible: a sample fetched with the key ``(index, seed)`` is cropped/flipped by a generator
seeded with ``seed``, so the training sampler (:class:`EpochSampler`) fixes every random crop of an epoch and a
resumed run sees exactly the same batches as an uninterrupted one, whatever the number of loader workers.
A plain integer key uses the index as seed (deterministic too, e.g. for BN recalibration in the scorer).
"""
from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from genas.core.errors import UsageError

__all__ = ["DATASETS", "DatasetError", "SearchData", "ImageTensors", "SearchSplit", "RandomLabels",
           "EpochSampler", "split_indices", "load_split_file", "split_from_file", "build_search_data", "load_imagenet16"]

DATASETS = ("digits", "cifar10", "cifar100", "imagenet16-120", "imagefolder")

# Channel statistics of the NAS-Bench-201 pipelines (CIFAR, ImageNet16) and of ImageNet (ImageFolder roots).
_STATS = {
    "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "cifar100": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
    "imagenet16-120": ((122.68 / 255, 116.66 / 255, 104.01 / 255), (63.22 / 255, 61.26 / 255, 65.09 / 255)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
IMAGENET16_CLASSES = 120


class DatasetError(UsageError, RuntimeError):
    """A dataset that is missing or not laid out as expected; the message says what was expected where."""


@dataclass
class SearchData:
    """The two halves of a training set used by the search, and what a network needs to know about them."""

    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]


class ImageTensors(Dataset):
    """Images held in memory (uint8 or float in [0, 1], N x C x H x W) with integer labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        image = image.float().div_(255) if image.dtype == torch.uint8 else image.float()
        return image, int(self.labels[index])


class SearchSplit(Dataset):
    """A subset of a base dataset, normalised and (optionally) augmented with per-sample seeds.

    Keys are ``index`` or ``(index, seed)``; the seed drives the random crop / flip (see module docstring).
    """

    def __init__(self, base: Dataset, indices: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 augment: v2.Transform | None = None):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.augment = augment
        self.normalize = v2.Normalize(mean, std)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, key)
        image, label = self.base[int(self.indices[index])]
        if self.augment is not None:
            # torchvision draws from the global CPU generator: seed it for this sample, then restore it
            # (seeding torch.default_generator alone is ~40x cheaper than torch.manual_seed / fork_rng).
            generator = torch.default_generator
            state = generator.get_state()
            generator.manual_seed(int(seed))
            try:
                image = self.augment(image)
            finally:
                generator.set_state(state)
        return self.normalize(image), label


class RandomLabels(Dataset):
    """RLNAS: every example gets one fixed random label (drawn once from ``seed``, not per step)."""

    def __init__(self, dataset: Dataset, num_classes: int, seed: int):
        self.dataset = dataset
        self.labels = np.random.default_rng(seed).integers(0, num_classes, size=len(dataset))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        image, _ = self.dataset[key]
        index = key[0] if isinstance(key, tuple) else key
        return image, int(self.labels[index])


class EpochSampler(Sampler):
    """Per-epoch seeded permutation, sharded over DDP ranks, that can start mid-epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run restores its position from the
    step counter alone. Like ``DistributedSampler``, the permutation is padded to a multiple of ``world_size``
    and rank ``r`` takes every ``world_size``-th sample from ``r``. Yields ``(index, augmentation seed)`` keys
    for :class:`SearchSplit`.
    """

    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shard_size = math.ceil(num_samples / world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch``, skipping the first ``start`` samples of this rank's shard."""
        self.epoch, self.start = epoch, start

    def epoch_keys(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's full list of ``(index, seed)`` keys for ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_samples)
        seeds = rng.integers(0, 2**62, size=self.num_samples)
        padded = np.resize(np.arange(self.num_samples), self.shard_size * self.world_size)
        positions = padded[self.rank::self.world_size]
        return [(int(order[p]), int(seeds[p])) for p in positions]

    def __len__(self) -> int:
        return self.shard_size - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.epoch_keys(self.epoch)[self.start:])


def load_split_file(path: str | Path) -> dict[str, np.ndarray]:
    """The index lists of an AutoDL / NAS-Bench-201 split file (``cifar-split.txt``, ``cifar100-split.txt``,
    ``cifar100-test-split.txt``, ``imagenet-16-120-test-split.txt``): JSON mapping each key (``train``,
    ``valid``, ``xvalid``, ``xtest``) to ``["int", [index strings]]``. Indices keep the file's order."""
    import json

    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"data.split_file {path}: file not found (the AutoDL split files, e.g. "
                           f"cifar-split.txt, come with AutoDL-Projects / NATS-Bench configs/nas-benchmark/)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"data.split_file {path}: not JSON ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"data.split_file {path}: expected a JSON object of index lists")
    out = {}
    for key, value in raw.items():
        ok = isinstance(value, list) and len(value) == 2 and value[0] == "int" and isinstance(value[1], list)
        try:
            out[key] = np.array([int(v) for v in value[1]], dtype=np.int64) if ok else None
        except (TypeError, ValueError):
            out[key] = None
        if out[key] is None:
            raise DatasetError(f"data.split_file {path}: key {key!r} must map to [\"int\", [index strings]] "
                               f"(the AutoDL format), got {str(value)[:80]}")
    return out


def split_from_file(path: str | Path, num_train: int, num_test: int | None) -> tuple[str, np.ndarray, np.ndarray]:
    """The AutoDL search split of a split file: ``(val_source, train indices, val indices)``.

    A file with ``train`` / ``valid`` (``cifar-split.txt``, ``cifar100-split.txt``) splits the training set:
    ``val_source`` is ``"train"``. A file with ``xvalid`` (``cifar100-test-split.txt``,
    ``imagenet-16-120-test-split.txt``) trains on the whole training set and validates on the listed images
    of the test set (AutoDL ``get_nas_search_loaders``): ``val_source`` is ``"test"``.
    """
    splits = load_split_file(path)

    def checked(key: str, size: int, where: str) -> np.ndarray:
        idx = splits[key]
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= size:
            raise DatasetError(f"data.split_file {path}: {key!r} lists indices up to {idx.max() if len(idx) else '-'}"
                               f" but the {where} set has {size} images: is it the split file of this dataset?")
        if len(np.unique(idx)) != len(idx):
            raise DatasetError(f"data.split_file {path}: {key!r} lists an index twice")
        return idx

    if "train" in splits and "valid" in splits:
        train, val = checked("train", num_train, "training"), checked("valid", num_train, "training")
        if np.intersect1d(train, val).size:
            raise DatasetError(f"data.split_file {path}: 'train' and 'valid' share images")
        return "train", train, val
    if "xvalid" in splits:
        if num_test is None:
            raise DatasetError(f"data.split_file {path} selects validation images of the test set ('xvalid'), "
                               f"but this dataset has no test set here (cifar10, cifar100, imagenet16-120 only)")
        return "test", np.arange(num_train), checked("xvalid", num_test, "test")
    raise DatasetError(f"data.split_file {path}: expected keys 'train' and 'valid' (a split of the training "
                       f"set) or 'xvalid' (validation images of the test set), got {sorted(splits)}")


def split_indices(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed 50/50 split of a training set: (search-train indices, search-val indices), each sorted."""
    order = np.random.default_rng(seed).permutation(num_samples)
    half = num_samples // 2
    return np.sort(order[:half]), np.sort(order[half:])


def _load_digits() -> tuple[ImageTensors, int, tuple, tuple]:
    """scikit-learn's bundled 8x8 digits (values 0..16) scaled to [0, 1], bilinearly upsampled to 3x32x32."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    images = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    images = images.contiguous()
    mean = tuple(images.mean(dim=(0, 2, 3)).tolist())
    std = tuple(images.std(dim=(0, 2, 3)).tolist())
    return ImageTensors(images, torch.from_numpy(digits.target)), 10, mean, std


def _load_cifar(name: str, root: Path, download: bool, train: bool = True) -> tuple[ImageTensors, int]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, folder = (CIFAR10, "cifar-10-batches-py") if name == "cifar10" else (CIFAR100, "cifar-100-python")
    files = "data_batch_1..5, batches.meta" if name == "cifar10" else "train, meta"
    if not train:
        files = "test_batch, batches.meta" if name == "cifar10" else "test, meta"
    try:
        dataset = cls(str(root), train=train, download=download)
    except RuntimeError:
        raise DatasetError(
            f"{name} not found or corrupted under {root}: expected {root / folder}/ with {files} (the python "
            f"version of the dataset). Set data.root to the folder that contains {folder}, or data.download=true "
            f"to let torchvision download it there.") from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return ImageTensors(images, torch.tensor(dataset.targets)), len(dataset.classes)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain dicts/lists of numpy arrays only: a dataset file must not run arbitrary code."""

    _ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        module = module.replace("numpy.core", "numpy._core")  # pickles written with numpy 1.x
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def load_imagenet16(root: Path, num_classes: int = IMAGENET16_CLASSES, train: bool = True) -> ImageTensors:
    """The training set of ImageNet16-120 from ``root/train_data_batch_{1..10}`` (``train=False``: the
    validation set ``root/val_data``, NAS-Bench-201's test set).

    Each file is a pickled dict with ``data`` (N x 768 uint8, channel-major 3x16x16) and ``labels`` (1-based
    ImageNet classes); only classes 1..``num_classes`` are kept, shifted to 0-based.
    """
    paths = [root / f"train_data_batch_{i}" for i in range(1, 11)] if train else [root / "val_data"]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(
            f"ImageNet16-120 not found under {root}: expected the downsampled-ImageNet 16x16 pickles "
            f"{'train_data_batch_1 .. train_data_batch_10' if train else 'val_data'} there "
            f"({'found none' if len(missing) == len(paths) else 'missing: ' + ', '.join(missing)}). Set data.root to "
            f"the folder holding them (the ImageNet16 folder of NAS-Bench-201).")
    images, labels = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                entry = _ArrayUnpickler(f, encoding="latin1").load()
            data, target = np.asarray(entry["data"], dtype=np.uint8), np.asarray(entry["labels"], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: not a downsampled-ImageNet pickle with 'data' and 'labels' ({exc})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 16 * 16 or len(data) != len(target):
            raise DatasetError(f"{path}: expected 'data' of shape N x 768 (3x16x16) and N labels, got "
                               f"{data.shape} and {target.shape}")
        keep = (target >= 1) & (target <= num_classes)
        images.append(data[keep].reshape(-1, 3, 16, 16))
        labels.append(target[keep] - 1)
    return ImageTensors(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def _load_imagefolder(root: Path, image_size: int) -> tuple[Dataset, int]:
    from torchvision.datasets import ImageFolder

    resize = v2.Compose([v2.ToImage(), v2.Resize(image_size), v2.CenterCrop(image_size),
                         v2.ToDtype(torch.float32, scale=True)])
    try:
        dataset = ImageFolder(str(root), transform=resize)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise DatasetError(f"no image folder dataset under {root}: expected one sub-folder per class with "
                           f"images inside (root/<class>/<image>.jpg). ({exc})") from None
    return dataset, len(dataset.classes)


def _augmentation(mode: str, name: str, size: int, padding: int | None) -> v2.Transform | None:
    if mode == "auto":
        mode = "crop" if name == "digits" else "crop_flip"  # mirrored digits are not digits
    if mode == "none":
        return None
    crop = v2.RandomCrop(size, padding=size // 8 if padding is None else padding)
    return crop if mode == "crop" else v2.Compose([crop, v2.RandomHorizontalFlip()])


def _load_base(name: str, data_cfg: Mapping[str, Any], train: bool = True) -> tuple[Dataset, int]:
    """The training set (``train=False``: the test set; CIFAR and ImageNet16-120 only) and its class count."""
    root = Path(data_cfg["root"]).expanduser()  # each loader says what it expected to find there
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, root, bool(data_cfg.get("download")), train=train)
    if name == "imagenet16-120":
        return load_imagenet16(root, train=train), IMAGENET16_CLASSES
    return _load_imagefolder(root, int(data_cfg.get("image_size", 32)))


# Number of test images of the datasets whose AutoDL split files select validation images of the test set.
_TEST_SIZES = {"cifar10": 10000, "cifar100": 10000, "imagenet16-120": 6000}


def build_search_data(data_cfg: Mapping[str, Any]) -> SearchData:
    """The search-train / search-val halves of the training set described by ``data_cfg`` (config ``data``):
    the seeded 50/50 split of ``split_seed``, or the index lists of an AutoDL ``split_file``
    (:func:`split_from_file`; a test-split file validates on the test set's ``xvalid`` images)."""
    name = data_cfg["name"]
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if data_cfg.get("download") and name not in ("cifar10", "cifar100"):
        raise DatasetError(f"data.download is only supported for cifar10/cifar100, not {name!r}")
    split_file = data_cfg.get("split_file")
    if split_file is not None:
        load_split_file(split_file)  # a missing or malformed file fails before any dataset is read
    if name == "digits":
        base, num_classes, mean, std = _load_digits()
    else:
        if data_cfg.get("root") is None:
            raise DatasetError(f"data.root is not set: dataset {name!r} needs the folder it is stored in")
        mean, std = _STATS[name]
        base, num_classes = _load_base(name, data_cfg)
    image, _ = base[0]
    shape = tuple(image.shape)
    augment = _augmentation(data_cfg.get("augment", "auto"), name, shape[-1], data_cfg.get("crop_padding"))
    val_base = base
    if split_file is None:
        train_idx, val_idx = split_indices(len(base), int(data_cfg.get("split_seed", 0)))
    else:
        source, train_idx, val_idx = split_from_file(split_file, len(base), _TEST_SIZES.get(name))
        if source == "test":
            val_base, _ = _load_base(name, data_cfg, train=False)
            if len(val_base) != _TEST_SIZES[name]:
                raise DatasetError(f"the {name} test set has {len(val_base)} images, expected {_TEST_SIZES[name]}")
    return SearchData(train=SearchSplit(base, train_idx, mean, std, augment),
                      val=SearchSplit(val_base, val_idx, mean, std), num_classes=num_classes, input_shape=shape)

"""Search datasets: the digits default, CIFAR-10/100 and ImageNet16-120 files in their real on-disk formats (with
AutoDL split files), ImageFolder roots, errors, sampling."""
from __future__ import annotations

import io
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as torchvision_cifar
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.transforms.v2 import functional as TF

from genas.core.config import DEFAULTS
from genas.data import _STATS, DatasetError, EpochSampler, RandomLabels, build_search_data, load_imagenet16


def _cfg(**kwargs) -> dict:
    return {**DEFAULTS["data"], **kwargs}


@pytest.fixture(scope="module")
def digits():
    return build_search_data(_cfg(name="digits"))


def test_digits_split_is_a_fixed_half_of_the_1797_images(digits):
    assert (len(digits.train), len(digits.val)) == (898, 899)
    assert digits.num_classes == 10 and digits.input_shape == (3, 32, 32)
    train, val = set(digits.train.indices.tolist()), set(digits.val.indices.tolist())
    assert not train & val and train | val == set(range(1797))
    again = build_search_data(_cfg(name="digits"))
    assert np.array_equal(again.train.indices, digits.train.indices)
    other = build_search_data(_cfg(name="digits", split_seed=1))
    assert not np.array_equal(other.train.indices, digits.train.indices)


def test_digits_images_are_the_real_upsampled_digits(digits):
    raw = load_digits()
    mean = torch.tensor(digits.val.normalize.mean).view(3, 1, 1)
    std = torch.tensor(digits.val.normalize.std).view(3, 1, 1)
    for i in (0, 1, 898):
        image, label = digits.val[i]
        source = int(digits.val.indices[i])
        assert label == raw.target[source]
        # bilinear 8x8 -> 32x32 of the scaled digit, through torchvision's resize (an independent code path)
        expected = TF.resize(torch.tensor(raw.images[source] / 16.0, dtype=torch.float32)[None], [32, 32],
                             antialias=False)
        assert torch.allclose(image * std + mean, expected.expand(3, -1, -1), atol=1e-5)


def test_digits_train_augmentation_is_a_seeded_shift(digits):
    state = torch.get_rng_state()
    plain = digits.train.normalize(digits.train.base[int(digits.train.indices[5])][0])
    background = plain[:, 0, 0]  # corner pixel of a digit = 0 before normalisation
    shifts = set()
    for seed in range(12):
        image, _ = digits.train[(5, seed)]
        assert torch.equal(image, digits.train[(5, seed)][0])  # same key, same crop
        padded = torch.nn.functional.pad(plain - background[:, None, None], (4, 4, 4, 4)) + background[:, None, None]
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.allclose(padded[:, dy:dy + 32, dx:dx + 32], image, atol=1e-6)]
        assert matches, "an augmented digit must be a padded crop (digits are never flipped)"
        shifts.add(matches[0])
    assert len(shifts) > 3
    assert torch.equal(digits.train[5][0], digits.train[(5, 5)][0])  # an int key seeds with the index
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left untouched


def test_epoch_sampler_orders_shards_and_resumes():
    sampler = EpochSampler(10, seed=3)
    keys = sampler.epoch_keys(0)
    assert sorted(i for i, _ in keys) == list(range(10))
    assert keys == EpochSampler(10, seed=3).epoch_keys(0)
    assert keys != sampler.epoch_keys(1)
    sampler.set_epoch(0, start=4)
    assert list(sampler) == keys[4:] and len(sampler) == 6
    shards = [EpochSampler(10, seed=3, rank=r, world_size=3).epoch_keys(0) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded to 12 like DistributedSampler
    assert {k for s in shards for k in s} == set(keys)
    assert shards[0][0] == keys[0] and shards[1][0] == keys[1] and shards[0][3] == keys[9]
    assert shards[1][3] == keys[0] and shards[2][3] == keys[1]  # the padding repeats the head


def test_random_labels_are_fixed_per_example(digits):
    noisy = RandomLabels(digits.train, 10, seed=0)
    labels = [noisy[(i, 7)][1] for i in range(len(noisy))]
    assert labels == [noisy[(i, 8)][1] for i in range(len(noisy))] == [noisy[i][1] for i in range(len(noisy))]
    assert set(labels) == set(range(10))
    agree = np.mean([lab == digits.train[i][1] for i, lab in enumerate(labels)])
    assert 0.05 < agree < 0.2  # chance level (1/10), not the true labels
    assert torch.equal(noisy[(3, 9)][0], digits.train[(3, 9)][0])


def _write_imagenet16_batch(path, data: np.ndarray, labels: list[int]) -> None:
    with open(path, "wb") as f:
        pickle.dump({"data": data, "labels": labels, "mean": np.zeros(768)}, f)


def test_imagenet16_120_pickles(tmp_path):
    rng = np.random.default_rng(0)
    all_labels = []
    for i in range(1, 11):
        labels = [1, 120, 121, 1000] if i == 1 else [int(x) for x in rng.integers(1, 1001, size=3)]
        data = rng.integers(0, 256, size=(len(labels), 768), dtype=np.uint8)
        if i == 1:  # image 0: R plane = 10, G plane = 20, B = pixel index; channel-major rows
            data[0] = np.concatenate([np.full(256, 10), np.full(256, 20), np.arange(256)]).astype(np.uint8)
        _write_imagenet16_batch(tmp_path / f"train_data_batch_{i}", data, labels)
        all_labels += labels
    dataset = load_imagenet16(tmp_path)
    kept = [lab - 1 for lab in all_labels if lab <= 120]
    assert dataset.labels.tolist() == kept and kept[:2] == [0, 119]
    image, label = dataset[0]
    assert label == 0 and image.shape == (3, 16, 16)
    assert torch.allclose(image[0], torch.full((16, 16), 10 / 255)) and image[1, 3, 3] == pytest.approx(20 / 255)
    assert image[2, 1, 2] == pytest.approx(18 / 255)  # B plane: row 1, column 2 -> pixel 18

    data = build_search_data(_cfg(name="imagenet16-120", root=str(tmp_path)))
    assert data.num_classes == 120 and data.input_shape == (3, 16, 16)
    assert len(data.train) + len(data.val) == len(kept) and len(data.train) == len(kept) // 2
    assert data.train.augment.transforms[0].padding == [2, 2, 2, 2]  # 16 // 8, NAS-Bench-201's crop padding


def test_imagenet16_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"pickles train_data_batch_1 .. train_data_batch_10 there \(found none\)"):
        build_search_data(_cfg(name="imagenet16-120", root=str(tmp_path)))
    for i in range(1, 10):
        _write_imagenet16_batch(tmp_path / f"train_data_batch_{i}", np.zeros((1, 768), np.uint8), [1])
    with pytest.raises(DatasetError, match=r"\(missing: train_data_batch_10\)"):
        load_imagenet16(tmp_path)
    for i in range(1, 11):
        _write_imagenet16_batch(tmp_path / f"train_data_batch_{i}", np.zeros((1, 768), np.uint8), [1])
    with open(tmp_path / "train_data_batch_3", "wb") as f:
        pickle.dump({"data": os.system, "labels": []}, f)  # a pickle that would import os: refused
    with pytest.raises(DatasetError, match=r"train_data_batch_3: .*refusing to unpickle"):
        load_imagenet16(tmp_path)
    _write_imagenet16_batch(tmp_path / "train_data_batch_3", np.zeros((1, 3072), np.uint8), [1])
    with pytest.raises(DatasetError, match=r"train_data_batch_3: expected 'data' of shape N x 768"):
        load_imagenet16(tmp_path)


def test_imagefolder_root(tmp_path):
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for name, colour in colours.items():
        (tmp_path / name).mkdir()
        for k in range(3):
            Image.new("RGB", (40, 20), colour).save(tmp_path / name / f"{k}.png")
    data = build_search_data(_cfg(name="imagefolder", root=str(tmp_path), image_size=16))
    assert data.num_classes == 2 and data.input_shape == (3, 16, 16)
    assert (len(data.train), len(data.val)) == (3, 3)
    image, label = data.val[0]
    expected = (torch.tensor(colours[["cat", "dog"][label]]) / 255 - torch.tensor([0.485, 0.456, 0.406])) \
        / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(image, expected[:, None, None].expand(3, 16, 16), atol=1e-5)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no image folder dataset under .*empty: expected one sub-folder"):
        build_search_data(_cfg(name="imagefolder", root=str(tmp_path / "empty")))


def test_missing_roots_give_one_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=rf"cifar10 not found or corrupted under {tmp_path}: expected "
                                           rf"{tmp_path}/cifar-10-batches-py/ with data_batch_1..5"):
        build_search_data(_cfg(name="cifar10", root=str(tmp_path)))
    with pytest.raises(DatasetError, match=r"cifar100 .*expected .*cifar-100-python/ with train, meta"):
        build_search_data(_cfg(name="cifar100", root=str(tmp_path)))
    with pytest.raises(DatasetError, match=r"data.root is not set: dataset 'cifar10' needs"):
        build_search_data(_cfg(name="cifar10"))
    with pytest.raises(DatasetError, match=r"no image folder dataset under .*nope: expected one sub-folder"):
        build_search_data(_cfg(name="imagefolder", root=str(tmp_path / "nope")))
    with pytest.raises(DatasetError, match=r"cifar10 not found or corrupted under .*nope: expected"):
        build_search_data(_cfg(name="cifar10", root=str(tmp_path / "nope")))
    with pytest.raises(DatasetError, match=r"data.download is only supported for cifar10/cifar100"):
        build_search_data(_cfg(name="imagenet16-120", root=str(tmp_path), download=True))


# --------------------------------------------------------------------------------------------------
# CIFAR-10/100 and ImageNet16-120 files as they are on disk, read through genas.data
# --------------------------------------------------------------------------------------------------
class _Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote the CIFAR and downsampled-ImageNet files: a Python 2 ``str`` (dict
    keys, label names, the raw bytes of a numpy array) is a BINSTRING opcode, which Python 3 reads back with
    ``encoding="latin1"`` as ``str``. Give it ``bytes`` where Python 2 had ``str``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_python2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_python2_str


def _python2_pickle(path, obj) -> None:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    # numpy 1.x (which wrote the files) lived at numpy.core; numpy 2 pickles name numpy._core
    path.write_bytes(buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def _images(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    """``n`` random images as the files store them: one row of 3 x side x side uint8 per image, R plane, G plane,
    B plane, each row-major."""
    return rng.integers(0, 256, size=(n, 3 * side * side), dtype=np.uint8)


def _unnormalised(split, k: int, name: str) -> torch.Tensor:
    """Image ``k`` of a (non-augmented) search split back in [0, 1]."""
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in _STATS[name])
    return split[k][0] * std + mean


def _split_file(path, **lists) -> str:
    """An AutoDL split file: each key maps to ["int", [index strings]]."""
    path.write_text(json.dumps({k: ["int", [str(i) for i in v]] for k, v in lists.items()}))
    return str(path)


@pytest.fixture
def cifar_files_without_md5(monkeypatch):
    """torchvision checks every CIFAR file against the md5 sum of the real release, which a tiny file cannot
    have: only that comparison is replaced (by "the file exists"); paths, pickles, keys and meta are read by
    torchvision's own code, as for a user's files. ``test_cifar_md5_is_still_checked`` shows the check is on."""
    monkeypatch.setattr(torchvision_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def _write_cifar10(root, rng) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    """cifar-10-batches-py/ with data_batch_1..5 (3 images each), test_batch (4) and batches.meta; returns
    (train rows, train labels, test rows, test labels) in file order."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train, train_labels = [], []
    for b in range(1, 6):
        data, labels = _images(rng, 3, 32), [int(v) for v in rng.integers(0, 10, 3)]
        _python2_pickle(folder / f"data_batch_{b}", {b"batch_label": b"training batch %d of 5" % b, b"labels": labels,
                                                     b"data": data, b"filenames": [b"img_%d.png" % i for i in range(3)]})
        train.append(data)
        train_labels += labels
    test, test_labels = _images(rng, 4, 32), [9, 0, 4, 2]
    _python2_pickle(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": test_labels,
                                            b"data": test, b"filenames": [b"t_%d.png" % i for i in range(4)]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _python2_pickle(folder / "batches.meta", {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072})
    return np.concatenate(train), train_labels, test, test_labels


def test_cifar10_files_load_with_a_split_file(tmp_path, cifar_files_without_md5):
    train, train_labels, _, _ = _write_cifar10(tmp_path, np.random.default_rng(0))
    split = _split_file(tmp_path / "cifar-split.txt", train=[14, 0, 7, 3, 9], valid=[1, 12, 5])
    data = build_search_data(_cfg(name="cifar10", root=str(tmp_path), split_file=split))
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    # the 15 training images of the 5 batches, in batch order, channel-major as stored
    assert torch.equal(data.train.base.images, torch.from_numpy(train.reshape(15, 3, 32, 32)))
    assert data.train.base.labels.tolist() == train_labels
    assert data.train.indices.tolist() == [14, 0, 7, 3, 9] and data.val.indices.tolist() == [1, 12, 5]  # file order
    for k, source in enumerate([1, 12, 5]):
        expected = torch.from_numpy(train[source].reshape(3, 32, 32)).float() / 255
        assert torch.allclose(_unnormalised(data.val, k, "cifar10"), expected, atol=1e-6)
        assert data.val[k][1] == train_labels[source]
    image, label = data.train[(0, 123)]  # augmented: a padded crop / flip of training image 14
    assert image.shape == (3, 32, 32) and label == train_labels[14]
    seeded = build_search_data(_cfg(name="cifar10", root=str(tmp_path)))  # no split file: the seeded halves
    assert (len(seeded.train), len(seeded.val)) == (7, 8)
    assert sorted(seeded.train.indices.tolist() + seeded.val.indices.tolist()) == list(range(15))


def test_cifar100_files_load_with_a_test_split_file(tmp_path, cifar_files_without_md5):
    """cifar-100-python/{train,test,meta}; a cifar100-test-split.txt-like file trains on the whole training set
    and validates on the listed ('xvalid') images of the 10,000-image test set."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, fine = _images(rng, 6, 32), [99, 0, 42, 7, 7, 63]
    _python2_pickle(folder / "train", {b"filenames": [b"f%d.png" % i for i in range(6)], b"batch_label": b"training batch 1 of 1",
                                       b"fine_labels": fine, b"coarse_labels": [v // 5 for v in fine], b"data": train})
    test = np.zeros((10000, 3072), dtype=np.uint8)
    xvalid = [9999, 2, 5000]
    test[xvalid] = _images(rng, 3, 32)
    test_fine = [int(v) for v in np.arange(10000) % 100]
    _python2_pickle(folder / "test", {b"filenames": [b"t.png"] * 10000, b"batch_label": b"testing batch 1 of 1",
                                      b"fine_labels": test_fine, b"coarse_labels": [v // 5 for v in test_fine],
                                      b"data": test})
    _python2_pickle(folder / "meta", {b"fine_label_names": [b"class_%d" % i for i in range(100)],
                                      b"coarse_label_names": [b"super_%d" % i for i in range(20)]})
    split = _split_file(tmp_path / "cifar100-test-split.txt", xvalid=xvalid, xtest=[0, 1])
    data = build_search_data(_cfg(name="cifar100", root=str(tmp_path), split_file=split))
    assert data.num_classes == 100 and data.input_shape == (3, 32, 32)
    assert data.train.indices.tolist() == list(range(6)) and data.train.base.labels.tolist() == fine
    assert torch.equal(data.train.base.images, torch.from_numpy(train.reshape(6, 3, 32, 32)))
    assert len(data.val.base) == 10000 and data.val.indices.tolist() == xvalid
    for k, source in enumerate(xvalid):
        expected = torch.from_numpy(test[source].reshape(3, 32, 32)).float() / 255
        assert torch.allclose(_unnormalised(data.val, k, "cifar100"), expected, atol=1e-6)
        assert data.val[k][1] == source % 100


def test_cifar_md5_is_still_checked(tmp_path):
    """Without the fixture the same well-formed files are refused: they are not the release (md5)."""
    _write_cifar10(tmp_path, np.random.default_rng(0))
    with pytest.raises(DatasetError, match=r"cifar10 not found or corrupted under"):
        build_search_data(_cfg(name="cifar10", root=str(tmp_path)))


def test_imagenet16_files_load_with_a_test_split_file(tmp_path):
    """train_data_batch_1..10 and val_data as dicts of 'data' (N x 768 uint8, 3 x 16 x 16 channel-major) and
    1-based 'labels' of the 1,000 classes; kept: labels 1..120, shifted to 0-based. Batches 1-5 are Python 2
    pickles, 6-10 Python 3 (protocol 4): both are read. An imagenet-16-120-test-split.txt-like file validates
    on 'xvalid' of the 6,000 kept validation images (indices count kept images only, as AutoDL's loader)."""
    rng = np.random.default_rng(2)
    train_rows, train_labels = [], []
    for b in range(1, 11):
        data, labels = _images(rng, 4, 16), [int(v) for v in rng.integers(1, 1001, 4)]
        labels[0] = 1 + b  # at least one kept image per batch
        entry = {"data": data, "labels": labels, "mean": data.mean(0)}
        if b <= 5:
            _python2_pickle(tmp_path / f"train_data_batch_{b}", {k.encode(): v for k, v in entry.items()})
        else:
            with open(tmp_path / f"train_data_batch_{b}", "wb") as f:
                pickle.dump(entry, f, protocol=4)
        keep = [i for i, v in enumerate(labels) if v <= 120]
        train_rows.append(data[keep])
        train_labels += [labels[i] - 1 for i in keep]
    val_labels = [1 + i % 120 for i in range(6000)]
    for position, label in ((0, 121), (3001, 500), (6002, 1000)):  # other classes, interleaved: dropped
        val_labels.insert(position, label)
    val = np.zeros((6003, 768), dtype=np.uint8)
    kept_rows = [i for i, v in enumerate(val_labels) if v <= 120]
    xvalid = [5999, 0, 3000]
    for k in xvalid:
        val[kept_rows[k]] = _images(rng, 1, 16)[0]
    _python2_pickle(tmp_path / "val_data", {b"data": val, b"labels": val_labels})
    split = _split_file(tmp_path / "imagenet-16-120-test-split.txt", xvalid=xvalid, xtest=[1, 2])

    data = build_search_data(_cfg(name="imagenet16-120", root=str(tmp_path), split_file=split))
    assert data.num_classes == 120 and data.input_shape == (3, 16, 16)
    train = np.concatenate(train_rows)
    assert torch.equal(data.train.base.images, torch.from_numpy(train.reshape(-1, 3, 16, 16)))
    assert data.train.base.labels.tolist() == train_labels and data.train.indices.tolist() == list(range(len(train)))
    assert len(data.val.base) == 6000 and data.val.indices.tolist() == xvalid
    for k, source in enumerate(xvalid):
        expected = torch.from_numpy(val[kept_rows[source]].reshape(3, 16, 16)).float() / 255
        assert torch.allclose(_unnormalised(data.val, k, "imagenet16-120"), expected, atol=1e-6)
        assert data.val[k][1] == source % 120  # label (source % 120) + 1 in the file, 0-based here

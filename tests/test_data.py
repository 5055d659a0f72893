"""Search datasets: the digits default, ImageNet16-120 pickles, ImageFolder roots, CIFAR errors, sampling."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.transforms.v2 import functional as TF

from genas.core.config import DEFAULTS
from genas.data import DatasetError, EpochSampler, RandomLabels, build_search_data, load_imagenet16


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

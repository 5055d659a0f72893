"""Shared fixtures: the small real datasets of ../shared/data (tests that need them skip when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GENAS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def torch_threads():
    """Intra-op threads for the suite (GENAS_TEST_THREADS, default 1): the tensors in tests are small, and
    extra OpenMP threads only add synchronisation (up to 10x slower on a busy 2-core machine). Bit-exact
    comparisons between an in-process run and a subprocess run need the same thread count in both."""
    previous, previous_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    threads = int(os.environ.get("GENAS_TEST_THREADS", "1"))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # subprocesses (CLI tests) compute with the same threads
    yield
    torch.set_num_threads(previous)
    if previous_env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = previous_env


def shared_path(*parts: str) -> Path:
    """Path under the shared test data; skip the calling test with the reason when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set GENAS_SHARED_DATA to the folder holding "
                    f"nb201/, coco128/, cityscapes_tiny/, imagenet_classes/)")
    return path


@pytest.fixture
def nb201_csv() -> Path:
    return shared_path("nb201", "nats_bench_tss_200ep_test_acc.csv")


@pytest.fixture
def coco128() -> Path:
    return shared_path("coco128")


@pytest.fixture
def cityscapes_tiny() -> Path:
    return shared_path("cityscapes_tiny")


@pytest.fixture
def imagenet_classes() -> Path:
    return shared_path("imagenet_classes")


def assert_png(path: Path, min_side: int = 200) -> np.ndarray:
    """A PNG by signature that matplotlib reads back as a non-blank image of a useful size."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= min_side and image.shape[1] >= min_side
    assert image[..., :3].std() > 0.01  # not a blank canvas
    return image

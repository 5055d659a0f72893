"""Shared fixtures: the small real datasets of ../shared/data (tests that need them skip when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GENAS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def torch_threads():
    """Intra-op threads for the suite (GENAS_TEST_THREADS, default 1): the tensors in tests are small, and
    extra OpenMP threads only add synchronisation (up to 10x slower on a busy 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("GENAS_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


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

"""Shared fixtures: the small real datasets of ../shared/data (tests that need them skip when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GENAS_SHARED_DATA", REPO.parent / "shared" / "data"))


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

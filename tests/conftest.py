"""Shared fixtures. Keras reads its backend once, at import, so it is fixed here first."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

os.environ.setdefault("KERAS_BACKEND", "torch")

# Timing varies with the machine's load, so hypothesis checks properties, not speed.
settings.register_profile("cav", deadline=None)
settings.load_profile("cav")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20190101)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Folder with the real CIFAR archives, beside the project checkout."""
    path = Path(os.environ.get("CAV_TEST_DATA_DIR", SHARED_DATA))
    if not (path / "cifar-10-jpg.tar.gz").exists():
        pytest.fail(f"real CIFAR archives not found in {path}; set CAV_TEST_DATA_DIR")
    return path

"""Reading the real CIFAR-10 and CIFAR-100 image archives of the shared data folder."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from cav.data import CIFAR10_CLASSES, CIFAR100_CLASSES, load_classes, locate


@pytest.fixture(scope="module")
def ship_and_bird(shared_data_dir: Path) -> dict[str, np.ndarray]:
    return load_classes("cifar10", ["ship", "bird"], "train", shared_data_dir)


@pytest.fixture(scope="module")
def sea(shared_data_dir: Path) -> np.ndarray:
    return load_classes("cifar100", ["sea"], "train", shared_data_dir)["sea"]


def class_folders(archive: Path, split: str) -> set[str]:
    with tarfile.open(archive) as tar:
        return {
            Path(member.name).name
            for member in tar.getmembers()
            if member.isdir() and Path(member.name).parent.name == split
        }


def test_locates_both_archives(shared_data_dir: Path) -> None:
    assert locate(shared_data_dir, "cifar10").form == "image-archive"
    assert locate(shared_data_dir, "cifar100").path.name == "cifar-100-jpg.tar.gz"


def test_ship_and_bird_counts(ship_and_bird: dict[str, np.ndarray]) -> None:
    assert ship_and_bird["ship"].shape == (5000, 32, 32, 3)
    assert ship_and_bird["bird"].shape == (5000, 32, 32, 3)


def test_sea_count(sea: np.ndarray) -> None:
    assert sea.shape == (500, 32, 32, 3)
    assert sea.dtype == np.uint8


def test_real_pixels_look_natural(ship_and_bird: dict[str, np.ndarray]) -> None:
    for images in ship_and_bird.values():
        assert images.dtype == np.uint8
        assert images.min() <= 5
        assert images.max() >= 250
        assert 90 < images.mean() < 160
        # Natural images vary between neighbours far less than across the image.
        neighbour = np.abs(np.diff(images.astype(np.int16), axis=2)).mean()
        assert neighbour < 0.5 * images.std()
    assert len(np.unique(ship_and_bird["ship"][:100].reshape(100, -1), axis=0)) == 100


def test_ships_bluer_than_birds(ship_and_bird: dict[str, np.ndarray]) -> None:
    # Sea and sky make ship images blue on average; bird images are green-brown.
    ship = ship_and_bird["ship"].reshape(-1, 3).mean(axis=0)
    bird = ship_and_bird["bird"].reshape(-1, 3).mean(axis=0)
    assert ship[2] > ship[0] + 10
    assert bird[2] < bird[0] - 10


def test_sea_matches_extracted_folder(
    shared_data_dir: Path, sea: np.ndarray, tmp_path: Path
) -> None:
    with tarfile.open(shared_data_dir / "cifar-100-jpg.tar.gz") as tar:
        members = [m for m in tar.getmembers() if "/train/sea/" in m.name and m.isfile()]
        tar.extractall(tmp_path, members=members, filter="data")
    from_folder = load_classes("cifar100", ["sea"], "train", tmp_path)["sea"]
    np.testing.assert_array_equal(from_folder, sea)


def test_cifar100_folder_names(shared_data_dir: Path) -> None:
    folders = class_folders(shared_data_dir / "cifar-100-jpg.tar.gz", "train")
    assert folders == set(CIFAR100_CLASSES)


@pytest.mark.slow
def test_cifar10_folder_names(shared_data_dir: Path) -> None:
    folders = class_folders(shared_data_dir / "cifar-10-jpg.tar.gz", "test")
    assert folders == set(CIFAR10_CLASSES)


@pytest.mark.slow
def test_test_split_counts(shared_data_dir: Path) -> None:
    images = load_classes("cifar100", ["sea", "apple"], "test", shared_data_dir)
    assert images["sea"].shape[0] == 100
    assert images["apple"].shape[0] == 100

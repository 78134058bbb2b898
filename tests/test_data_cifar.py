"""Reading CIFAR in every supported form, from small files built here.

The canonical python format is rebuilt at small size: pickled dicts with bytes keys
(protocol 2, as the Python 2 originals), rows of 3072 bytes holding the red, green and
blue planes. Expected arrays come from the NHWC images the files were made from.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cav.data.cifar
from cav.data import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    class_names,
    load_cifar,
    load_classes,
    load_image_folder,
    locate,
    resolve_class,
)
from cav.errors import DataNotFoundError, InvalidArgumentError, InvalidTypeError

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def make_split(rng: np.random.Generator, n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Random NHWC images and labels that cover every class at least once."""
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    return images, rng.permutation(labels)


def to_rows(images: np.ndarray) -> np.ndarray:
    """Canonical rows: for each image the red plane, then green, then blue."""
    rows = np.empty((len(images), 3072), dtype=np.uint8)
    for i, image in enumerate(images):
        rows[i] = np.concatenate([image[:, :, c].ravel() for c in range(3)])
    return rows


def dump(path: Path, content: dict) -> None:
    with path.open("wb") as file:
        pickle.dump(content, file, protocol=2)


class Cifar:
    """A small CIFAR-10 and CIFAR-100 in memory, with writers for each on-disk form."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        # CIFAR-10: five train batches of 24 images and a test batch of 30.
        self.train10 = [make_split(rng, 24, 10) for _ in TRAIN_BATCHES]
        self.test10 = make_split(rng, 30, 10)
        self.train100 = make_split(rng, 230, 100)
        self.test100 = make_split(rng, 120, 100)

    def expected(self, dataset: str, split: str, label: int) -> np.ndarray:
        if dataset == "cifar10":
            batches = self.train10 if split == "train" else [self.test10]
        else:
            batches = [self.train100 if split == "train" else self.test100]
        return np.concatenate([images[labels == label] for images, labels in batches])

    def write_pickle_folder(self, parent: Path, dataset: str) -> Path:
        if dataset == "cifar10":
            folder = parent / "cifar-10-batches-py"
            folder.mkdir(parents=True)
            for name, (images, labels) in zip(TRAIN_BATCHES, self.train10, strict=True):
                dump(folder / name, {b"data": to_rows(images), b"labels": labels.tolist()})
            images, labels = self.test10
            dump(folder / "test_batch", {b"data": to_rows(images), b"labels": labels.tolist()})
            dump(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_CLASSES]})
            return folder
        folder = parent / "cifar-100-python"
        folder.mkdir(parents=True)
        for name, (images, labels) in (("train", self.train100), ("test", self.test100)):
            content = {
                b"data": to_rows(images),
                b"fine_labels": labels.tolist(),
                b"coarse_labels": (labels // 5).tolist(),
            }
            dump(folder / name, content)
        dump(folder / "meta", {b"fine_label_names": [n.encode() for n in CIFAR100_CLASSES]})
        return folder

    def write_image_tree(self, root: Path, dataset: str, suffix: str = ".png") -> Path:
        names = class_names(dataset)
        for split in ("train", "test"):
            for label, name in enumerate(names):
                folder = root / split / name
                folder.mkdir(parents=True)
                for i, image in enumerate(self.expected(dataset, split, label)):
                    Image.fromarray(image).save(folder / f"{i:04d}{suffix}", quality=95)
        return root


def make_tar(source: Path, archive: Path, arcname: str | None = None) -> Path:
    mode = "w:gz" if archive.name.endswith((".gz", "_archive")) else "w"
    with tarfile.open(archive, mode) as tar:
        tar.add(source, arcname=arcname if arcname is not None else source.name)
    return archive


@pytest.fixture(scope="module")
def cifar() -> Cifar:
    return Cifar()


def build_form(cifar: Cifar, tmp: Path, dataset: str, form: str) -> Path:
    """Write `dataset` in `form` under `tmp` and return the path to pass as data_dir."""
    data_dir = tmp / "data"
    data_dir.mkdir()
    staging = tmp / "staging"
    canonical = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
    keras_folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

    if form == "pickle-folder-itself":
        return cifar.write_pickle_folder(data_dir, dataset)

    if form == "pickle-folder-inside":
        cifar.write_pickle_folder(data_dir, dataset)
        return data_dir

    if form == "keras3-folder":
        cifar.write_pickle_folder(data_dir / f"{keras_folder[dataset]}-target", dataset)
        return data_dir

    if form in ("canonical-archive", "archive-itself", "keras2-archive", "keras3-archive"):
        folder = cifar.write_pickle_folder(staging, dataset)
        name = {
            "keras2-archive": f"{keras_folder[dataset]}.tar.gz",
            "keras3-archive": f"{keras_folder[dataset]}-target_archive",
        }.get(form, canonical[dataset])
        archive = make_tar(folder, data_dir / name)
        return archive if form == "archive-itself" else data_dir

    if form == "image-folder-inside":
        cifar.write_image_tree(data_dir / "my-images", dataset)
        return data_dir

    if form == "image-folder-itself":
        return cifar.write_image_tree(data_dir / "my-images", dataset)

    if form in ("image-archive-inside", "image-archive-itself", "image-tar-plain"):
        root = cifar.write_image_tree(staging / "pictures", dataset)
        name = "pictures.tar" if form == "image-tar-plain" else "pictures.tar.gz"
        archive = make_tar(root, data_dir / name)
        return archive if form == "image-archive-itself" else data_dir

    raise ValueError(form)


FORMS = {
    "pickle-folder-itself": "pickle-folder",
    "pickle-folder-inside": "pickle-folder",
    "keras3-folder": "pickle-folder",
    "canonical-archive": "pickle-archive",
    "archive-itself": "pickle-archive",
    "keras2-archive": "pickle-archive",
    "keras3-archive": "pickle-archive",
    "image-folder-inside": "image-folder",
    "image-folder-itself": "image-folder",
    "image-archive-inside": "image-archive",
    "image-archive-itself": "image-archive",
    "image-tar-plain": "image-archive",
}


@pytest.mark.parametrize("form", list(FORMS))
def test_cifar10_reads_every_form(cifar: Cifar, tmp_path: Path, form: str) -> None:
    data_dir = build_form(cifar, tmp_path, "cifar10", form)
    assert locate(data_dir, "cifar10").form == FORMS[form]

    for split in ("train", "test"):
        images = load_classes("cifar10", ["ship", "bird", 0], split, data_dir)
        assert list(images) == ["ship", "bird", "airplane"]
        for name, label in (("ship", 8), ("bird", 2), ("airplane", 0)):
            np.testing.assert_array_equal(images[name], cifar.expected("cifar10", split, label))


@pytest.mark.parametrize(
    "form", ["pickle-folder-inside", "keras3-folder", "canonical-archive", "image-archive-inside"]
)
def test_cifar100_reads_forms(cifar: Cifar, tmp_path: Path, form: str) -> None:
    data_dir = build_form(cifar, tmp_path, "cifar100", form)
    assert locate(data_dir, "cifar100").form == FORMS[form]

    for split in ("train", "test"):
        images = load_classes("cifar100", ["sea", "apple", "worm"], split, data_dir)
        for name, label in (("sea", 71), ("apple", 0), ("worm", 99)):
            np.testing.assert_array_equal(images[name], cifar.expected("cifar100", split, label))


def test_images_are_nhwc_uint8(cifar: Cifar, tmp_path: Path) -> None:
    data_dir = build_form(cifar, tmp_path, "cifar10", "pickle-folder-inside")
    ship = load_classes("cifar10", "ship", "train", data_dir)["ship"]
    assert ship.dtype == np.uint8
    assert ship.shape[1:] == (32, 32, 3)
    assert ship.flags.c_contiguous


def test_jpeg_tree_decodes_close(tmp_path: Path) -> None:
    # Smooth ramps with a different offset per channel: JPEG keeps them within a few
    # levels, while a swapped channel or axis would be off by tens of levels.
    y, x, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    expected = np.stack([2 * y + 3 * x + 50 * c + i for i in range(4)]).astype(np.uint8)
    folder = tmp_path / "tree" / "test" / "ship"
    folder.mkdir(parents=True)
    for i, image in enumerate(expected):
        Image.fromarray(image).save(folder / f"{i:04d}.jpg", quality=95)

    ship = load_classes("cifar10", ["ship"], "test", tmp_path / "tree")["ship"]
    assert ship.shape == expected.shape
    error = np.abs(ship.astype(np.float64) - expected).mean()
    assert error < 3.0


def test_both_datasets_in_one_folder(cifar: Cifar, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cifar.write_pickle_folder(tmp_path / "s10", "cifar10")
    cifar.write_pickle_folder(tmp_path / "s100", "cifar100")
    make_tar(tmp_path / "s10" / "cifar-10-batches-py", data_dir / "a.tar.gz")
    make_tar(tmp_path / "s100" / "cifar-100-python", data_dir / "b.tar.gz")

    assert locate(data_dir, "cifar10").path.name == "a.tar.gz"
    assert locate(data_dir, "cifar100").path.name == "b.tar.gz"
    sea = load_classes("cifar100", ["sea"], "train", data_dir)["sea"]
    np.testing.assert_array_equal(sea, cifar.expected("cifar100", "train", 71))


def test_archive_order_does_not_matter(cifar: Cifar, tmp_path: Path) -> None:
    folder = cifar.write_pickle_folder(tmp_path / "staging", "cifar10")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ["data_batch_4", "test_batch", "data_batch_1", "data_batch_5"]:
            tar.add(folder / name, arcname=f"./cifar-10-batches-py/{name}")
        for name in ["data_batch_3", "data_batch_2", "batches.meta"]:
            tar.add(folder / name, arcname=f"./cifar-10-batches-py/{name}")

    frog = load_classes("cifar10", ["frog"], "train", archive)["frog"]
    np.testing.assert_array_equal(frog, cifar.expected("cifar10", "train", 6))


def test_load_cifar_groups_by_class(cifar: Cifar, tmp_path: Path) -> None:
    data_dir = build_form(cifar, tmp_path, "cifar10", "pickle-folder-inside")
    images, labels = load_cifar("cifar10", "test", data_dir=data_dir)
    assert images.shape == (30, 32, 32, 3)
    assert labels.dtype == np.int64
    assert np.all(np.diff(labels) >= 0)
    for label in range(10):
        np.testing.assert_array_equal(
            images[labels == label], cifar.expected("cifar10", "test", label)
        )


def test_load_cifar_class_subset(cifar: Cifar, tmp_path: Path) -> None:
    data_dir = build_form(cifar, tmp_path, "cifar10", "pickle-folder-inside")
    images, labels = load_cifar("cifar10", "train", classes=["truck", "cat"], data_dir=data_dir)
    n_truck = len(cifar.expected("cifar10", "train", 9))
    assert labels[:n_truck].tolist() == [9] * n_truck
    assert set(labels[n_truck:].tolist()) == {3}
    assert len(images) == len(labels)


def test_repeated_classes_read_once(cifar: Cifar, tmp_path: Path) -> None:
    data_dir = build_form(cifar, tmp_path, "cifar10", "pickle-folder-inside")
    images = load_classes("cifar10", ["ship", 8, "SHIP"], "train", data_dir)
    assert list(images) == ["ship"]


def test_natural_order_of_files(tmp_path: Path) -> None:
    folder = tmp_path / "tree" / "train" / "cat"
    folder.mkdir(parents=True)
    for value in (10, 2, 1):
        Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(folder / f"{value}.png")
    cat = load_classes("cifar10", ["cat"], "train", tmp_path / "tree")["cat"]
    assert cat[:, 0, 0, 0].tolist() == [1, 2, 10]


def test_cache_skips_decoding(
    cifar: Cifar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = build_form(cifar, tmp_path, "cifar10", "image-archive-inside")
    cache_dir = tmp_path / "cache"
    first = load_classes("cifar10", ["ship", "bird"], "train", data_dir, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.npy"))) == 2
    assert not [p for p in cache_dir.iterdir() if p.suffix != ".npy"]

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("read_classes called although the cache is filled")

    monkeypatch.setattr(cav.data.cifar, "read_classes", fail)
    second = load_classes("cifar10", ["bird", "ship"], "train", data_dir, cache_dir=cache_dir)
    for name in ("ship", "bird"):
        np.testing.assert_array_equal(second[name], first[name])


def test_cache_follows_archive_mtime(
    cifar: Cifar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = build_form(cifar, tmp_path, "cifar10", "canonical-archive")
    cache_dir = tmp_path / "cache"
    load_classes("cifar10", ["ship"], "train", data_dir, cache_dir=cache_dir)
    archive = data_dir / "cifar-10-python.tar.gz"
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    calls = []
    original = cav.data.cifar.read_classes

    def counting(*args: object, **kwargs: object) -> dict:
        calls.append(args)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cav.data.cifar, "read_classes", counting)
    load_classes("cifar10", ["ship"], "train", data_dir, cache_dir=cache_dir)
    assert len(calls) == 1
    assert len(list(cache_dir.glob("*.npy"))) == 2


def test_corrupt_cache_file_is_reread(cifar: Cifar, tmp_path: Path) -> None:
    data_dir = build_form(cifar, tmp_path, "cifar10", "pickle-folder-inside")
    cache_dir = tmp_path / "cache"
    load_classes("cifar10", ["ship"], "train", data_dir, cache_dir=cache_dir)
    (cached,) = cache_dir.glob("*.npy")
    cached.write_bytes(b"not an npy file")
    ship = load_classes("cifar10", ["ship"], "train", data_dir, cache_dir=cache_dir)["ship"]
    np.testing.assert_array_equal(ship, cifar.expected("cifar10", "train", 8))


# Class names and resolution -------------------------------------------------------------


def test_class_name_constants() -> None:
    assert len(CIFAR10_CLASSES) == 10
    assert CIFAR10_CLASSES[8] == "ship"
    assert CIFAR10_CLASSES[2] == "bird"
    assert CIFAR10_CLASSES[9] == "truck"
    assert len(CIFAR100_CLASSES) == 100
    assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    assert CIFAR100_CLASSES[71] == "sea"
    assert CIFAR100_CLASSES[0] == "apple"
    assert CIFAR100_CLASSES[99] == "worm"


@pytest.mark.parametrize(
    ("dataset", "query", "expected"),
    [
        ("cifar10", "ship", (8, "ship")),
        ("cifar10", 2, (2, "bird")),
        ("cifar10", np.int64(9), (9, "truck")),
        ("cifar10", "8", (8, "ship")),
        ("CIFAR-10", " Airplane ", (0, "airplane")),
        ("cifar100", "sea", (71, "sea")),
        ("cifar100", "Aquarium fish", (1, "aquarium_fish")),
        ("cifar_100", "maple-tree", (47, "maple_tree")),
    ],
)
def test_resolve_class(dataset: str, query: str | int, expected: tuple[int, str]) -> None:
    assert resolve_class(dataset, query) == expected


def test_unknown_class_lists_close_names() -> None:
    with pytest.raises(InvalidArgumentError, match="close names: ship"):
        resolve_class("cifar10", "shp")


def test_unknown_class_without_close_names() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown CIFAR-100 class 'xyzzy'"):
        resolve_class("cifar100", "xyzzy")


@pytest.mark.parametrize("index", [-1, 10, 100])
def test_class_index_out_of_range(index: int) -> None:
    with pytest.raises(InvalidArgumentError, match="0 to 9"):
        resolve_class("cifar10", index)


@pytest.mark.parametrize("query", [True, 2.0, None])
def test_class_of_wrong_type(query: object) -> None:
    with pytest.raises(InvalidTypeError):
        resolve_class("cifar10", query)  # type: ignore[arg-type]


def test_unknown_dataset() -> None:
    with pytest.raises(InvalidArgumentError, match="'cifar10', 'cifar100'"):
        class_names("mnist")


def test_unknown_split(cifar: Cifar, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="split must be one of"):
        load_classes("cifar10", ["ship"], "validation", tmp_path)


def test_empty_class_list(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="at least one class"):
        load_classes("cifar10", [], "train", tmp_path)


# Missing and invalid data ---------------------------------------------------------------


def test_missing_data_message(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_classes("cifar10", ["ship"], "train", tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "cifar-10-python.tar.gz" in message
    assert "cifar-10-batches-py" in message
    assert "cav.data.download('cifar10'" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


def test_missing_data_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="CIFAR-100 not found"):
        locate(tmp_path / "does-not-exist", "cifar100")


def test_default_dirs_follow_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cifar = Cifar()
    cifar.write_pickle_folder(tmp_path / "keras" / "datasets", "cifar10")
    monkeypatch.delenv("CAV_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert locate(None, "cifar10").form == "pickle-folder"
    with pytest.raises(DataNotFoundError, match=re.escape(str(tmp_path / "keras" / "datasets"))):
        locate(None, "cifar100")


def test_other_dataset_archive_rejected(cifar: Cifar, tmp_path: Path) -> None:
    folder = cifar.write_pickle_folder(tmp_path / "staging", "cifar100")
    archive = make_tar(folder, tmp_path / "cifar-100-python.tar.gz")
    with pytest.raises(DataNotFoundError, match="CIFAR-10 not found"):
        locate(archive, "cifar10")


def test_missing_batch_file(cifar: Cifar, tmp_path: Path) -> None:
    folder = cifar.write_pickle_folder(tmp_path, "cifar10")
    (folder / "data_batch_3").unlink()
    assert load_classes("cifar10", ["ship"], "test", folder)["ship"].shape[0] > 0
    with pytest.raises(DataNotFoundError, match="data_batch_3"):
        load_classes("cifar10", ["ship"], "train", folder)


def test_missing_batch_in_archive(cifar: Cifar, tmp_path: Path) -> None:
    folder = cifar.write_pickle_folder(tmp_path / "staging", "cifar10")
    (folder / "data_batch_5").unlink()
    archive = make_tar(folder, tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DataNotFoundError, match="data_batch_5"):
        load_classes("cifar10", ["ship"], "train", archive)


def test_missing_class_folder(cifar: Cifar, tmp_path: Path) -> None:
    root = cifar.write_image_tree(tmp_path / "tree", "cifar10")
    shutil.rmtree(root / "train" / "horse")
    with pytest.raises(DataNotFoundError, match="horse"):
        load_classes("cifar10", ["horse"], "train", root)


def test_missing_class_in_archive(cifar: Cifar, tmp_path: Path) -> None:
    root = cifar.write_image_tree(tmp_path / "tree", "cifar10")
    shutil.rmtree(root / "test" / "horse")
    archive = make_tar(root, tmp_path / "tree.tar.gz")
    with pytest.raises(DataNotFoundError, match="test/horse"):
        load_classes("cifar10", ["horse"], "test", archive)


def test_wrong_image_size_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "tree" / "train" / "dog"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(folder / "0.png")
    with pytest.raises(InvalidArgumentError, match=r"\(28, 28, 3\)"):
        load_classes("cifar10", ["dog"], "train", tmp_path / "tree")


def test_unsafe_pickle_not_executed(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (eval, ("1 + 1",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    dump(folder / "test_batch", {b"data": Payload(), b"labels": [0]})
    with pytest.raises(InvalidArgumentError, match="eval is not allowed"):
        load_classes("cifar10", ["airplane"], "test", folder)


def test_batch_of_wrong_shape(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    dump(folder / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(InvalidArgumentError, match=r"shape \(n, 3072\)"):
        load_classes("cifar10", ["airplane"], "test", folder)


def test_default_protocol_pickles_read(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = np.arange(2 * 32 * 32 * 3, dtype=np.uint64).reshape(2, 32, 32, 3).astype(np.uint8)
    with (folder / "test_batch").open("wb") as file:
        pickle.dump({"data": to_rows(images), "labels": np.array([4, 4])}, file)
    deer = load_classes("cifar10", ["deer"], "test", folder)["deer"]
    np.testing.assert_array_equal(deer, images)


# Plain image folders --------------------------------------------------------------------


def test_image_folder_resizes(tmp_path: Path) -> None:
    Image.fromarray(np.full((40, 20, 3), 200, dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((10, 10), 50, dtype=np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_image_folder(tmp_path, image_size=16)
    assert images.shape == (2, 16, 16, 3)
    assert images[0].min() == 200
    assert images[1].max() == 50


def test_image_folder_mixed_sizes(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((9, 8, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(InvalidArgumentError, match="pass image_size"):
        load_image_folder(tmp_path)


def test_image_folder_empty(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="no image files"):
        load_image_folder(tmp_path)


def test_image_folder_bad_size(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(InvalidArgumentError, match="image_size"):
        load_image_folder(tmp_path, image_size=0)

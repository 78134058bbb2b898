"""Finding CIFAR on disk, in any of the forms that ``cav.data`` reads.

Four forms are accepted, for either dataset:

- ``pickle-archive``: the canonical python tarball (``cifar-10-python.tar.gz``,
  ``cifar-100-python.tar.gz``), also under the names Keras gives its downloads
  (``cifar-10-batches-py.tar.gz``, ``cifar-10-batches-py-target_archive``, ...).
- ``pickle-folder``: the folder extracted from it (``cifar-10-batches-py/``,
  ``cifar-100-python/``), also nested one level down as in the Keras cache
  (``~/.keras/datasets/cifar-10-batches-py-target/cifar-10-batches-py``).
- ``image-folder``: a tree ``<root>/<split>/<class_name>/*.png|jpg``.
- ``image-archive``: a tar archive (compressed or not) of such a tree.
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cav.data.classes import (
    DATASET_TITLES,
    DATASETS,
    SPLITS,
    DatasetName,
    class_names,
    normalize_dataset,
)
from cav.errors import DataNotFoundError, InvalidTypeError

logger = logging.getLogger(__name__)

Form = Literal["pickle-archive", "pickle-folder", "image-archive", "image-folder"]

#: Pickled batch files of each dataset and split, in the canonical order of the images.
PICKLE_FILES: dict[DatasetName, dict[str, tuple[str, ...]]] = {
    "cifar10": {
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
    },
    "cifar100": {"train": ("train",), "test": ("test",)},
}

#: Name of the folder inside the canonical tarball.
PICKLE_FOLDERS: dict[DatasetName, str] = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
}

#: Names of the canonical tarball: the official one first, then those Keras 2 and 3 save.
PICKLE_ARCHIVES: dict[DatasetName, tuple[str, ...]] = {
    "cifar10": (
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py.tar.gz",
        "cifar-10-batches-py-target_archive",
        "cifar-10-batches-py_archive",
    ),
    "cifar100": (
        "cifar-100-python.tar.gz",
        "cifar-100-python-target_archive",
        "cifar-100-python_archive",
    ),
}

#: Official download addresses and md5 checksums of the canonical tarballs.
DOWNLOAD_URLS: dict[DatasetName, str] = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
DOWNLOAD_MD5: dict[DatasetName, str] = {
    "cifar10": "c58f30108f718f92721af3b95e74349a",
    "cifar100": "eb9058c3a382ffc7106e4002c42a8d85",
}

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

# Reading an archive's first members is enough to tell its form and dataset, because
# both the canonical tarballs and image trees put a batch file or an image early.
_PEEK_MEMBERS = 64


@dataclass(frozen=True)
class DataSource:
    """Location and form of one dataset on disk.

    Attributes
    ----------
    dataset : {"cifar10", "cifar100"}
        Which dataset the source holds.
    form : {"pickle-archive", "pickle-folder", "image-archive", "image-folder"}
        How it is stored (see the module docstring).
    path : pathlib.Path
        The archive file, the folder of pickled batches, or the root of the image tree
        (the folder that contains ``train/`` and ``test/``).
    member_root : str
        Inside an archive, the folder that contains the batches or the split folders
        (``""`` for the archive's top level). Empty for folders.
    """

    dataset: DatasetName
    form: Form
    path: Path
    member_root: str = ""

    @property
    def is_archive(self) -> bool:
        """Whether `path` is an archive file rather than a folder."""
        return self.form in ("pickle-archive", "image-archive")


def default_data_dirs() -> list[Path]:
    """Return the folders searched when no ``data_dir`` is given.

    Returns
    -------
    list of pathlib.Path
        ``$CAV_DATA_DIR`` when set, then the Keras dataset cache
        (``$KERAS_HOME/datasets``, by default ``~/.keras/datasets``).
    """
    folders = []
    if os.environ.get("CAV_DATA_DIR"):
        folders.append(Path(os.environ["CAV_DATA_DIR"]).expanduser())
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    folders.append(Path(keras_home).expanduser() / "datasets")
    return folders


def locate(data_dir: str | os.PathLike[str] | None, dataset: str) -> DataSource:
    """Find `dataset` inside `data_dir`, in any supported form.

    The search prefers exact pixels and quick reads: an extracted folder of pickled
    batches, then a canonical tarball, then an image-folder tree, then any other tar
    archive in `data_dir` whose first members show an image tree or batches of `dataset`.
    Folders are searched at `data_dir` itself and up to two levels below it.

    Parameters
    ----------
    data_dir : str, os.PathLike or None
        A folder holding the data in one of the forms, or an archive file itself. ``None``
        searches :func:`default_data_dirs`.
    dataset : str
        ``"cifar10"`` or ``"cifar100"``.

    Returns
    -------
    DataSource

    Raises
    ------
    DataNotFoundError
        If nothing of `dataset` is found; the message names the accepted files and
        folders and how to download them.
    """
    name = normalize_dataset(dataset)
    if data_dir is None:
        searched = default_data_dirs()
    elif isinstance(data_dir, str | os.PathLike):
        searched = [Path(data_dir).expanduser()]
    else:
        raise InvalidTypeError(
            f"data_dir must be a path (str or os.PathLike) or None, got {type(data_dir).__name__}"
        )

    for path in searched:
        source = _search(path, name)
        if source is not None:
            logger.info("Using %s as %s from %s", source.form, DATASET_TITLES[name], source.path)
            return source
    raise DataNotFoundError(not_found_message(name, searched))


def not_found_message(dataset: DatasetName, searched: list[Path]) -> str:
    """Return the message of the error raised when `dataset` is not found in `searched`."""
    title = DATASET_TITLES[dataset]
    where = ", ".join(str(path) for path in searched)
    archives = " or ".join(PICKLE_ARCHIVES[dataset][:2])
    return (
        f"{title} not found in {where}. Expected one of: the canonical archive {archives}; "
        f"the folder {PICKLE_FOLDERS[dataset]}/ extracted from it (Keras keeps it under "
        f"~/.keras/datasets); or an image-folder tree <root>/{{train,test}}/<class_name>/"
        f"*.png|jpg, as a folder or a .tar.gz. Download the canonical archive with "
        f"cav.data.download({dataset!r}, DEST_DIR) or from {DOWNLOAD_URLS[dataset]}, "
        f"then pass DEST_DIR as data_dir."
    )


def _search(path: Path, dataset: DatasetName) -> DataSource | None:
    if path.is_file():
        return _identify_archive(path, dataset)
    if not path.is_dir():
        return None

    folders = [path, *_subfolders(path, depth=2)]
    for folder in folders:
        if _is_pickle_folder(folder, dataset):
            return DataSource(dataset, "pickle-folder", folder)

    for archive_name in PICKLE_ARCHIVES[dataset]:
        candidate = path / archive_name
        if candidate.is_file():
            source = _identify_archive(candidate, dataset)
            if source is not None:
                return source

    for folder in folders:
        if _is_image_root(folder, dataset):
            return DataSource(dataset, "image-folder", folder)

    for candidate in _archives_in(path, dataset):
        source = _identify_archive(candidate, dataset)
        if source is not None:
            return source
    return None


def _subfolders(path: Path, depth: int) -> Iterator[Path]:
    try:
        children = sorted(child for child in path.iterdir() if child.is_dir())
    except OSError:
        return
    yield from children
    if depth > 1:
        for child in children:
            yield from _subfolders(child, depth - 1)


def _archives_in(path: Path, dataset: DatasetName) -> list[Path]:
    """Return the tar archives directly in `path`, those whose name mentions `dataset` first."""
    tag = {"cifar10": "10", "cifar100": "100"}[dataset]
    archives = [
        child
        for child in path.iterdir()
        if child.is_file() and child.name.lower().endswith(ARCHIVE_SUFFIXES)
    ]

    def mentions_dataset(archive: Path) -> bool:
        stem = archive.name.lower().replace("-", "").replace("_", "")
        return f"cifar{tag}" in stem and not (tag == "10" and "cifar100" in stem)

    return sorted(archives, key=lambda archive: (not mentions_dataset(archive), archive.name))


def _is_pickle_folder(folder: Path, dataset: DatasetName) -> bool:
    if dataset == "cifar10":
        names = [*PICKLE_FILES["cifar10"]["train"], *PICKLE_FILES["cifar10"]["test"]]
        return any((folder / name).is_file() for name in names)
    has_batch = (folder / "train").is_file() or (folder / "test").is_file()
    return has_batch and (folder / "meta").is_file()


def _is_image_root(folder: Path, dataset: DatasetName) -> bool:
    names = set(class_names(dataset))
    for split in SPLITS:
        split_dir = folder / split
        if split_dir.is_dir() and any((split_dir / name).is_dir() for name in names):
            return True
    return False


def _identify_archive(path: Path, dataset: DatasetName) -> DataSource | None:
    """Return the source in archive `path` if it contains `dataset`, else ``None``."""
    try:
        with tarfile.open(path, "r:*") as archive:
            for count, member in enumerate(archive):
                if count >= _PEEK_MEMBERS:
                    break
                if not member.isfile():
                    continue
                found = _classify_member(member.name)
                if found is None:
                    continue
                found_dataset, form, member_root = found
                if found_dataset != dataset:
                    logger.debug(
                        "Skipping %s: it contains %s, not %s", path, found_dataset, dataset
                    )
                    return None
                return DataSource(dataset, form, path, member_root)
    except (tarfile.TarError, OSError) as exc:
        logger.debug("Skipping %s: not a readable tar archive (%s)", path, exc)
    return None


def member_path(member_name: str) -> str:
    """Return an archive member's name without leading ``./`` and surrounding slashes."""
    name = member_name
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def _classify_member(member_name: str) -> tuple[DatasetName, Form, str] | None:
    """Return (dataset, form, member_root) for an archive member that reveals them."""
    parts = member_path(member_name).split("/")
    base = parts[-1]
    root = "/".join(parts[:-1])
    if base in (*PICKLE_FILES["cifar10"]["train"], *PICKLE_FILES["cifar10"]["test"]):
        return "cifar10", "pickle-archive", root
    if base in ("train", "test", "meta"):
        return "cifar100", "pickle-archive", root

    if len(parts) >= 3 and parts[-3] in SPLITS and Path(base).suffix.lower() in IMAGE_SUFFIXES:
        image_root = "/".join(parts[:-3])
        for dataset in DATASETS:
            if parts[-2] in class_names(dataset):
                return dataset, "image-archive", image_root
    return None

"""Readers of the four on-disk forms of CIFAR, and of plain folders of images.

Each reader decodes only the requested classes of one split. It returns, per class, a
uint8 array ``(n, 32, 32, 3)`` (NHWC) in the canonical order of the images. That is the
file order for the pickled batches, and the natural order of the file names for image
trees (``2.png`` before ``10.png``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pickle
import re
import tarfile
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cav.data.classes import Split
from cav.data.sources import IMAGE_SUFFIXES, PICKLE_FILES, DataSource, member_path
from cav.errors import DataNotFoundError, InvalidArgumentError

logger = logging.getLogger(__name__)

CIFAR_SHAPE = (32, 32, 3)
_LABEL_KEYS = {"cifar10": "labels", "cifar100": "fine_labels"}

#: Bumped whenever a reader changes what it returns, so that old cache files are ignored.
READER_VERSION = 1


def read_classes(
    source: DataSource, split: Split, classes: Sequence[tuple[int, str]]
) -> dict[int, np.ndarray]:
    """Decode the images of `classes` in one split of `source`.

    Parameters
    ----------
    source : DataSource
        Where the dataset is and in which form (see :func:`cav.data.locate`).
    split : {"train", "test"}
    classes : sequence of (int, str)
        Label index and official name of each class to read.

    Returns
    -------
    dict of int to numpy.ndarray
        Label index to uint8 images ``(n_class, 32, 32, 3)``.

    Raises
    ------
    DataNotFoundError
        If a batch file or a class folder is missing, or a class has no images.
    InvalidArgumentError
        If a file cannot be decoded or an image is not 32x32.
    """
    if source.form == "pickle-folder":
        return _read_pickle_folder(source, split, classes)
    if source.form == "pickle-archive":
        return _read_pickle_archive(source, split, classes)
    if source.form == "image-folder":
        return {index: _read_image_class_folder(source, split, name) for index, name in classes}
    return _read_image_archive(source, split, classes)


def source_fingerprint(source: DataSource, split: Split, class_name: str) -> str:
    """Return a sha256 hex digest that changes when the files behind one class change.

    The digest covers the reader version, the dataset, form, split and class. It also
    covers the path, size and modification time (ns) of every file that the read
    depends on, which are the archive, the batch files of the split, or the image files
    of the class folder.
    """
    digest = hashlib.sha256()
    header = (READER_VERSION, source.dataset, source.form, source.member_root, split, class_name)
    digest.update(repr(header).encode())
    for path in _files_behind(source, split, class_name):
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_image_folder(
    folder: str | os.PathLike[str], image_size: int | tuple[int, int] | None = None
) -> np.ndarray:
    """Decode every image in `folder`, for example a user's set of concept images.

    Files are read in natural order of their names; files with other suffixes than
    .jpg, .jpeg, .png and .bmp are skipped. Grey and palette images are converted to RGB.

    Parameters
    ----------
    folder : str or os.PathLike
        Folder of image files (not searched recursively).
    image_size : int or (int, int), optional
        Resize every image to this (height, width), or to a square of this side, with
        bilinear interpolation. Without it all images must share one size.

    Returns
    -------
    numpy.ndarray
        uint8 images ``(n, height, width, 3)``.

    Raises
    ------
    DataNotFoundError
        If `folder` does not exist or contains no image files.
    InvalidArgumentError
        If an image cannot be decoded, `image_size` is not positive, or sizes differ
        while `image_size` is None.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DataNotFoundError(f"image folder {path} not found")
    size = _normalize_image_size(image_size)
    files = _image_files(path)
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DataNotFoundError(f"no image files ({suffixes}) in {path}")

    images = [_decode_image(file, str(file), size) for file in files]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise InvalidArgumentError(
            f"images in {path} have different sizes {sorted(shapes)[:4]}; "
            f"pass image_size to resize them to one size"
        )
    return np.stack(images)


def _normalize_image_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
        raise InvalidArgumentError(
            f"image_size must be a positive int or a (height, width) pair of positive ints, "
            f"got {image_size!r}"
        )
    return (size[0], size[1])


# Pickled batches ----------------------------------------------------------------------


def _numpy_global(module: str, name: str) -> Any:
    """Return a numpy function by its numpy 2 module path, falling back to numpy 1's."""
    try:
        return getattr(__import__(f"numpy._core.{module}", fromlist=[name]), name)
    except ImportError:
        return getattr(__import__(f"numpy.core.{module}", fromlist=[name]), name)


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any] | type]:
    import codecs

    reconstruct = _numpy_global("multiarray", "_reconstruct")
    scalar = _numpy_global("multiarray", "scalar")
    frombuffer = _numpy_global("numeric", "_frombuffer")
    allowed: dict[tuple[str, str], Callable[..., Any] | type] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that builds only numpy arrays and plain containers.

    A CIFAR batch needs nothing else, so a tampered file cannot run code on load.
    """

    _allowed: dict[tuple[str, str], Callable[..., Any] | type] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _BatchUnpickler._allowed is None:
            _BatchUnpickler._allowed = _allowed_globals()
        found = _BatchUnpickler._allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not allowed in a CIFAR batch file; "
                f"only numpy arrays, lists, dicts and strings are"
            )
        return found


def _load_batch(file: IO[bytes], label_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the images ``(n, 32, 32, 3)`` uint8 and labels ``(n,)`` int64 of a batch."""
    try:
        batch = _BatchUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise InvalidArgumentError(f"{where} is not a valid CIFAR batch file: {exc}") from exc
    if not isinstance(batch, dict):
        raise InvalidArgumentError(
            f"{where} is not a valid CIFAR batch file: it contains a "
            f"{type(batch).__name__}, expected a dict"
        )
    entries = {
        key.decode("latin1") if isinstance(key, bytes) else key: value
        for key, value in batch.items()
    }
    if "data" not in entries or label_key not in entries:
        raise InvalidArgumentError(
            f"{where} is not a valid CIFAR batch file: keys 'data' and {label_key!r} "
            f"expected, found {sorted(entries)}"
        )

    data = np.asarray(entries["data"])
    labels = np.asarray(entries[label_key], dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise InvalidArgumentError(
            f"{where}: 'data' must be uint8 of shape (n, 3072), "
            f"got {data.dtype} of shape {data.shape}"
        )
    if labels.shape[0] != data.shape[0]:
        raise InvalidArgumentError(
            f"{where}: {data.shape[0]} images but {labels.shape[0]} labels in {label_key!r}"
        )
    # Each row stores the red plane, then green, then blue, each 32x32 row-major.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def _select(
    batches: Sequence[tuple[np.ndarray, np.ndarray]], classes: Sequence[tuple[int, str]]
) -> dict[int, np.ndarray]:
    selected = {}
    for index, _name in classes:
        parts = [images[labels == index] for images, labels in batches]
        selected[index] = np.ascontiguousarray(np.concatenate(parts, axis=0))
    return selected


def _read_pickle_folder(
    source: DataSource, split: Split, classes: Sequence[tuple[int, str]]
) -> dict[int, np.ndarray]:
    label_key = _LABEL_KEYS[source.dataset]
    batches = []
    for file_name in PICKLE_FILES[source.dataset][split]:
        path = source.path / file_name
        if not path.is_file():
            raise DataNotFoundError(
                f"batch file {file_name} not found in {source.path}; the folder must hold "
                f"{', '.join(PICKLE_FILES[source.dataset][split])} for the {split} split"
            )
        with path.open("rb") as file:
            batches.append(_load_batch(file, label_key, str(path)))
    return _select(batches, classes)


def _read_pickle_archive(
    source: DataSource, split: Split, classes: Sequence[tuple[int, str]]
) -> dict[int, np.ndarray]:
    label_key = _LABEL_KEYS[source.dataset]
    expected_files = PICKLE_FILES[source.dataset][split]
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    members = _archive_files(source, lambda relative: relative in expected_files)
    with contextlib.closing(members):
        for relative, where, data in members:
            found[relative] = _load_batch(io.BytesIO(data), label_key, where)
            if len(found) == len(expected_files):
                break

    missing = [name for name in expected_files if name not in found]
    if missing:
        folder = source.member_root or "the top level"
        raise DataNotFoundError(
            f"batch files {', '.join(missing)} not found under {folder} in {source.path}"
        )
    # Batches may come in any order in the archive; the canonical order is by file name.
    return _select([found[name] for name in expected_files], classes)


# Image trees --------------------------------------------------------------------------


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part
    )


def _image_files(folder: Path) -> list[Path]:
    files = [
        child
        for child in folder.iterdir()
        if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(files, key=lambda file: _natural_key(file.name))


def _decode_image(
    data: bytes | Path, where: str, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Return one image as uint8 ``(height, width, 3)``, resized to `size` if given."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            rgb = image.convert("RGB")
            if size is not None and rgb.size != (size[1], size[0]):
                rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidArgumentError(f"cannot decode image {where}: {exc}") from exc


def _check_cifar_image(image: np.ndarray, where: str) -> np.ndarray:
    if image.shape != CIFAR_SHAPE:
        raise InvalidArgumentError(
            f"image {where} has shape {image.shape}, expected {CIFAR_SHAPE} for CIFAR"
        )
    return image


def _read_image_class_folder(source: DataSource, split: Split, class_name: str) -> np.ndarray:
    folder = source.path / split / class_name
    if not folder.is_dir():
        raise DataNotFoundError(
            f"class folder {folder} not found; the image tree {source.path} must contain "
            f"{split}/{class_name}/ with the images of that class"
        )
    files = _image_files(folder)
    if not files:
        raise DataNotFoundError(f"no image files in class folder {folder}")
    images = [_check_cifar_image(_decode_image(file, str(file)), str(file)) for file in files]
    return np.stack(images)


def _archive_files(
    source: DataSource, accept: Callable[[str], bool]
) -> Generator[tuple[str, str, bytes], None, None]:
    """Yield the regular files of an archive whose path below `member_root` is accepted.

    Yields
    ------
    tuple of (str, str, bytes)
        The path below ``source.member_root``, a ``"archive:member"`` label for
        messages, and the file's bytes. Only accepted members are read.
    """
    with tarfile.open(source.path, "r:*") as archive:
        for member in archive:
            relative = _relative_member(member.name, source.member_root)
            if not member.isfile() or relative is None or not accept(relative):
                continue
            file = archive.extractfile(member)
            if file is None:
                continue
            with file:
                data = file.read()
            yield relative, f"{source.path}:{member.name}", data


def _relative_member(member_name: str, member_root: str) -> str | None:
    """Return the member's path below `member_root`, or None when it lies elsewhere."""
    name = member_path(member_name)
    if not member_root:
        return name
    prefix = member_root.rstrip("/") + "/"
    return name[len(prefix) :] if name.startswith(prefix) else None


def _read_image_archive(
    source: DataSource, split: Split, classes: Sequence[tuple[int, str]]
) -> dict[int, np.ndarray]:
    index_by_name = {name: index for index, name in classes}
    decoded: dict[int, list[tuple[tuple[tuple[int, int | str], ...], np.ndarray]]] = {
        index: [] for index, _name in classes
    }

    def is_requested(relative: str) -> bool:
        parts = relative.split("/")
        return (
            len(parts) == 3
            and parts[0] == split
            and parts[1] in index_by_name
            and Path(parts[2]).suffix.lower() in IMAGE_SUFFIXES
        )

    # One pass over the archive: members of other splits and classes are skipped
    # without being read or decoded.
    for relative, where, data in _archive_files(source, is_requested):
        _split, class_name, file_name = relative.split("/")
        image = _check_cifar_image(_decode_image(data, where), where)
        decoded[index_by_name[class_name]].append((_natural_key(file_name), image))

    result = {}
    for index, name in classes:
        if not decoded[index]:
            root = f"{source.member_root}/" if source.member_root else ""
            raise DataNotFoundError(
                f"no images of class {name!r} in {source.path}; expected members "
                f"{root}{split}/{name}/*.png|jpg"
            )
        ordered = sorted(decoded[index], key=lambda entry: entry[0])
        result[index] = np.stack([image for _key, image in ordered])
    logger.debug("Decoded %d images from %s", sum(len(v) for v in decoded.values()), source.path)
    return result


def _files_behind(source: DataSource, split: Split, class_name: str) -> list[Path]:
    if source.is_archive:
        return [source.path]
    if source.form == "pickle-folder":
        names = PICKLE_FILES[source.dataset][split]
        return [source.path / name for name in names if (source.path / name).is_file()]
    folder = source.path / split / class_name
    return _image_files(folder) if folder.is_dir() else []

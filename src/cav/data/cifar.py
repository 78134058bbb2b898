"""Loading CIFAR-10 and CIFAR-100 classes as uint8 NHWC arrays."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cav.data.cache import cache_file, load_cached, save_cached
from cav.data.classes import (
    DATASET_TITLES,
    class_names,
    normalize_dataset,
    normalize_split,
    resolve_class,
)
from cav.data.readers import read_classes, source_fingerprint
from cav.data.sources import DataSource, locate
from cav.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def load_classes(
    dataset: str,
    classes: Sequence[str | int] | str | int,
    split: str = "train",
    data_dir: PathLike | DataSource | None = None,
    cache_dir: PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Load the images of some classes of one split, decoding only those classes.

    Parameters
    ----------
    dataset : str
        ``"cifar10"`` or ``"cifar100"`` (fine labels).
    classes : sequence of str or int, or one str or int
        Class names or label indices (see :func:`cav.data.resolve_class`). Repeats are
        read once.
    split : {"train", "test"}, default "train"
    data_dir : str, os.PathLike, DataSource or None
        A folder holding the data in any supported form, an archive file, or the result
        of :func:`cav.data.locate`. ``None`` searches ``$CAV_DATA_DIR`` and the Keras cache
        (``~/.keras/datasets``).
    cache_dir : str or os.PathLike, optional
        Folder for decoded arrays (.npy). A class found there is not decoded again while
        the files it came from keep their size and modification time.

    Returns
    -------
    dict of str to numpy.ndarray
        Official class name to uint8 images ``(n_class, 32, 32, 3)``, in the order of
        `classes`. Within a class, images keep their canonical order (the order of the
        pickled batches, which numbered image trees preserve as NNNN).

    Raises
    ------
    DataNotFoundError
        If the dataset, a batch file or a class folder is missing.
    InvalidArgumentError
        If `dataset`, `split` or a class is unknown, or `classes` is empty.

    Examples
    --------
    >>> images = load_classes("cifar10", ["ship", "bird"], data_dir="data")  # doctest: +SKIP
    >>> images["ship"].shape  # doctest: +SKIP
    (5000, 32, 32, 3)
    """
    name = normalize_dataset(dataset)
    split_name = normalize_split(split)
    resolved = _resolve_classes(name, classes)
    source = data_dir if isinstance(data_dir, DataSource) else locate(data_dir, name)
    if source.dataset != name:
        raise InvalidArgumentError(
            f"data_dir is a source of {DATASET_TITLES[source.dataset]}, "
            f"but dataset {dataset!r} was requested"
        )

    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else None
    images: dict[int, np.ndarray] = {}
    cache_files = {}
    if cache_root is not None:
        for index, class_name in resolved:
            key = source_fingerprint(source, split_name, class_name)
            cache_files[index] = cache_file(cache_root, name, split_name, class_name, key)
            cached = load_cached(cache_files[index])
            if cached is not None:
                images[index] = cached

    missing = [(index, class_name) for index, class_name in resolved if index not in images]
    if missing:
        start = time.perf_counter()
        decoded = read_classes(source, split_name, missing)
        logger.info(
            "Read %d %s %s classes from %s in %.1f s",
            len(missing),
            DATASET_TITLES[name],
            split_name,
            source.path,
            time.perf_counter() - start,
        )
        for index, _class_name in missing:
            images[index] = decoded[index]
            if cache_root is not None:
                save_cached(cache_files[index], decoded[index])

    return {class_name: images[index] for index, class_name in resolved}


def load_cifar(
    dataset: str,
    split: str = "train",
    classes: Sequence[str | int] | None = None,
    data_dir: PathLike | DataSource | None = None,
    cache_dir: PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load images and labels of one split, grouped by class.

    Parameters
    ----------
    dataset, split, data_dir, cache_dir
        As in :func:`load_classes`.
    classes : sequence of str or int, optional
        Classes to load; all classes of the dataset when omitted.

    Returns
    -------
    images : numpy.ndarray
        uint8 ``(n, 32, 32, 3)``: all images of the first class, then of the next.
        Within a class the order is canonical. The interleaving of classes in the
        original batches is not kept, so the pickled and image-tree forms agree.
    labels : numpy.ndarray
        int64 ``(n,)`` official label indices.
    """
    name = normalize_dataset(dataset)
    requested: Sequence[str | int] = class_names(name) if classes is None else classes
    per_class = load_classes(name, requested, split, data_dir=data_dir, cache_dir=cache_dir)
    labels = [
        np.full(len(images), resolve_class(name, class_name)[0], dtype=np.int64)
        for class_name, images in per_class.items()
    ]
    return np.concatenate(list(per_class.values())), np.concatenate(labels)


def _resolve_classes(
    dataset: str, classes: Sequence[str | int] | str | int
) -> list[tuple[int, str]]:
    items: list[str | int]
    if isinstance(classes, str):
        items = [classes]
    elif isinstance(classes, int | np.integer):
        items = [int(classes)]
    else:
        items = list(classes)
    if not items:
        raise InvalidArgumentError("classes must name at least one class, got an empty list")
    resolved: list[tuple[int, str]] = []
    for item in items:
        entry = resolve_class(dataset, item)
        if entry not in resolved:
            resolved.append(entry)
    return resolved

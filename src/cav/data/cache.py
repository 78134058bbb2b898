"""On-disk cache of decoded class arrays, as .npy files written atomically."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def cache_file(cache_dir: Path, dataset: str, split: str, class_name: str, key: str) -> Path:
    """Return the cache file of one class; `key` is the sha256 hex digest of its sources."""
    return cache_dir / f"{dataset}-{split}-{class_name}-{key[:24]}.npy"


def load_cached(path: Path) -> np.ndarray | None:
    """Return the array stored at `path`, or None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring unreadable cache file %s: %s", path, exc)
        return None
    logger.debug("Read %s from cache", path)
    return array


def save_cached(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` through a temporary file in the same folder.

    ``os.replace`` swaps the complete file in, so a reader never sees a partial file,
    and an interrupted write leaves no file at `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.save(file, array, allow_pickle=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

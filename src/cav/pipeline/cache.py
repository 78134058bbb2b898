"""On-disk cache of activations and CAVs, keyed by the content that determines them.

Each entry is one file named by the sha256 of its key. Writes go to a temporary file in the
entry's folder and are moved into place with :func:`os.replace`, which is atomic on one
file system, so an interrupted run leaves either the whole entry or none. Entries that
cannot be read are logged, ignored and written again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from cav.core.cav import CAV

logger = logging.getLogger(__name__)

# Bump when the layout of stored entries changes, so old entries are not read.
CACHE_FORMAT = 1

_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile)


def hash_array(array: np.ndarray) -> str:
    """Return the sha256 hex digest of an array's dtype, shape and bytes."""
    contiguous = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(f"{contiguous.dtype.str}|{contiguous.shape}|".encode())
    digest.update(contiguous.data)
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """Return the sha256 hex digest of the JSON form of ``parts`` (sorted keys)."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class DiskCache:
    """Activations (``.npy``) and CAVs (``.npz``) stored under one folder.

    Parameters
    ----------
    root : str or pathlib.Path
        Folder of the cache; created if missing.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def load_activations(self, key: str, n_rows: int) -> np.ndarray | None:
        """Return the stored activations of ``key``, or None if absent or unreadable.

        An entry whose first dimension is not ``n_rows`` counts as unreadable.
        """
        path = self._path("activations", key, ".npy")
        array = self._read(path, lambda file: np.load(file, allow_pickle=False))
        if array is not None and (array.ndim != 2 or array.shape[0] != n_rows):
            logger.warning(
                "ignoring cache entry %s: shape %s, expected %d rows", path, array.shape, n_rows
            )
            return None
        return array

    def save_activations(self, key: str, activations: np.ndarray) -> None:
        """Store ``activations`` under ``key``."""
        path = self._path("activations", key, ".npy")
        self._write(path, lambda file: np.save(file, activations, allow_pickle=False))

    def load_cav(self, key: str) -> CAV | None:
        """Return the stored CAV of ``key``, or None if absent or unreadable."""
        path = self._path("cavs", key, ".npz")
        return self._read(path, _read_cav)

    def save_cav(self, key: str, cav: CAV) -> None:
        """Store ``cav`` under ``key``."""
        path = self._path("cavs", key, ".npz")
        self._write(path, lambda file: _write_cav(file, cav))

    def _path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def _read(self, path: Path, reader: Callable[[IO[bytes]], Any]) -> Any:
        if not path.exists():
            return None
        try:
            with path.open("rb") as file:
                return reader(file)
        except _READ_ERRORS as exc:
            logger.warning("ignoring unreadable cache entry %s: %s", path, exc)
            return None

    def _write(self, path: Path, writer: Callable[[IO[bytes]], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                writer(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        logger.debug("wrote cache entry %s", path)


def _write_cav(file: IO[bytes], cav: CAV) -> None:
    fields = dataclasses.asdict(cav)
    direction = fields.pop("direction")
    np.savez(file, direction=direction, fields=np.array(json.dumps(fields)))


def _read_cav(file: IO[bytes]) -> CAV:
    with np.load(file, allow_pickle=False) as stored:
        direction = np.array(stored["direction"], dtype=np.float64)
        fields = json.loads(str(stored["fields"]))
    return CAV(direction=direction, **fields)

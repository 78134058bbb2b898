"""Downloading the canonical CIFAR tarballs, with md5 verification."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from cav.data.classes import DATASET_TITLES, normalize_dataset
from cav.data.sources import DOWNLOAD_MD5, DOWNLOAD_URLS, PICKLE_ARCHIVES
from cav.errors import CAVError, InvalidArgumentError

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_URL_SCHEMES = ("http", "https", "file")


class DownloadError(CAVError, OSError):
    """A download failed, so no file was written."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file does not have the expected md5 checksum, so it was deleted."""


def download(
    dataset: str,
    dest_dir: str | os.PathLike[str],
    progress: bool = True,
    url: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download the canonical python tarball of `dataset` into `dest_dir`.

    The file is written under its canonical name (``cifar-10-python.tar.gz`` or
    ``cifar-100-python.tar.gz``), which :func:`cav.data.locate` finds. Bytes go to a
    temporary file in `dest_dir` that replaces the target only after its md5 matches, so
    an interrupted or corrupt download leaves no file under the canonical name. A file
    already there with the right checksum is kept and not downloaded again.

    Parameters
    ----------
    dataset : str
        ``"cifar10"`` or ``"cifar100"``.
    dest_dir : str or os.PathLike
        Folder for the tarball; created if missing.
    progress : bool, default True
        Show a tqdm progress bar on stderr.
    url : str, optional
        Address to download from instead of the official one
        (https://www.cs.toronto.edu/~kriz/), for example a mirror. http, https and file
        addresses are accepted.
    md5 : str, optional
        Expected md5 hex digest; the official one of `dataset` when omitted.
    timeout : float, default 60.0
        Seconds to wait for the server to connect or to send the next block.

    Returns
    -------
    pathlib.Path
        Path of the verified tarball.

    Raises
    ------
    ChecksumMismatchError
        If the downloaded bytes do not match `md5`; the partial file is removed.
    DownloadError
        If the server cannot be reached or the transfer fails.
    InvalidArgumentError
        If `url` is not an http, https or file address, or `md5` is not 32 hex digits.
    """
    name = normalize_dataset(dataset)
    source_url = DOWNLOAD_URLS[name] if url is None else url
    expected = _normalize_md5(DOWNLOAD_MD5[name] if md5 is None else md5)
    scheme = urllib.parse.urlsplit(source_url).scheme
    if scheme not in _URL_SCHEMES:
        raise InvalidArgumentError(
            f"url must be an http, https or file address, got {source_url!r}"
        )

    folder = Path(dest_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / PICKLE_ARCHIVES[name][0]
    if target.is_file():
        if file_md5(target) == expected:
            logger.info("%s already present and verified at %s", DATASET_TITLES[name], target)
            return target
        logger.warning("Downloading again: the md5 of %s does not match %s", target, expected)

    logger.info("Downloading %s from %s to %s", DATASET_TITLES[name], source_url, target)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as file:
            actual = _fetch(source_url, file, progress, timeout, target.name)
        if actual != expected:
            raise ChecksumMismatchError(
                f"md5 of the file downloaded from {source_url} is {actual}, expected "
                f"{expected}; the file was deleted. Retry, or download it by hand "
                f"and check it with md5sum"
            )
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def file_md5(path: str | os.PathLike[str]) -> str:
    """Return the md5 hex digest of the file at `path`."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalize_md5(md5: str) -> str:
    value = md5.strip().lower() if isinstance(md5, str) else ""
    if len(value) != 32 or any(char not in "0123456789abcdef" for char in value):
        raise InvalidArgumentError(f"md5 must be 32 hex digits, got {md5!r}")
    return value


def _fetch(url: str, file: BinaryIO, progress: bool, timeout: float, label: str) -> str:
    """Stream `url` into the binary `file` and return the md5 hex digest of the bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=label, disable=not progress
            ) as bar:
                for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                    file.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DownloadError(
            f"download from {url} failed: {exc}. Check the connection and the free disk "
            f"space, or download the file by hand and put it in the destination folder"
        ) from exc
    return digest.hexdigest()

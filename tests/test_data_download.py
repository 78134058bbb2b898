"""Downloading a tarball from a local HTTP server on 127.0.0.1 built by the tests."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from cav.data import ChecksumMismatchError, DownloadError, download, file_md5, load_classes
from cav.errors import InvalidArgumentError


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from a folder, records each path requested, and logs nothing."""

    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder and the base address of a local server that serves it."""
    root = tmp_path / "www"
    root.mkdir()
    QuietHandler.requests = []
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def write_tiny_cifar10(path: Path) -> np.ndarray:
    """Write a canonical-format tarball with one test batch; return its ship images."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    rows = images.transpose(0, 3, 1, 2).reshape(4, 3072)
    payload = pickle.dumps({b"data": rows, b"labels": [8, 1, 8, 8]}, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return images[[0, 2, 3]]


def test_download_verifies_and_saves(server: tuple[Path, str], tmp_path: Path) -> None:
    root, base = server
    ships = write_tiny_cifar10(root / "mirror.tar.gz")
    md5 = hashlib.md5((root / "mirror.tar.gz").read_bytes()).hexdigest()
    dest = tmp_path / "dest"

    path = download("cifar10", dest, progress=False, url=f"{base}/mirror.tar.gz", md5=md5)
    assert path == dest / "cifar-10-python.tar.gz"
    assert path.read_bytes() == (root / "mirror.tar.gz").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-python.tar.gz"]
    ship = load_classes("cifar10", ["ship"], "test", dest)["ship"]
    np.testing.assert_array_equal(ship, ships)


def test_checksum_mismatch_leaves_nothing(server: tuple[Path, str], tmp_path: Path) -> None:
    root, base = server
    write_tiny_cifar10(root / "mirror.tar.gz")
    dest = tmp_path / "dest"
    with pytest.raises(ChecksumMismatchError, match=r"expected 0{32}"):
        download("cifar10", dest, progress=False, url=f"{base}/mirror.tar.gz", md5="0" * 32)
    assert list(dest.iterdir()) == []


def test_mismatch_keeps_existing_file(server: tuple[Path, str], tmp_path: Path) -> None:
    root, base = server
    (root / "mirror.tar.gz").write_bytes(b"new bytes")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "cifar-100-python.tar.gz").write_bytes(b"old bytes")
    with pytest.raises(ChecksumMismatchError):
        download("cifar100", dest, progress=False, url=f"{base}/mirror.tar.gz", md5="1" * 32)
    assert (dest / "cifar-100-python.tar.gz").read_bytes() == b"old bytes"
    assert len(list(dest.iterdir())) == 1


def test_verified_file_not_downloaded_again(server: tuple[Path, str], tmp_path: Path) -> None:
    root, base = server
    (root / "mirror.tar.gz").write_bytes(b"archive bytes")
    md5 = hashlib.md5(b"archive bytes").hexdigest()
    url = f"{base}/mirror.tar.gz"
    download("cifar10", tmp_path, progress=False, url=url, md5=md5)
    download("cifar10", tmp_path, progress=False, url=url, md5=md5.upper())
    assert QuietHandler.requests == ["/mirror.tar.gz"]


def test_progress_bar_runs(
    server: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, base = server
    (root / "mirror.tar.gz").write_bytes(bytes(range(256)) * 4096)
    md5 = file_md5(root / "mirror.tar.gz")
    download("cifar10", tmp_path, progress=True, url=f"{base}/mirror.tar.gz", md5=md5)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cifar-10-python.tar.gz" in captured.err


def test_missing_url_raises_download_error(server: tuple[Path, str], tmp_path: Path) -> None:
    _root, base = server
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="404"):
        download("cifar10", dest, progress=False, url=f"{base}/absent.tar.gz", md5="0" * 32)
    assert list(dest.iterdir()) == []


def test_file_url_accepted(tmp_path: Path) -> None:
    source = tmp_path / "local.tar.gz"
    source.write_bytes(b"local archive")
    path = download(
        "cifar100",
        tmp_path / "dest",
        progress=False,
        url=source.as_uri(),
        md5=hashlib.md5(b"local archive").hexdigest(),
    )
    assert path.name == "cifar-100-python.tar.gz"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x.tar.gz", "/tmp/x.tar.gz"])
def test_unsupported_url_rejected(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidArgumentError, match="http, https or file"):
        download("cifar10", tmp_path, progress=False, url=url)


@pytest.mark.parametrize("md5", ["abc", "z" * 32])
def test_malformed_md5_rejected(tmp_path: Path, md5: str) -> None:
    with pytest.raises(InvalidArgumentError, match="32 hex digits"):
        download("cifar10", tmp_path, progress=False, url="http://127.0.0.1:9/x", md5=md5)


def test_file_md5_known_answer(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert file_md5(tmp_path / "empty") == "d41d8cd98f00b204e9800998ecf8427e"

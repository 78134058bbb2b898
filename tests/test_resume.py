"""``cav imbalance --resume`` after SIGKILL: no corrupt files, and the final results
equal those of an uninterrupted run byte for byte."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from _study_runs import RESULT_FILES, reference_study, run_study, start_study

pytest.importorskip("keras")
pytestmark = pytest.mark.keras

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_study(tmp_path_factory.getbasetemp() / "study-reference")


def kill_when(output: Path, ready, timeout: float = 300, may_finish: bool = False) -> None:
    """Start the study and SIGKILL it as soon as ``ready(output)`` is true.

    With ``may_finish``, a study that ends before the kill point passes: on a busy machine
    a late time-based kill point can fall after the end of the run.
    """
    process = start_study(output)
    deadline = time.monotonic() + timeout
    try:
        while not ready(output):
            if process.poll() is not None:
                if may_finish and process.returncode == 0:
                    return
                pytest.fail(f"the study ended (status {process.returncode}) before the kill")
            if time.monotonic() > deadline:
                pytest.fail("the kill point was never reached")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()


def visible_files(output: Path) -> list[Path]:
    return [p for p in output.rglob("*") if p.is_file() and not p.name.startswith(".")]


def assert_files_complete(output: Path, reference: Path) -> None:
    """Every visible file is whole: JSON parses, PNGs end, result files equal the reference."""
    for path in visible_files(output):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(PNG_SIGNATURE), path
            assert data.endswith(PNG_END), path
        if path.name in RESULT_FILES:
            assert path.read_bytes() == (reference / path.name).read_bytes(), path


def first_cell_written(output: Path) -> bool:
    cells = output / "cells"
    return cells.is_dir() and any(p.suffix == ".json" for p in cells.iterdir())


def resume_and_compare(output: Path, reference: Path) -> None:
    run_study(output, "--resume")
    assert not [p for p in output.rglob(".*.tmp")]
    for name in RESULT_FILES:
        assert (output / name).read_bytes() == (reference / name).read_bytes(), name


def test_kill_after_first_cell(reference, tmp_path):
    output = tmp_path / "output"
    kill_when(output, first_cell_written)
    assert_files_complete(output, reference)
    resume_and_compare(output, reference)
    assert "reusing the finished cell" in (output / "cav.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.15, 0.45, 0.8, 0.97])
def test_kill_at_random_time(reference, tmp_path, fraction):
    """Kill at a seeded time within the reference's duration, then resume."""
    log = (reference / "cav.log").read_text().splitlines()
    stamps = [time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) for line in log]
    duration = max(stamps) - min(stamps) + 8.0  # startup before the first log line
    jitter = np.random.default_rng(int(fraction * 100)).uniform(-0.05, 0.05)
    delay = max(0.5, (fraction + jitter) * duration)
    output = tmp_path / "output"
    started = time.monotonic()
    kill_when(output, lambda _: time.monotonic() - started >= delay, may_finish=True)
    assert_files_complete(output, reference)
    resume_and_compare(output, reference)

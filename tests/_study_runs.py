"""Run small ``cav imbalance`` studies on the synthetic data in a child process.

The child shrinks the synthetic dataset before calling :func:`cav.cli.main`, so that a
study of 2 ratios x 2 seeds finishes in seconds and can be killed like a real run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Fewer images than the synthetic defaults, so one cell takes a few seconds.
SIZES = {"train_per_class": 100, "test_per_class": 40, "concept_images": 40, "random_images": 100}

LAUNCHER = f"""
import sys
from cav.experiments import config
config.DATASET_DEFAULTS["synthetic"].update({SIZES!r})
from cav.cli import main
sys.exit(main(sys.argv[1:]))
"""

STUDY_ARGUMENTS = [
    "imbalance",
    "--data",
    "synthetic",
    "--ratios",
    "1",
    "0.25",
    "--seeds",
    "0",
    "1",
    "--layers",
    "7",
    "11",
    "--epochs",
    "1",
    "--random-runs",
    "3",
    "--random-set-size",
    "20",
    "--quiet",
]

RESULT_FILES = ("results.csv", "results.json", "summary.md")


def child_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment.setdefault("KERAS_BACKEND", "torch")
    environment["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return environment


def start_study(output: Path, *extra: str) -> subprocess.Popen[bytes]:
    """Start the study writing into ``output``; stdout and stderr go to files there."""
    output.parent.mkdir(parents=True, exist_ok=True)
    log = (output.parent / f"{output.name}.stderr").open("ab")
    command = [sys.executable, "-c", LAUNCHER, *STUDY_ARGUMENTS, "--output", str(output), *extra]
    return subprocess.Popen(command, stdout=log, stderr=log, env=child_environment())


def run_study(output: Path, *extra: str, timeout: float = 300) -> None:
    """Run the study to the end and raise if it fails."""
    process = start_study(output, *extra)
    status = process.wait(timeout=timeout)
    if status != 0:
        stderr = (output.parent / f"{output.name}.stderr").read_text(errors="replace")
        raise AssertionError(f"study exited with {status}:\n{stderr[-3000:]}")


_REFERENCE: dict[str, Path] = {}


def reference_study(base: Path) -> Path:
    """Return the output folder of one uninterrupted study, run once per test session.

    It runs with a cold cache in ``base/cache``; test_determinism reruns it warm, and
    test_resume compares interrupted runs with it.
    """
    if "output" not in _REFERENCE:
        output = base / "reference"
        run_study(output, "--cache-dir", str(base / "cache"))
        _REFERENCE["output"] = output
        _REFERENCE["cache"] = base / "cache"
    return _REFERENCE["output"]


def reference_cache() -> Path:
    """Return the cache folder that :func:`reference_study` filled."""
    return _REFERENCE["cache"]

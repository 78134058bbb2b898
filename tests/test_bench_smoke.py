"""Smoke run of benchmarks/bench_tcav.py: every variant runs and the score checks hold.

The smoke sizes (16 targets, 3 random sets of 12 images) make the timings meaningless, so
the test only checks that the benchmark runs end to end and that its cross-checks agree.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_tcav.py"

pytestmark = [pytest.mark.slow, pytest.mark.keras]


@pytest.fixture(scope="module")
def smoke_report(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("bench") / "smoke.json"
    command = [
        sys.executable,
        str(BENCHMARK),
        "--smoke",
        "--data-dir",
        str(shared_data_dir),
        "--json",
        str(output),
    ]
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")}
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=1200, env=env, check=False
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    report: dict[str, Any] = json.loads(output.read_text())
    return report


def test_smoke_has_no_failures(smoke_report: dict[str, Any]) -> None:
    assert smoke_report["failures"] == []


@pytest.mark.parametrize("variant", ["cav-torch", "cav-keras", "floor", "floor-keras"])
def test_smoke_times_each_variant(smoke_report: dict[str, Any], variant: str) -> None:
    summary = smoke_report["w1"]["summary"][variant]
    assert summary["runs"] == 1
    assert summary["median_s"] > 0


def test_smoke_records_cav_phases(smoke_report: dict[str, Any]) -> None:
    phases = smoke_report["w1"]["summary"]["cav-torch"]["phases_median_s"]
    assert set(phases) == {"activations", "fit CAVs", "gradients and scores"}


def test_smoke_refit_cavs_match(smoke_report: dict[str, Any]) -> None:
    assert smoke_report["check"]["refit_max_diff_targets"] == 0


@pytest.mark.skipif(importlib.util.find_spec("captum") is None, reason="captum not installed")
def test_smoke_captum_scores_match(smoke_report: dict[str, Any]) -> None:
    # Identical CAVs and weights: a score may move by one target only when a derivative
    # within float32 rounding of zero changes sign between the two gradient code paths.
    assert smoke_report["check"]["captum_max_diff_targets"] <= 1


@pytest.mark.skipif(importlib.util.find_spec("captum") is None, reason="captum not installed")
def test_smoke_times_captum(smoke_report: dict[str, Any]) -> None:
    assert smoke_report["w1"]["summary"]["captum"]["runs"] == 1


def test_missing_data_dir_is_named(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCHMARK), "--smoke", "--data-dir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 2
    assert f"--data-dir {tmp_path}: cifar-10-jpg.tar.gz not found" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_smoke_report_marks_smoke(smoke_report: dict[str, Any]) -> None:
    assert smoke_report["settings"]["smoke"] is True

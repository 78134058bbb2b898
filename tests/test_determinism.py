"""Same command and seeds, same bytes: results.csv and results.json across runs and caches."""

from __future__ import annotations

import pytest
from _study_runs import RESULT_FILES, reference_cache, reference_study, run_study

pytest.importorskip("keras")
pytestmark = pytest.mark.keras


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_study(tmp_path_factory.getbasetemp() / "study-reference")


@pytest.fixture(scope="module")
def warm_rerun(reference, tmp_path_factory):
    """The same study again, reading the activations and CAVs the first run cached."""
    output = tmp_path_factory.mktemp("warm") / "output"
    run_study(output, "--cache-dir", str(reference_cache()))
    return output


@pytest.mark.parametrize("name", RESULT_FILES)
def test_warm_cache_rerun_identical(reference, warm_rerun, name):
    assert (warm_rerun / name).read_bytes() == (reference / name).read_bytes()


def test_warm_rerun_reads_cache(warm_rerun):
    log = (warm_rerun / "cav.log").read_text()
    assert "0 CAVs fitted" in log


@pytest.mark.slow
@pytest.mark.parametrize("name", RESULT_FILES)
def test_uncached_rerun_identical(reference, tmp_path, name):
    output = tmp_path / "output"
    run_study(output)
    assert (output / name).read_bytes() == (reference / name).read_bytes()


def test_results_hold_no_timings_or_paths(reference):
    text = (reference / "results.json").read_text()
    assert "seconds" not in text
    assert str(reference.parent) not in text

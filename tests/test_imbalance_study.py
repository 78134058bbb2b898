"""The study runner on a small planted dataset: cells, protocols, outputs, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from cav.experiments import imbalance
from cav.experiments.config import StudyConfig
from cav.experiments.imbalance import run_cell, run_study
from cav.experiments.protocols import RUN_COLUMNS, TEST_COLUMNS, draw_image_sets, score_cav_keras
from cav.experiments.report import OUTPUT_FILES, summary_table, write_outputs
from cav.experiments.results import CellResult, read_cell
from cav.experiments.sampling import imbalanced_training_set
from cav.experiments.study_data import StudyData

pytest.importorskip("keras")
pytestmark = pytest.mark.keras

SIZE = 16


def _stripes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Bright horizontal stripes (period 4 pixels) over dark noise."""
    images = rng.integers(0, 90, size=(n, SIZE, SIZE, 3))
    images[:, ::4, :, :] += 160
    return images.clip(0, 255).astype(np.uint8)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 120, size=(n, SIZE, SIZE, 3)).astype(np.uint8)


def _planted_data(seed: int = 0) -> StudyData:
    """Positives carry the striped concept; negatives, the random pool do not."""
    rng = np.random.default_rng(seed)
    return StudyData(
        positive="striped",
        negative="plain",
        concept="stripes",
        train_positive=_stripes(rng, 160),
        train_negative=_noise(rng, 160),
        test_positive=_stripes(rng, 40),
        test_negative=_noise(rng, 40),
        concept_images=_stripes(rng, 30),
        random_pool=_noise(rng, 200),
        source="planted test data",
    )


def _config(**changes) -> StudyConfig:
    settings = dict(
        data="synthetic",
        ratios=(1.0, 0.25),
        layers=(7, 11),
        epochs=2,
        random_runs=4,
        random_set_size=20,
        gradient_batch_size=40,
    )
    settings.update(changes)
    return StudyConfig(**settings)


@pytest.fixture(scope="module")
def planted() -> StudyData:
    return _planted_data()


@pytest.fixture(scope="module")
def balanced_cell(planted) -> CellResult:
    return run_cell(planted, _config(), 1.0, seed=0)


def test_cell_counts_and_share(balanced_cell):
    assert (balanced_cell.n_positive, balanced_cell.n_negative) == (160, 160)
    assert balanced_cell.positive_share == 0.5


def test_cell_tables_have_columns(balanced_cell):
    assert list(balanced_cell.runs.columns) == list(RUN_COLUMNS)
    assert list(balanced_cell.tests.columns) == list(TEST_COLUMNS)


def test_cell_tests_layer_by_class(balanced_cell):
    tests = balanced_cell.tests
    assert sorted(zip(tests["layer"], tests["target"], strict=True)) == [
        ("dropout2", 0),
        ("dropout2", 1),
        ("relu3", 0),
        ("relu3", 1),
    ]


def test_cell_has_concept_and_null_runs(balanced_cell):
    runs = balanced_cell.runs
    concept = runs[(runs["kind"] == "concept") & (runs["layer"] == "relu3") & (runs["target"] == 1)]
    assert len(concept) == 4
    assert set(runs["kind"]) == {"concept", "null"}


def test_cell_model_learns_stripes(balanced_cell):
    assert balanced_cell.metrics["balanced_accuracy"] >= 0.95


def test_cell_positive_sensitive_to_stripes(balanced_cell):
    tests = balanced_cell.tests.set_index(["layer", "target"])
    assert tests.loc[("relu3", 1), "mean"] >= 0.9


def test_cell_same_seed_same_scores(planted, balanced_cell):
    again = run_cell(planted, _config(), 1.0, seed=0)
    pd.testing.assert_frame_equal(again.runs, balanced_cell.runs)


def test_cell_json_round_trip(balanced_cell, tmp_path):
    path = balanced_cell.write(tmp_path)
    restored = read_cell(path, balanced_cell.key)
    assert restored is not None
    pd.testing.assert_frame_equal(restored.tests, balanced_cell.tests)
    pd.testing.assert_frame_equal(restored.runs, balanced_cell.runs)


def test_read_cell_rejects_other_key(balanced_cell, tmp_path):
    path = balanced_cell.write(tmp_path)
    assert read_cell(path, "another-key") is None


def test_read_cell_ignores_truncated_file(balanced_cell, tmp_path):
    path = balanced_cell.write(tmp_path)
    path.write_text(path.read_text()[:100])
    assert read_cell(path, balanced_cell.key) is None


def test_image_sets_disjoint_and_sized(planted):
    concept, random_sets = draw_image_sets(planted, _config(), seed=0)
    assert concept.shape[0] == 20
    assert len(random_sets) == 4
    stacked = np.concatenate(list(random_sets.values()))
    assert len({image.tobytes() for image in stacked}) == 80


def test_image_sets_reject_small_pool(planted):
    from cav.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="random pool"):
        draw_image_sets(planted, _config(random_runs=20, random_set_size=50), seed=0)


def _saturated_model(planted):
    """A network whose sigmoid is exactly 0 for every input: the loss gradient vanishes."""
    from cav.experiments.networks import build_keras_cnn

    model = build_keras_cnn((SIZE, SIZE, 3), seed=0)
    kernel, bias = model.layers[16].get_weights()
    model.layers[16].set_weights([np.zeros_like(kernel), np.full_like(bias, -1000.0)])
    return model


def test_cav_keras_dead_gradient_undefined(planted):
    training_set = imbalanced_training_set(
        planted.train_positive, planted.train_negative, 1.0, seed=0
    )
    runs, tests = score_cav_keras(
        _saturated_model(planted), planted, training_set, _config(layers=(7,)), seed=0
    )
    assert tests["undefined"].all()
    assert tests["mean"].isna().all()
    assert runs["score"].isna().all()
    assert (tests["zero_share"] == 1.0).all()
    assert tests["note"].str.contains("exactly zero").all()


def test_cav_keras_has_no_test(planted):
    from cav.experiments.networks import build_keras_cnn, train_keras_cnn

    training_set = imbalanced_training_set(
        planted.train_positive, planted.train_negative, 1.0, seed=0
    )
    network = build_keras_cnn((SIZE, SIZE, 3), seed=0)
    train_keras_cnn(network, training_set.x, training_set.y, epochs=1, seed=0)
    runs, tests = score_cav_keras(network, planted, training_set, _config(layers=(7,)), seed=0)
    assert len(runs) == 2
    assert tests["p_value"].isna().all()
    assert tests["significant"].isna().all()


@pytest.fixture(scope="module")
def study_folder(planted, tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    result = run_study(_config(), folder, data=planted)
    return folder, result, write_outputs(result, folder)


def test_study_writes_every_output(study_folder):
    _, _, paths = study_folder
    assert sorted(paths) == sorted(OUTPUT_FILES)
    assert all(path.stat().st_size > 0 for path in paths.values())


def test_study_writes_one_file_per_cell(study_folder):
    folder, _, _ = study_folder
    assert sorted(p.name for p in (folder / "cells").iterdir()) == [
        "ratio-0.25_seed-0.json",
        "ratio-1_seed-0.json",
    ]


def test_results_csv_tidy_shares(study_folder):
    folder, _, _ = study_folder
    runs = pd.read_csv(folder / "results.csv")
    assert set(runs["ratio"]) == {1.0, 0.25}
    assert runs.loc[runs["ratio"] == 0.25, "positive_share"].iloc[0] == pytest.approx(40 / 200)


def test_results_json_holds_every_run(study_folder):
    folder, _, _ = study_folder
    runs = pd.read_csv(folder / "results.csv")
    document = json.loads((folder / "results.json").read_text())
    assert len(document["runs"]) == len(runs)


def test_summary_md_lists_ratios(study_folder):
    folder, _, _ = study_folder
    assert "| 0.25 | 20.0% |" in (folder / "summary.md").read_text()


def test_summary_table_one_row_per_cell(study_folder):
    _, result, _ = study_folder
    table = summary_table(result)
    assert len(table) == 2 * 2 * 2
    assert not math.isnan(table["score"].iloc[0])


def test_study_resume_reuses_cells(planted, balanced_cell, tmp_path, monkeypatch):
    balanced_cell.write(tmp_path / "cells")

    def fail(*args, **kwargs):
        raise AssertionError("run_cell must not run when the cell is finished")

    monkeypatch.setattr(imbalance, "run_cell", fail)
    reused: list[bool] = []
    result = run_study(
        _config(ratios=(1.0,)),
        tmp_path,
        resume=True,
        data=planted,
        on_cell=lambda cell, was_reused: reused.append(was_reused),
    )
    assert reused == [True]
    pd.testing.assert_frame_equal(result.cells[0].tests, balanced_cell.tests)


def test_study_resume_reruns_changed_settings(planted, balanced_cell, tmp_path, monkeypatch):
    balanced_cell.write(tmp_path / "cells")
    calls: list[float] = []

    def record(data, config, ratio, seed, **kwargs):
        calls.append(ratio)
        return balanced_cell

    monkeypatch.setattr(imbalance, "run_cell", record)
    run_study(_config(ratios=(1.0,), epochs=1), tmp_path, resume=True, data=planted)
    assert calls == [1.0]

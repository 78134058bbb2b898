"""Tests of TCAVResult: JSON and CSV files, text and HTML views, and the figure."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cav.errors import InvalidArgumentError, WeakCAVWarning, ZeroGradientWarning
from cav.pipeline.run import run_tcav
from cav.pipeline.toy import ToyMLP, make_toy_mlp
from cav.report.result import TCAVResult

WIDTH = 16


@pytest.fixture(scope="module")
def result() -> TCAVResult:
    """A run with two layers, two targets, a planted and a random concept."""
    rng = np.random.default_rng(4)
    model = make_toy_mlp(WIDTH, hidden=12, seed=4)
    inputs = rng.normal(size=(60, WIDTH))
    gradient = model.gradients(inputs, ["features"], 1)["features"].mean(axis=0)
    concepts = {
        "planted": rng.normal(size=(30, WIDTH)) + 3.0 * gradient / np.linalg.norm(gradient),
        "random": rng.normal(size=(30, WIDTH)),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakCAVWarning)
        return run_tcav(
            model,
            inputs,
            [0, 1],
            concepts,
            random_pool=rng.normal(size=(300, WIDTH)),
            layers=["features", "hidden"],
            n_random=5,
        )


@pytest.fixture(scope="module")
def undefined_result() -> TCAVResult:
    """A result whose scores are all NaN, with an infinite statistic written in."""
    rng = np.random.default_rng(2)
    live = make_toy_mlp(WIDTH, hidden=6, seed=2)
    dead = ToyMLP(live.first_weights, np.full(6, -1e6), live.second_weights, live.second_bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (WeakCAVWarning, ZeroGradientWarning))
        result = run_tcav(
            dead,
            rng.normal(size=(20, WIDTH)),
            1,
            {"c": rng.normal(size=(10, WIDTH))},
            random_pool=rng.normal(size=(60, WIDTH)),
            layers="features",
            n_random=3,
        )
    result._summary.loc[0, "statistic"] = -math.inf
    return result


def assert_same_result(first: TCAVResult, second: TCAVResult) -> None:
    pd.testing.assert_frame_equal(first.runs, second.runs, check_exact=True)
    pd.testing.assert_frame_equal(first.summary(), second.summary(), check_exact=True)
    assert first.params == second.params


def test_json_round_trip_text(result):
    assert_same_result(TCAVResult.from_json(result.to_json()), result)


def test_json_round_trip_file(result, tmp_path):
    path = tmp_path / "result.json"
    result.to_json(path)
    assert_same_result(TCAVResult.from_json(path), result)
    assert_same_result(TCAVResult.from_json(str(path)), result)


def test_json_keeps_nan_and_inf(undefined_result):
    loaded = TCAVResult.from_json(undefined_result.to_json())
    assert loaded.runs["score"].isna().all()
    assert loaded.summary()["statistic"].iloc[0] == -math.inf
    assert_same_result(loaded, undefined_result)


def test_json_is_standard(undefined_result):
    def reject(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    document = json.loads(undefined_result.to_json(), parse_constant=reject)
    assert document["format"] == "cav.TCAVResult"


def test_json_keeps_dtypes(result):
    loaded = TCAVResult.from_json(result.to_json())
    assert loaded.runs["target"].dtype == np.int64
    assert loaded.summary()["significant"].dtype == np.bool_
    assert loaded.summary()["p_value"].dtype == np.float64


def test_from_json_rejects_other_document():
    with pytest.raises(InvalidArgumentError, match=r"not a cav\.TCAVResult"):
        TCAVResult.from_json('{"format": "other"}')


def test_from_json_rejects_future_version(result):
    document = json.loads(result.to_json())
    document["format_version"] = 99
    with pytest.raises(InvalidArgumentError, match="format_version 99"):
        TCAVResult.from_json(json.dumps(document))


def test_csv_runs_round_trip(result, tmp_path):
    path = tmp_path / "runs.csv"
    result.to_csv(path)
    loaded = pd.read_csv(path)
    assert list(loaded.columns) == list(result.runs.columns)
    np.testing.assert_array_equal(loaded["score"].to_numpy(), result.runs["score"].to_numpy())
    assert loaded["concept"].tolist() == result.runs["concept"].tolist()


def test_csv_summary_table(result, tmp_path):
    path = tmp_path / "summary.csv"
    result.to_csv(path, table="summary")
    loaded = pd.read_csv(path)
    assert len(loaded) == 2 * 2 * 2
    np.testing.assert_array_equal(loaded["p_value"], result.summary()["p_value"])


def test_csv_rejects_table_name(result, tmp_path):
    with pytest.raises(InvalidArgumentError, match="table='cavs'"):
        result.to_csv(tmp_path / "x.csv", table="cavs")


def test_summary_is_a_copy(result):
    summary = result.summary()
    summary.loc[:, "mean"] = -1.0
    assert (result.summary()["mean"] >= 0).all()


def test_repr_shows_headline_and_rows(result):
    text = repr(result)
    assert text.startswith("TCAVResult: 2 concept(s) x 2 layer(s) x 2 target(s), R = 5")
    assert "planted" in text
    assert "p_value_corrected" in text


def test_repr_html_has_table(result):
    markup = result._repr_html_()
    assert "<table" in markup
    assert "calibrated test" in markup


def test_plot_one_panel_per_layer(result, tmp_path):
    figure = result.plot()
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 2
    assert [axis.get_title() for axis in figure.axes] == ["layer features", "layer hidden"]
    figure.savefig(tmp_path / "result.png")
    assert (tmp_path / "result.png").stat().st_size > 0


def test_plot_marks_significant(result):
    summary = result.summary()
    summary["significant"] = [True, False, False, True, False, False, False, False]
    figure = TCAVResult(result.runs, summary, result.params).plot()
    stars = [text for axis in figure.axes for text in axis.texts if text.get_text() == "*"]
    assert len(stars) == 2


def test_plot_labels_undefined(undefined_result):
    figure = undefined_result.plot()
    labels = [text.get_text() for axis in figure.axes for text in axis.texts]
    assert labels == ["undefined"]


def test_plot_after_json_round_trip(result):
    assert isinstance(TCAVResult.from_json(result.to_json()).plot(), Figure)

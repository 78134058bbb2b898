"""End-to-end tests of run_tcav on ToyMLP, a numpy model with the adapter API."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from cav.errors import (
    InvalidArgumentError,
    InvalidTypeError,
    ValueRangeWarning,
    WeakCAVWarning,
    ZeroGradientWarning,
)
from cav.pipeline.run import run_tcav
from cav.pipeline.sets import draw_random_sets, null_pairs, random_set_names
from cav.pipeline.toy import ToyMLP, make_toy_mlp
from cav.report.result import TCAVResult

WIDTH = 32
N_CONCEPT = 60


def planted_problem(seed: int = 0, shift: float = 3.0):
    """A toy model, its inputs, a concept moved along the class-1 gradient, and a pool."""
    rng = np.random.default_rng(seed)
    model = make_toy_mlp(WIDTH, hidden=24, seed=seed)
    inputs = rng.normal(size=(120, WIDTH))
    gradient = model.gradients(inputs, ["features"], 1)["features"].mean(axis=0)
    direction = gradient / np.linalg.norm(gradient)
    concept = rng.normal(size=(N_CONCEPT, WIDTH)) + shift * direction
    pool = rng.normal(size=(1000, WIDTH))
    return model, inputs, concept, pool


def quiet_run(*args, **kwargs) -> TCAVResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakCAVWarning)
        return run_tcav(*args, **kwargs)


@pytest.fixture(scope="module")
def problem():
    return planted_problem()


@pytest.fixture(scope="module")
def planted_result(problem):
    model, inputs, concept, pool = problem
    rng = np.random.default_rng(5)
    concepts = {"planted": concept, "random": rng.normal(size=(N_CONCEPT, WIDTH))}
    return quiet_run(
        model, inputs, [0, 1], concepts, random_pool=pool, layers="features", n_random=10
    )


def row_of(result: TCAVResult, concept: str, target: int, layer: str = "features") -> pd.Series:
    summary = result.summary()
    mask = (summary["concept"] == concept) & (summary["target"] == target)
    return summary[mask & (summary["layer"] == layer)].iloc[0]


def test_planted_concept_significant(planted_result):
    row = row_of(planted_result, "planted", 1)
    assert row["mean"] > 0.8
    assert row["significant"]


def test_planted_concept_lowers_other_class(planted_result):
    # The concept moves along the class-1 gradient only; class 0 is not pushed upward.
    assert (
        row_of(planted_result, "planted", 0)["mean"] < row_of(planted_result, "planted", 1)["mean"]
    )


def test_random_concept_not_significant(planted_result):
    for target in (0, 1):
        assert not row_of(planted_result, "random", target)["significant"]


def test_runs_table_shape(planted_result):
    runs = planted_result.runs
    concept_runs = runs[runs["kind"] == "concept"]
    null_runs = runs[runs["kind"] == "null"]
    assert len(concept_runs) == 2 * 10 * 2
    assert len(null_runs) == 45 * 2
    assert list(runs.columns[:6]) == ["concept", "negative", "layer", "target", "run", "kind"]


def test_null_runs_pair_each_set_once(planted_result):
    null_runs = planted_result.runs.query("kind == 'null' and target == 1")
    pairs = {
        frozenset(pair) for pair in zip(null_runs["concept"], null_runs["negative"], strict=True)
    }
    assert len(pairs) == 45
    assert all(len(pair) == 2 for pair in pairs)


def test_summary_mean_matches_runs(planted_result):
    runs = planted_result.runs
    scores = runs.query("concept == 'planted' and target == 1 and kind == 'concept'")["score"]
    row = row_of(planted_result, "planted", 1)
    assert row["mean"] == pytest.approx(scores.mean(), abs=1e-15)
    assert row["sd"] == pytest.approx(scores.std(ddof=1), rel=1e-12)
    assert row["n_random"] == 10


def test_same_seed_identical_runs(problem):
    model, inputs, concept, pool = problem
    first = quiet_run(model, inputs, 1, {"c": concept}, random_pool=pool, layers=0, n_random=4)
    second = quiet_run(model, inputs, 1, {"c": concept}, random_pool=pool, layers=0, n_random=4)
    pd.testing.assert_frame_equal(first.runs, second.runs, check_exact=True)
    pd.testing.assert_frame_equal(first.summary(), second.summary(), check_exact=True)


def test_other_seed_other_random_sets(problem):
    model, inputs, concept, pool = problem
    first = quiet_run(model, inputs, 1, {"c": concept}, random_pool=pool, layers=0, n_random=4)
    second = quiet_run(
        model, inputs, 1, {"c": concept}, random_pool=pool, layers=0, n_random=4, seed=1
    )
    assert not np.array_equal(first.runs["score"], second.runs["score"])


def test_generator_seed_reproducible(problem):
    model, inputs, concept, pool = problem
    results = [
        quiet_run(
            model,
            inputs,
            1,
            {"c": concept},
            random_pool=pool,
            layers=0,
            n_random=3,
            seed=np.random.default_rng(9),
        )
        for _ in range(2)
    ]
    pd.testing.assert_frame_equal(results[0].runs, results[1].runs, check_exact=True)


def sorted_runs(result: TCAVResult) -> pd.DataFrame:
    keys = ["kind", "concept", "negative", "layer", "target"]
    columns = [*keys, "score", "magnitude", "zero_share", "cav_accuracy"]
    return result.runs[columns].sort_values(keys).reset_index(drop=True)


def test_permuted_concepts_same_scores(problem):
    model, inputs, concept, pool = problem
    rng = np.random.default_rng(3)
    concepts = {"a": concept, "b": rng.normal(size=(N_CONCEPT, WIDTH)), "c": concept[::-1] + 0.5}
    permuted = {name: concepts[name] for name in ("c", "a", "b")}
    options = {"random_pool": pool, "layers": ["features", "hidden"], "n_random": 4}
    first = quiet_run(model, inputs, [1, 0], concepts, **options)
    second = quiet_run(model, inputs, [1, 0], permuted, **options)
    pd.testing.assert_frame_equal(sorted_runs(first), sorted_runs(second), check_exact=True)
    assert list(second.summary()["concept"].unique()) == ["c", "a", "b"]


def test_permuted_random_sets_same_scores(problem):
    model, inputs, concept, pool = problem
    random_sets = draw_random_sets(pool, 5, N_CONCEPT, seed=2)
    reordered = {name: random_sets[name] for name in reversed(list(random_sets))}
    first = quiet_run(model, inputs, 1, {"c": concept}, random_sets=random_sets, layers=0)
    second = quiet_run(model, inputs, 1, {"c": concept}, random_sets=reordered, layers=0)
    pd.testing.assert_frame_equal(sorted_runs(first), sorted_runs(second), check_exact=True)
    summary_columns = ["mean", "sd", "p_value", "p_value_rank", "statistic"]
    pd.testing.assert_frame_equal(
        first.summary()[summary_columns], second.summary()[summary_columns], check_exact=True
    )


def test_random_sets_sequence_named(problem):
    model, inputs, concept, pool = problem
    sets = [pool[:60], pool[60:120], pool[120:180]]
    result = quiet_run(model, inputs, 1, {"c": concept}, random_sets=sets, layers=0)
    assert result.params["random_sets"] == ["random_00", "random_01", "random_02"]
    assert result.params["random_source"] == "random_sets"


def test_concept_batches_accepted(problem):
    model, inputs, concept, pool = problem
    options = {"random_pool": pool, "layers": 0, "n_random": 3}
    whole = quiet_run(model, inputs, 1, {"c": concept}, **options)
    batches = quiet_run(model, inputs, 1, {"c": [concept[:10], concept[10:]]}, **options)
    pd.testing.assert_frame_equal(whole.runs, batches.runs, check_exact=True)


def test_inputs_mapping_per_target(problem):
    model, inputs, concept, pool = problem
    mapping = {0: inputs[:50], 1: inputs[50:]}
    result = quiet_run(
        model, mapping, [0, 1], {"c": concept}, random_pool=pool, layers=0, n_random=3
    )
    n_inputs = result.runs.groupby("target")["n_inputs"].first()
    assert n_inputs[0] == 50
    assert n_inputs[1] == 70


def test_pool_too_small_says_needed(problem):
    model, inputs, concept, pool = problem
    with pytest.raises(InvalidArgumentError, match=r"10 \* 60 = 600"):
        run_tcav(model, inputs, 1, {"c": concept}, random_pool=pool[:599], layers=0)


def test_random_sets_and_pool_exclusive(problem):
    model, inputs, concept, pool = problem
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        run_tcav(
            model, inputs, 1, {"c": concept}, random_sets=[pool[:60]], random_pool=pool, layers=0
        )
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        run_tcav(model, inputs, 1, {"c": concept}, layers=0)


def test_random_set_size_option(problem):
    model, inputs, concept, pool = problem
    result = quiet_run(
        model, inputs, 1, {"c": concept}, random_pool=pool, layers=0, n_random=3, random_set_size=20
    )
    assert result.params["set_sizes"]["random_00"] == 20


def test_concept_named_like_random_set(problem):
    model, inputs, concept, pool = problem
    with pytest.raises(InvalidArgumentError, match="random_00"):
        run_tcav(model, inputs, 1, {"random_00": concept}, random_pool=pool, layers=0, n_random=3)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("test", "ztest", "test='ztest'"),
        ("method", "svm", "method='svm'"),
        ("output", "softmax", "output='softmax'"),
        ("correction", "fdr", "correction='fdr'"),
        ("alpha", 1.5, "alpha=1.5"),
        ("batch_size", 0, "batch_size=0"),
        ("holdout", 1.0, "holdout=1.0"),
    ],
)
def test_invalid_option_named(problem, option, value, message):
    model, inputs, concept, pool = problem
    with pytest.raises(InvalidArgumentError, match=message):
        run_tcav(model, inputs, 1, {"c": concept}, random_pool=pool, layers=0, **{option: value})


def test_invalid_types_rejected(problem):
    model, inputs, concept, pool = problem
    with pytest.raises(InvalidTypeError, match="concepts must be a mapping"):
        run_tcav(model, inputs, 1, [concept], random_pool=pool, layers=0)
    with pytest.raises(InvalidTypeError, match="target must be an int"):
        run_tcav(model, inputs, "ship", {"c": concept}, random_pool=pool, layers=0)
    with pytest.raises(InvalidTypeError, match="random_pool"):
        run_tcav(model, inputs, 1, {"c": concept}, random_sets=pool, layers=0)


def test_unknown_layer_raises(problem):
    model, inputs, concept, pool = problem
    with pytest.raises(InvalidArgumentError, match="valid layers"):
        run_tcav(model, inputs, 1, {"c": concept}, random_pool=pool, layers="conv9")


def test_ttest_uses_cycle_of_null_runs(problem):
    model, inputs, concept, pool = problem
    result = quiet_run(
        model, inputs, 1, {"c": concept}, random_pool=pool, layers=0, n_random=5, test="ttest"
    )
    null_runs = result.runs[result.runs["kind"] == "null"]
    expected = null_pairs(random_set_names(5), "ttest")
    assert list(zip(null_runs["concept"], null_runs["negative"], strict=True)) == expected
    assert result.summary()["test"].iloc[0] == "ttest"
    assert math.isnan(result.summary()["p_value_rank"].iloc[0])


def test_ttest_matches_scipy_on_runs(problem):
    from scipy import stats as scipy_stats

    model, inputs, concept, pool = problem
    result = quiet_run(
        model, inputs, 1, {"c": concept}, random_pool=pool, layers=0, n_random=5, test="ttest"
    )
    runs = result.runs
    concept_scores = runs[runs["kind"] == "concept"]["score"]
    null_scores = runs[runs["kind"] == "null"]["score"]
    expected = scipy_stats.ttest_ind(concept_scores, null_scores, equal_var=False).pvalue
    assert result.summary()["p_value"].iloc[0] == pytest.approx(expected, rel=1e-12)


def test_too_few_random_sets_note(problem):
    model, inputs, concept, pool = problem
    result = quiet_run(model, inputs, 1, {"c": concept}, random_pool=pool, layers=0, n_random=2)
    row = result.summary().iloc[0]
    assert math.isnan(row["p_value"])
    assert "at least 3 random sets" in row["note"]
    assert not row["significant"]


def test_one_random_set_ttest_note(problem):
    model, inputs, concept, pool = problem
    result = quiet_run(
        model, inputs, 1, {"c": concept}, random_pool=pool, layers=0, n_random=1, test="ttest"
    )
    row = result.summary().iloc[0]
    assert math.isnan(row["p_value"])
    assert "t-test needs" in row["note"]


def dead_model(width: int = WIDTH) -> ToyMLP:
    """A ToyMLP whose ReLU units are off for every input, so every gradient is zero."""
    live = make_toy_mlp(width, hidden=8, seed=0)
    return ToyMLP(live.first_weights, np.full(8, -1e6), live.second_weights, live.second_bias)


def test_dead_relu_undefined(problem):
    _, inputs, concept, pool = problem
    with pytest.warns(ZeroGradientWarning, match="exactly zero"):
        result = quiet_run(
            dead_model(), inputs, 1, {"c": concept}, random_pool=pool, layers=0, n_random=4
        )
    row = result.summary().iloc[0]
    assert row["undefined"]
    assert row["zero_share"] == 1.0
    assert math.isnan(row["mean"])
    assert math.isnan(row["p_value"])
    assert not row["significant"]
    assert "exactly zero in 4 of 4 runs" in row["note"]
    assert result.runs["score"].isna().all()


def test_undefined_not_counted_in_correction(problem):
    model, inputs, concept, pool = problem
    # Class 0's logit is a constant, so its TCAV scores are undefined and class 1 is the
    # only test of the call: Holm's correction must leave its p-value unchanged.
    second_weights = model.second_weights.copy()
    second_weights[0] = 0.0
    flat = ToyMLP(model.first_weights, model.first_bias, second_weights, model.second_bias)
    with pytest.warns(ZeroGradientWarning):
        result = quiet_run(
            flat, inputs, [0, 1], {"c": concept}, random_pool=pool, layers=0, n_random=4
        )
    summary = result.summary().set_index("target")
    assert summary.loc[0, "undefined"]
    assert np.isnan(summary.loc[0, "p_value_corrected"])
    assert summary.loc[1, "p_value_corrected"] == summary.loc[1, "p_value"]


def test_value_range_warning(problem):
    model, inputs, concept, pool = problem
    with pytest.warns(ValueRangeWarning, match="different value range"):
        quiet_run(model, inputs, 1, {"c": concept * 255}, random_pool=pool, layers=0, n_random=3)


def test_weak_cav_warning_for_random_concept(problem):
    model, inputs, _, pool = problem
    random_concept = np.random.default_rng(8).normal(size=(30, WIDTH))
    with pytest.warns(WeakCAVWarning, match="hardly better than chance"):
        result = run_tcav(
            model, inputs, 1, {"noise": random_concept}, random_pool=pool, layers=0, n_random=4
        )
    assert result.summary()["weak_cav"].iloc[0]


def test_loss_output_uses_labels(problem):
    model, inputs, concept, pool = problem
    labels = np.zeros(len(inputs), dtype=int)
    options = {"random_pool": pool, "layers": 0, "n_random": 3, "output": "loss"}
    own_label = quiet_run(model, inputs, 1, {"c": concept}, **options)
    other_label = quiet_run(model, inputs, 1, {"c": concept}, labels=labels, **options)
    # With two classes the loss gradient toward label 0 is the negation of that toward 1.
    own = own_label.runs["score"].to_numpy()
    other = other_label.runs["score"].to_numpy()
    np.testing.assert_allclose(own + other, 1.0 - own_label.runs["zero_share"], atol=1e-12)


def test_progress_bars_do_not_change_results(problem, capsys):
    model, inputs, concept, pool = problem
    options = {"random_pool": pool, "layers": 0, "n_random": 3}
    plain = quiet_run(model, inputs, 1, {"c": concept}, **options)
    shown = quiet_run(model, inputs, 1, {"c": concept}, progress=True, **options)
    pd.testing.assert_frame_equal(plain.runs, shown.runs, check_exact=True)
    assert "gradients, class 1" in capsys.readouterr().err


def test_params_record_call(planted_result):
    params = planted_result.params
    assert params["test"] == "calibrated"
    assert params["layers"] == ["features"]
    assert params["targets"] == [0, 1]
    assert params["n_random"] == 10
    assert params["framework"] == "numpy"
    assert len(params["model_fingerprint"]) == 64

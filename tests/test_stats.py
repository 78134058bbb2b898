"""Known-answer tests of cav.core.stats: formulas written out here, scipy, and simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from cav.core import stats
from cav.errors import InvalidArgumentError


def binomial_upper_count(n_trials: int, rate: float, tail: float = 1e-3) -> int:
    """Largest count of rejections still consistent with a true rate of ``rate``."""
    return int(scipy_stats.binom.ppf(1.0 - tail, n_trials, rate))


def simulate_round_robin(
    rng: np.random.Generator, n_random: int, set_sd: float, noise_sd: float, shift: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw concept scores and fitted null scores of a set-effect model.

    ``s(X, Y) = clip(0.5 + a_X - a_Y + e_XY, 0, 1)`` with a set effect ``a_X`` per image set
    and pair noise ``e_XY``. The concept's effect is a random draw plus ``shift``, so
    ``shift = 0`` makes the concept one more random set.
    """
    effects = rng.normal(0.0, set_sd, n_random + 1)
    effects[0] += shift
    noise = rng.normal(0.0, noise_sd, (n_random + 1, n_random + 1))
    scores = np.clip(0.5 + effects[:, None] - effects[None, :] + noise, 0.0, 1.0)
    null = np.full((n_random, n_random), np.nan)
    upper = np.triu_indices(n_random, k=1)
    null[upper] = scores[1:, 1:][upper]
    return scores[0, 1:], null


def both_tests(concept: np.ndarray, null: np.ndarray) -> tuple[float, float]:
    zeros = np.zeros_like(concept)
    matrix = stats.round_robin_matrix(concept, zeros, null, np.zeros_like(null))
    calibrated = stats.calibrated_test(stats.set_statistics(matrix)).p_value
    ttest = stats.ttest_scores(concept, stats.cycle_scores(matrix)).p_value
    return calibrated, ttest


def test_mean_interval_matches_formula(rng):
    values = rng.normal(0.6, 0.1, 12)
    mean, sd, low, high = stats.mean_interval(values)
    expected_sd = math.sqrt(np.sum((values - values.mean()) ** 2) / 11)
    half = scipy_stats.t.ppf(0.975, 11) * expected_sd / math.sqrt(12)
    assert mean == pytest.approx(values.mean(), abs=1e-15)
    assert sd == pytest.approx(expected_sd, rel=1e-12)
    assert low == pytest.approx(values.mean() - half, rel=1e-12)
    assert high == pytest.approx(values.mean() + half, rel=1e-12)


def test_mean_interval_matches_scipy(rng):
    values = rng.normal(0.3, 0.2, 7)
    _, _, low, high = stats.mean_interval(values, confidence=0.9)
    reference = scipy_stats.t.interval(0.9, 6, loc=values.mean(), scale=scipy_stats.sem(values))
    np.testing.assert_allclose([low, high], reference, rtol=1e-12)


def test_mean_interval_single_value():
    mean, sd, low, high = stats.mean_interval(np.array([0.4, np.nan]))
    assert mean == 0.4
    assert math.isnan(sd)
    assert math.isnan(low) and math.isnan(high)


def test_mean_interval_rejects_confidence():
    with pytest.raises(InvalidArgumentError, match="confidence"):
        stats.mean_interval(np.ones(3), confidence=1.5)


def test_welch_matches_formula_and_scipy(rng):
    concept = rng.normal(0.7, 0.05, 10)
    null = rng.normal(0.5, 0.2, 8)
    result = stats.ttest_scores(concept, null, "welch")
    var_c, var_0 = concept.var(ddof=1) / 10, null.var(ddof=1) / 8
    t = (concept.mean() - null.mean()) / math.sqrt(var_c + var_0)
    df = (var_c + var_0) ** 2 / (var_c**2 / 9 + var_0**2 / 7)
    p = 2 * scipy_stats.t.sf(abs(t), df)
    reference = scipy_stats.ttest_ind(concept, null, equal_var=False)
    assert result.statistic == pytest.approx(t, rel=1e-12)
    assert result.df == pytest.approx(df, rel=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-10)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)


def test_student_matches_formula(rng):
    concept = rng.normal(0.6, 0.1, 6)
    null = rng.normal(0.5, 0.1, 9)
    result = stats.ttest_scores(concept, null, "student")
    pooled = (5 * concept.var(ddof=1) + 8 * null.var(ddof=1)) / 13
    t = (concept.mean() - null.mean()) / math.sqrt(pooled * (1 / 6 + 1 / 9))
    assert result.statistic == pytest.approx(t, rel=1e-12)
    assert result.df == 13
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), 13), rel=1e-10)


def test_ttest_nan_score_gives_note():
    result = stats.ttest_scores(np.array([0.5, np.nan, 0.7]), np.array([0.4, 0.5, 0.6]))
    assert math.isnan(result.p_value)
    assert "undefined" in result.note


def test_ttest_one_run_gives_note():
    result = stats.ttest_scores(np.array([0.9]), np.array([0.5]))
    assert math.isnan(result.p_value)
    assert "at least 2 concept runs" in result.note


def test_ttest_rejects_variant():
    with pytest.raises(InvalidArgumentError, match="ttest='paired'"):
        stats.ttest_scores(np.ones(3), np.ones(3), "paired")


def test_ttest_constant_samples():
    result = stats.ttest_scores(np.ones(4), np.full(4, 0.5))
    assert result.statistic == math.inf
    assert result.p_value == 0.0


def test_round_robin_fills_reversed_pairs():
    concept = np.array([0.9, 0.8, 0.7])
    concept_zero = np.array([0.0, 0.1, 0.0])
    null = np.full((3, 3), np.nan)
    null_zero = np.full((3, 3), np.nan)
    null[0, 1], null_zero[0, 1] = 0.4, 0.2
    null[0, 2], null_zero[0, 2] = 0.55, 0.0
    null[2, 1], null_zero[2, 1] = 0.3, 0.0
    matrix = stats.round_robin_matrix(concept, concept_zero, null, null_zero)
    np.testing.assert_allclose(matrix[0, 1:], concept)
    np.testing.assert_allclose(matrix[1:, 0], [0.1, 0.1, 0.3], atol=1e-15)
    assert matrix[2, 1] == pytest.approx(1 - 0.4 - 0.2)
    assert matrix[3, 1] == pytest.approx(0.45)
    assert matrix[2, 3] == pytest.approx(0.7)
    assert np.isnan(np.diag(matrix)).all()


def test_round_robin_keeps_both_orientations():
    null = np.array([[np.nan, 0.4], [0.7, np.nan]])
    matrix = stats.round_robin_matrix(np.array([0.5, 0.5]), np.zeros(2), null, np.zeros((2, 2)))
    assert matrix[1, 2] == 0.4
    assert matrix[2, 1] == 0.7


def test_round_robin_rejects_shapes():
    with pytest.raises(InvalidArgumentError, match="null_scores"):
        stats.round_robin_matrix(np.ones(3), np.zeros(3), np.ones((2, 2)), np.zeros((3, 3)))


def test_set_statistics_concept_is_mean_score(rng):
    concept, null = simulate_round_robin(rng, 6, 0.1, 0.1, 0.0)
    matrix = stats.round_robin_matrix(concept, np.zeros(6), null, np.zeros((6, 6)))
    values = stats.set_statistics(matrix)
    assert values.shape == (7,)
    assert values[0] == pytest.approx(concept.mean(), rel=1e-14)
    assert values.mean() == pytest.approx(0.5, abs=1e-14)


def test_calibrated_matches_prediction_interval(rng):
    values = rng.normal(0.5, 0.1, 11)
    result = stats.calibrated_test(values)
    random_sets = values[1:]
    scale = random_sets.std(ddof=1) * math.sqrt(1 + 1 / 10)
    t = (values[0] - random_sets.mean()) / scale
    assert result.statistic == pytest.approx(t, rel=1e-12)
    assert result.df == 9
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), 9), rel=1e-10)


def test_calibrated_shift_and_scale_invariant(rng):
    values = rng.normal(0.5, 0.1, 8)
    base = stats.calibrated_test(values)
    moved = stats.calibrated_test(3.0 * values - 1.0)
    assert moved.statistic == pytest.approx(base.statistic, rel=1e-12)
    assert moved.p_value == pytest.approx(base.p_value, rel=1e-10)


def test_calibrated_rank_p_value():
    values = np.array([0.9, 0.5, 0.45, 0.55, 0.4, 0.95])
    deviations = np.abs(values - values.mean())
    expected = (1 + np.sum(deviations[1:] >= deviations[0])) / 6
    result = stats.calibrated_test(values)
    assert result.rank_p_value == pytest.approx(expected)
    assert result.rank_p_value == pytest.approx(2 / 6)


def test_calibrated_needs_three_sets():
    result = stats.calibrated_test(np.array([0.9, 0.5, 0.4]))
    assert math.isnan(result.p_value)
    assert "at least 3 random sets" in result.note


def test_calibrated_nan_gives_note():
    result = stats.calibrated_test(np.array([0.9, np.nan, 0.4, 0.5]))
    assert math.isnan(result.p_value)
    assert "undefined" in result.note


@pytest.mark.parametrize("centred", [False, True], ids=["independent", "sum-zero"])
def test_calibrated_uniform_under_normal_null(rng, centred):
    n_draws, n_random = 4000, 9
    draws = rng.normal(0.5, 0.1, (n_draws, n_random + 1))
    if centred:
        # Exchangeable with a fixed sum, like the statistics of a round robin.
        draws = draws - draws.mean(axis=1, keepdims=True) + 0.5
    p_values = np.array([stats.calibrated_test(row).p_value for row in draws])
    uniformity = scipy_stats.kstest(p_values, "uniform")
    assert uniformity.pvalue > 1e-3


def test_cycle_scores_pairs():
    matrix = np.arange(25, dtype=float).reshape(5, 5)
    np.testing.assert_array_equal(stats.cycle_scores(matrix), [7, 13, 19, 21])


def test_cycle_scores_two_sets():
    matrix = np.arange(9, dtype=float).reshape(3, 3)
    np.testing.assert_array_equal(stats.cycle_scores(matrix), [5])


def reference_holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment written from its definition."""
    indexed = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    indexed.sort()
    m = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed, start=1):
        running = max(running, min(1.0, (m - rank + 1) * p))
        adjusted[i] = running
    return adjusted


def test_holm_reference_values():
    p_values = [0.01, 0.04, 0.03, 0.005, math.nan]
    expected = [0.03, 0.06, 0.06, 0.02, math.nan]
    corrected = stats.correct_p_values(np.array(p_values), "holm")
    np.testing.assert_allclose(corrected, expected, rtol=1e-12)
    np.testing.assert_allclose(corrected, reference_holm(p_values), rtol=1e-12)


def test_bonferroni_caps_at_one():
    corrected = stats.correct_p_values(np.array([0.01, 0.3, math.nan, 0.5]), "bonferroni")
    np.testing.assert_allclose(corrected, [0.03, 0.9, math.nan, 1.0])


def test_correction_none_unchanged():
    p_values = np.array([0.2, math.nan, 0.01])
    np.testing.assert_array_equal(stats.correct_p_values(p_values, "none"), p_values)


def test_correction_rejects_out_of_range():
    with pytest.raises(InvalidArgumentError, match=r"\[0, 1\]"):
        stats.correct_p_values(np.array([0.2, 1.5]))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(0.0, 1.0), st.just(math.nan)),
        min_size=1,
        max_size=12,
    )
)
def test_holm_matches_definition(p_values):
    corrected = stats.correct_p_values(np.array(p_values), "holm")
    np.testing.assert_allclose(corrected, reference_holm(p_values), rtol=1e-12, atol=0)
    bonferroni = stats.correct_p_values(np.array(p_values), "bonferroni")
    finite = ~np.isnan(corrected)
    assert np.all(corrected[finite] <= bonferroni[finite] + 1e-15)


def test_weak_cav_near_chance():
    mean, p_value, weak = stats.weak_cav_test(np.array([0.55, 0.5, 0.6]), n_heldout=40)
    expected_p = scipy_stats.binom.sf(21, 40, 0.5)
    assert mean == pytest.approx(0.55)
    assert p_value == pytest.approx(expected_p, rel=1e-10)
    assert weak


def test_weak_cav_accurate():
    _, p_value, weak = stats.weak_cav_test(np.array([0.95, 0.9]), n_heldout=40)
    assert p_value < 1e-6
    assert not weak


def test_weak_cav_without_holdout():
    mean, p_value, weak = stats.weak_cav_test(np.array([np.nan, np.nan]), n_heldout=0)
    assert math.isnan(mean)
    assert math.isnan(p_value)
    assert not weak


def test_null_concept_calibrated_not_ttest(rng):
    # Large set effects: the runs sharing one concept set are strongly correlated.
    n_trials = 600
    results = np.array(
        [both_tests(*simulate_round_robin(rng, 10, 0.08, 0.05, 0.0)) for _ in range(n_trials)]
    )
    calibrated_rejections = int(np.sum(results[:, 0] < 0.05))
    ttest_rejections = int(np.sum(results[:, 1] < 0.05))
    assert calibrated_rejections <= binomial_upper_count(n_trials, 0.05)
    assert ttest_rejections > binomial_upper_count(n_trials, 0.05)


def test_planted_concept_calibrated_power(rng):
    n_trials = 200
    results = np.array(
        [both_tests(*simulate_round_robin(rng, 10, 0.05, 0.05, 0.3)) for _ in range(n_trials)]
    )
    assert np.mean(results[:, 0] < 0.05) > 0.95

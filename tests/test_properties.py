"""Property-based tests of the numpy core with hypothesis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import cav

# Subnormal values are left out: scaled by 1e-3 they can round to zero and lose their sign.
finite = st.floats(
    min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False
)
nonzero = finite.filter(lambda value: abs(value) > 1e-6)
derivative_vectors = arrays(np.float64, st.integers(1, 40), elements=finite)
nonzero_vectors = arrays(np.float64, st.integers(1, 40), elements=nonzero)


@given(derivative_vectors, st.floats(min_value=1e-3, max_value=1e3))
def test_score_invariant_to_positive_scale(derivatives, factor):
    score = cav.tcav_score(derivatives)
    scaled = cav.tcav_score(derivatives * factor)
    assert np.isnan(score) == np.isnan(scaled)
    if not np.isnan(score):
        assert scaled == score


@given(nonzero_vectors)
def test_reversed_cav_gives_complement(derivatives):
    # Swapping concept and negatives negates the direction and so every derivative; with
    # no exact zeros the two scores add up to 1.
    assert cav.tcav_score(-derivatives) == pytest.approx(1.0 - cav.tcav_score(derivatives))


@given(derivative_vectors)
def test_complement_with_zeros(derivatives):
    score = cav.tcav_score(derivatives)
    if np.isnan(score):
        assert np.all(derivatives == 0)
        return
    reversed_score = cav.tcav_score(-derivatives)
    expected = 1.0 - score - cav.zero_fraction(derivatives)
    assert reversed_score == pytest.approx(expected, abs=1e-12)


@given(derivative_vectors, st.randoms(use_true_random=False))
def test_score_invariant_to_input_order(derivatives, random):
    order = list(range(len(derivatives)))
    random.shuffle(order)
    shuffled = derivatives[order]
    np.testing.assert_array_equal(cav.tcav_score(derivatives), cav.tcav_score(shuffled))
    # Summation order changes the last bit of the magnitude score, nothing more.
    np.testing.assert_allclose(
        cav.magnitude_score(derivatives), cav.magnitude_score(shuffled), rtol=1e-12
    )


@given(derivative_vectors, st.integers(0, 39))
def test_nan_derivative_gives_nan(derivatives, position):
    poisoned = derivatives.copy()
    poisoned[position % len(poisoned)] = np.nan
    assert np.isnan(cav.tcav_score(poisoned))
    assert np.isnan(cav.magnitude_score(poisoned))
    assert np.isnan(cav.zero_fraction(poisoned))


@given(derivative_vectors)
def test_magnitude_between_zero_and_one(derivatives):
    magnitude = cav.magnitude_score(derivatives)
    if np.all(derivatives == 0):
        assert np.isnan(magnitude)
    else:
        assert 0.0 <= magnitude <= 1.0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(min_value=0.01, max_value=100.0))
def test_cav_scores_invariant_to_activation_scale(seed, factor):
    # The mean-difference direction of scaled activations is the same unit vector, so
    # every score on the same gradients is unchanged.
    rng = np.random.default_rng(seed)
    concept = rng.normal(size=(12, 6)) + 1.0
    negatives = rng.normal(size=(12, 6))
    gradients = rng.normal(size=(15, 6))
    plain = cav.fit_cav(concept, negatives, method="mean_difference", seed=seed)
    scaled = cav.fit_cav(concept * factor, negatives * factor, method="mean_difference", seed=seed)
    np.testing.assert_allclose(plain.direction, scaled.direction, atol=1e-9)
    plain_derivatives = cav.directional_derivatives(gradients, plain)
    scaled_derivatives = cav.directional_derivatives(gradients, scaled)
    assert np.array_equal(plain_derivatives > 0, scaled_derivatives > 0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_swapped_sets_give_complement_score(seed):
    rng = np.random.default_rng(seed)
    concept = rng.normal(size=(12, 6)) + 0.5
    negatives = rng.normal(size=(12, 6))
    gradients = rng.normal(size=(15, 6))
    forward = cav.fit_cav(concept, negatives, method="mean_difference", holdout=0.0)
    backward = cav.fit_cav(negatives, concept, method="mean_difference", holdout=0.0)
    forward_score = cav.tcav_score(cav.directional_derivatives(gradients, forward))
    backward_score = cav.tcav_score(cav.directional_derivatives(gradients, backward))
    assert backward_score == pytest.approx(1.0 - forward_score)

"""Known-answer tests of CAV fitting and of the scores (numpy only)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics import balanced_accuracy_score
from threadpoolctl import threadpool_limits

import cav
from cav._checks import check_activations
from cav.core import cav as cav_module
from cav.core.cav import METHODS, _split, pair_seed_of

WIDTH = 400
N_PER_SET = 60


def _planted_sets(
    rng: np.random.Generator, shift: float = 3.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concept = noise shifted along a known unit direction; negatives = plain noise."""
    direction = rng.normal(size=WIDTH)
    direction /= np.linalg.norm(direction)
    concept = rng.normal(size=(N_PER_SET, WIDTH)) + shift * direction
    negatives = rng.normal(size=(N_PER_SET, WIDTH))
    return concept, negatives, direction


@pytest.mark.parametrize("method", METHODS)
def test_direction_unit_norm_toward_concept(rng, method):
    concept, negatives, planted = _planted_sets(rng, shift=8.0)
    fitted = cav.fit_cav(concept, negatives, method=method, seed=3)
    assert np.linalg.norm(fitted.direction) == pytest.approx(1.0, abs=1e-12)
    assert (concept.mean(axis=0) - negatives.mean(axis=0)) @ fitted.direction > 0
    assert fitted.direction @ planted > 0.1
    assert fitted.accuracy > 0.75


@pytest.mark.parametrize("method", METHODS)
def test_swapping_sets_flips_direction(rng, method):
    concept, negatives, _ = _planted_sets(rng)
    forward = cav.fit_cav(concept, negatives, method=method, seed=0, holdout=0.0)
    backward = cav.fit_cav(negatives, concept, method=method, seed=0, holdout=0.0)
    # The classifier sees the same images with labels exchanged, so the direction toward
    # "concept" reverses. The perceptron visits the images in another order, so its
    # reversed direction is close to, not equal to, the negation.
    bound = 0.0 if method == "perceptron" else -0.95
    assert forward.direction @ backward.direction < bound


def test_swapped_mean_difference_exact(rng):
    concept, negatives, _ = _planted_sets(rng)
    forward = cav.fit_cav(concept, negatives, method="mean_difference", holdout=0.0)
    backward = cav.fit_cav(negatives, concept, method="mean_difference", holdout=0.0)
    np.testing.assert_allclose(forward.direction, -backward.direction, atol=1e-12)


@pytest.mark.parametrize("method", ["sgd", "perceptron", "logistic"])
def test_sample_space_fit_matches_raw_fit(rng, method):
    # Fewer images than dimensions: cav fits in the sample dimension. The classifier must
    # be the one sklearn fits on the raw activations with the same split and seed.
    concept, negatives, _ = _planted_sets(rng, shift=1.0)
    fitted = cav.fit_cav(concept, negatives, method=method, seed=7)
    stacked = np.concatenate([concept, negatives])
    labels = np.r_[np.ones(N_PER_SET), np.zeros(N_PER_SET)].astype(int)
    seed = pair_seed_of(7, "concept", "negative")
    train, _ = _split(labels, 0.33, seed)
    if method == "logistic":
        reference = LogisticRegression(C=1.0, max_iter=5000, tol=1e-12, solver="newton-cholesky")
    elif method == "sgd":
        reference = SGDClassifier(
            loss="hinge", alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed
        )
    else:
        reference = SGDClassifier(
            loss="perceptron", eta0=1.0, learning_rate="constant", penalty=None, random_state=seed
        )
    reference.fit(stacked[train], labels[train])
    weights = reference.coef_[0]
    expected = weights / np.linalg.norm(weights)
    tolerance = 1e-6 if method == "logistic" else 1e-9
    assert fitted.direction @ expected == pytest.approx(1.0, abs=tolerance)
    assert fitted.intercept == pytest.approx(
        reference.intercept_[0] / np.linalg.norm(weights), abs=tolerance * 10
    )


def _raw_sgd_direction(concept, negatives, seed):
    """Unit weights of sklearn's hinge-loss SGD fitted on the raw float64 activations."""
    stacked = np.concatenate([concept, negatives]).astype(np.float64)
    labels = np.r_[np.ones(len(concept)), np.zeros(len(negatives))].astype(int)
    pair_seed = pair_seed_of(seed, "concept", "negative")
    train, test = _split(labels, 0.33, pair_seed)
    reference = SGDClassifier(
        loss="hinge", alpha=0.01, max_iter=1000, tol=1e-3, random_state=pair_seed
    ).fit(stacked[train], labels[train])
    accuracy = balanced_accuracy_score(labels[test], reference.predict(stacked[test]))
    return reference.coef_[0] / np.linalg.norm(reference.coef_[0]), accuracy


def test_float32_activations_fit_the_float64_classifier(rng):
    # Network activations are float32, so the Gram products and the weights are computed in
    # float32. The direction must still be sklearn's on the float64 values, up to rounding.
    concept, negatives, _ = _planted_sets(rng, shift=1.0)
    concept, negatives = concept.astype(np.float32), negatives.astype(np.float32)
    fitted = cav.fit_cav(concept, negatives, method="sgd", seed=4)
    expected, accuracy = _raw_sgd_direction(concept, negatives, seed=4)
    assert fitted.direction.dtype == np.float64
    assert np.abs(fitted.direction - expected).max() < 1e-5
    assert fitted.accuracy == accuracy


def test_repeated_images_fit_the_raw_classifier(rng):
    # Every image appears twice, so the training Gram matrix is singular and has no
    # Cholesky factor. The eigendecomposition path must give the same classifier.
    concept, negatives, _ = _planted_sets(rng, shift=1.0)
    concept = np.concatenate([concept[:30], concept[:30]])
    negatives = np.concatenate([negatives[:30], negatives[:30]])
    fitted = cav.fit_cav(concept, negatives, method="sgd", seed=9)
    expected, accuracy = _raw_sgd_direction(concept, negatives, seed=9)
    assert fitted.direction @ expected == pytest.approx(1.0, abs=1e-9)
    assert fitted.accuracy == accuracy


def test_heldout_accuracy_matches_raw_predictions(rng):
    # The held-out decisions come from the Gram matrix. They must agree with sklearn's
    # predictions on the raw activations of the held-out images.
    # 100 dimensions for 80 training images: still fitted in the sample dimension, and
    # the classes overlap enough that some held-out images are misclassified.
    direction = rng.normal(size=100)
    concept = rng.normal(size=(N_PER_SET, 100)) + 2.0 * direction / np.linalg.norm(direction)
    negatives = rng.normal(size=(N_PER_SET, 100))
    fitted = cav.fit_cav(concept, negatives, method="sgd", seed=1)
    _, accuracy = _raw_sgd_direction(concept, negatives, seed=1)
    assert 0.6 < accuracy < 0.9
    assert fitted.accuracy == accuracy


def test_one_constant_set_is_not_degenerate(rng):
    # Only both sets being one and the same vector leaves the direction undefined.
    constant = np.ones((N_PER_SET, WIDTH))
    with warnings.catch_warnings():
        warnings.simplefilter("error", cav.WeakCAVWarning)
        fitted = cav.fit_cav(constant, rng.normal(size=(N_PER_SET, WIDTH)), method="sgd")
    assert not fitted.degenerate
    assert np.isfinite(fitted.direction).all()


def test_two_different_constant_sets_are_separable():
    fitted = cav.fit_cav(np.ones((10, 8)), np.zeros((10, 8)), method="sgd")
    assert not fitted.degenerate
    np.testing.assert_allclose(fitted.direction, np.full(8, 8**-0.5), atol=1e-12)
    assert fitted.accuracy == 1.0


def test_intercept_never_enters_direction(rng):
    concept, negatives, _ = _planted_sets(rng)
    offset = rng.normal(size=WIDTH) * 5.0
    plain = cav.fit_cav(concept, negatives, method="mean_difference")
    shifted = cav.fit_cav(concept + offset, negatives + offset, method="mean_difference")
    np.testing.assert_allclose(plain.direction, shifted.direction, atol=1e-10)
    assert plain.intercept != pytest.approx(shifted.intercept)


def test_seed_repeats_exactly(rng):
    concept, negatives, _ = _planted_sets(rng)
    first = cav.fit_cav(concept, negatives, method="sgd", seed=11)
    second = cav.fit_cav(concept, negatives, method="sgd", seed=11)
    assert np.array_equal(first.direction, second.direction)
    assert first.accuracy == second.accuracy


def test_fit_cavs_matches_fit_cav(rng):
    concept, negatives, _ = _planted_sets(rng)
    other = rng.normal(size=(N_PER_SET, WIDTH))
    sets = {"sea": concept, "random_00": negatives, "random_01": other}
    pairs = [("sea", "random_00"), ("sea", "random_01"), ("random_00", "random_01")]
    batch = cav.fit_cavs(sets, pairs, method="logistic", seed=5)
    for (first, second), fitted in zip(pairs, batch, strict=True):
        alone = cav.fit_cav(sets[first], sets[second], seed=5, concept=first, negative=second)
        np.testing.assert_allclose(fitted.direction, alone.direction, atol=1e-10)
        assert fitted.concept == first
        assert fitted.negative == second


def test_fit_cavs_order_does_not_matter(rng):
    concept, negatives, _ = _planted_sets(rng)
    other = rng.normal(size=(N_PER_SET, WIDTH))
    sets = {"sea": concept, "random_00": negatives, "random_01": other}
    pairs = [("sea", "random_00"), ("sea", "random_01")]
    forward = cav.fit_cavs(sets, pairs, method="sgd", seed=2)
    backward = cav.fit_cavs(sets, pairs[::-1], method="sgd", seed=2)
    assert np.array_equal(forward[0].direction, backward[1].direction)
    assert np.array_equal(forward[1].direction, backward[0].direction)


def _many_pairs(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """A planted concept, ten random sets, ten concept pairs and ten random pairs."""
    concept, _, _ = _planted_sets(rng)
    names = [f"random_{index:02d}" for index in range(10)]
    sets = {"sea": concept, **{name: rng.normal(size=(N_PER_SET, WIDTH)) for name in names}}
    pairs = [("sea", name) for name in names]
    pairs += [(name, names[(index + 1) % 10]) for index, name in enumerate(names)]
    return sets, pairs


def test_fit_cavs_threads_match_one_thread(rng):
    # With one BLAS thread the pairs are fitted one after another on the calling thread.
    sets, pairs = _many_pairs(rng)
    threaded = cav.fit_cavs(sets, pairs, method="sgd", seed=4)
    with threadpool_limits(limits=1, user_api="blas"):
        serial = cav.fit_cavs(sets, pairs, method="sgd", seed=4)
    for fitted, alone in zip(threaded, serial, strict=True):
        assert np.array_equal(fitted.direction, alone.direction)
        assert fitted.accuracy == alone.accuracy


def test_fit_cavs_error_stops_other_workers(rng, monkeypatch):
    sets, pairs = _many_pairs(rng)
    calls = []
    solve_pair = cav_module._solve_pair

    def failing(sets_, concept, negative, *args):
        calls.append((concept, negative))
        if (concept, negative) == pairs[0]:
            raise RuntimeError("planted failure")
        time.sleep(0.05)
        return solve_pair(sets_, concept, negative, *args)

    monkeypatch.setattr(cav_module, "_solve_pair", failing)
    with pytest.raises(RuntimeError, match="planted failure"):
        cav.fit_cavs(sets, pairs, method="sgd", seed=4)
    # The first pair fails at once. The other worker finishes the pair it is on and
    # stops, instead of fitting the rest of its 10 pairs.
    assert len(calls) < 5


def test_identical_activations_are_degenerate():
    same = np.ones((10, 8))
    with pytest.warns(cav.WeakCAVWarning, match="same vector"):
        fitted = cav.fit_cav(same, same.copy())
    assert fitted.degenerate
    assert np.isnan(fitted.direction).all()
    derivatives = cav.directional_derivatives(np.ones((5, 8)), fitted)
    assert np.isnan(cav.tcav_score(derivatives))


def test_primal_path_for_wide_sets(rng):
    # More images than dimensions: the raw activations are used directly.
    concept = rng.normal(size=(300, 5)) + np.array([2.0, 0, 0, 0, 0])
    negatives = rng.normal(size=(300, 5))
    fitted = cav.fit_cav(concept, negatives, method="logistic")
    assert fitted.direction[0] > 0.95


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "svm"}, "method='svm'"),
        ({"holdout": 1.0}, "holdout=1.0"),
        ({"concept": "same", "negative": "same"}, "different names"),
    ],
)
def test_fit_cav_rejects_bad_arguments(rng, kwargs, message):
    concept, negatives, _ = _planted_sets(rng)
    with pytest.raises(cav.InvalidArgumentError, match=message):
        cav.fit_cav(concept, negatives, **kwargs)


def test_fit_cav_rejects_single_image(rng):
    with pytest.raises(cav.InvalidArgumentError, match="1 rows; at least 2"):
        cav.fit_cav(rng.normal(size=(1, 4)), rng.normal(size=(5, 4)))


def test_fit_cav_rejects_nan(rng):
    concept = rng.normal(size=(5, 4))
    concept[2, 1] = np.nan
    with pytest.raises(cav.NonFiniteError, match="NaN or infinite"):
        cav.fit_cav(concept, rng.normal(size=(5, 4)))


def test_derivatives_of_linear_head_are_exact(rng):
    # For h(a) = w . a the gradient is w for every input, so S = w . v exactly.
    weights = rng.normal(size=WIDTH)
    concept, negatives, _ = _planted_sets(rng)
    fitted = cav.fit_cav(concept, negatives)
    gradients = np.tile(weights, (20, 1))
    derivatives = cav.directional_derivatives(gradients, fitted)
    np.testing.assert_allclose(derivatives, weights @ fitted.direction, rtol=1e-12)
    expected = 1.0 if weights @ fitted.direction > 0 else 0.0
    assert cav.tcav_score(derivatives) == expected


def test_tcav_score_counts_strictly_positive():
    derivatives = np.array([1.0, -2.0, 0.0, 3.0])
    assert cav.tcav_score(derivatives) == 0.5
    assert cav.zero_fraction(derivatives) == 0.25


def test_tcav_score_all_zero_is_nan():
    derivatives = np.zeros(7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(cav.tcav_score(derivatives))
        assert np.isnan(cav.magnitude_score(derivatives))
    assert cav.zero_fraction(derivatives) == 1.0


def test_magnitude_score_formula(rng):
    derivatives = rng.normal(size=50)
    expected = derivatives[derivatives > 0].sum() / np.abs(derivatives).sum()
    assert cav.magnitude_score(derivatives) == pytest.approx(expected, rel=1e-12)


def test_scores_per_column(rng):
    derivatives = rng.normal(size=(30, 4))
    derivatives[:, 2] = 0.0
    scores = cav.tcav_score(derivatives)
    assert scores.shape == (4,)
    assert np.isnan(scores[2])
    assert scores[0] == pytest.approx(np.mean(derivatives[:, 0] > 0))


def test_positive_scaling_leaves_scores(rng):
    concept, negatives, _ = _planted_sets(rng)
    gradients = rng.normal(size=(40, WIDTH))
    plain = cav.fit_cav(concept, negatives, method="mean_difference")
    scaled = cav.fit_cav(concept * 7.5, negatives * 7.5, method="mean_difference")
    score = cav.tcav_score(cav.directional_derivatives(gradients, plain))
    assert cav.tcav_score(cav.directional_derivatives(gradients, scaled)) == score
    assert cav.tcav_score(cav.directional_derivatives(gradients * 3.0, plain)) == score


def test_finite_check_survives_overflowing_sum():
    # The sum of these float32 values overflows to infinity, yet every value is finite.
    large = np.full((4, 3), 3e38, dtype=np.float32)
    assert check_activations("activations", large) is large
    large[1, 2] = np.inf
    with pytest.raises(cav.NonFiniteError, match="1 NaN or infinite values out of 12"):
        check_activations("activations", large)

"""Fitting concept activation vectors (CAVs).

A CAV is the unit normal of a linear classifier that separates the activations of a
concept's images (label 1) from those of a negative set (label 0) at one layer.

When a pair has fewer images than activation dimensions, which is the usual case (a few
hundred images against thousands of dimensions), the classifier is fitted in the sample
dimension: with the Gram matrix ``K = A A^T = U S U^T`` of the training activations ``A``,
the features ``Z = U S^(1/2)`` have the same inner products as ``A``. Logistic regression
with an L2 penalty, hinge-loss SGD with an L2 penalty and the perceptron all depend on the
data only through inner products, and they keep their weights in the span of the data.
The classifier fitted on ``Z`` with coefficients ``beta`` is therefore the one fitted on
``A``, with weights ``w = A^T U S^(-1/2) beta``. Its cost grows with the square of the number of
images instead of with the layer width times the number of iterations, and the Gram
blocks of image sets shared by several pairs are computed once (:func:`fit_cavs`).
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from cav._checks import check_activations, check_choice
from cav.errors import InvalidArgumentError, WeakCAVWarning

logger = logging.getLogger(__name__)

METHODS = ("logistic", "sgd", "perceptron", "mean_difference")

# Eigenvalues of a Gram matrix below this fraction of the largest are rounding noise of the
# float32 products that built it, not directions that the data spans.
_EIGENVALUE_CUTOFF = 1e-6


@dataclass(frozen=True, eq=False)
class CAV:
    """A concept activation vector and how it was fitted.

    Attributes
    ----------
    direction : numpy.ndarray of shape (d,)
        Unit L2-norm normal of the separating hyperplane, pointing toward the concept.
        All NaN when ``degenerate`` is true.
    accuracy : float
        Balanced accuracy on the held-out split; NaN when no images were held out.
    method : str
        Classifier that produced the direction (see :data:`METHODS`).
    concept, negative : str
        Names of the concept set and of the negative (random) set.
    layer : str or None
        Layer whose activations were used.
    n_concept, n_negative : int
        Number of images in each set, held-out images included.
    seed : int or None
        Seed of the split and of the classifier.
    intercept : float
        Intercept on the scale of the unit direction: the classifier's decision function is
        ``activations @ direction + intercept``. It never enters ``direction``.
    degenerate : bool
        True when the two sets cannot be separated because every activation vector of both
        sets is the same; the direction is then undefined.
    """

    direction: np.ndarray = field(repr=False)
    accuracy: float
    method: str
    concept: str = "concept"
    negative: str = "negative"
    layer: str | None = None
    n_concept: int = 0
    n_negative: int = 0
    seed: int | None = None
    intercept: float = 0.0
    degenerate: bool = False


def fit_cav(
    concept_activations: np.ndarray,
    negative_activations: np.ndarray,
    method: str = "logistic",
    seed: int = 0,
    holdout: float = 0.33,
    concept: str = "concept",
    negative: str = "negative",
    layer: str | None = None,
) -> CAV:
    """Fit the CAV that separates a concept's activations from a negative set's.

    Parameters
    ----------
    concept_activations : numpy.ndarray of shape (n_c, d)
        Activations of the concept images at one layer, one row per image.
    negative_activations : numpy.ndarray of shape (n_n, d)
        Activations of the negative (random) images at the same layer.
    method : {"logistic", "sgd", "perceptron", "mean_difference"}
        ``"logistic"``: L2-penalised logistic regression (C = 1). ``"sgd"``: linear SVM
        by stochastic gradient descent (hinge loss, alpha = 0.01, up to 1,000 epochs,
        tol = 1e-3), the choice of the TCAV reference implementations. ``"perceptron"``:
        unpenalised perceptron with a constant learning rate of 1, the cav-keras choice.
        ``"mean_difference"``: the difference of the two sets' mean activations.
    seed : int
        Seed of the stratified held-out split and of the classifier.
    holdout : float
        Fraction of each set held out to measure the CAV's balanced accuracy, in [0, 1).
        With 0 every image is used for fitting and ``accuracy`` is NaN.
    concept, negative, layer : str
        Names stored on the result.

    Returns
    -------
    CAV
        ``direction`` has shape (d,) and unit norm and points toward the concept.
    """
    if concept == negative:
        raise InvalidArgumentError(
            f"concept and negative must have different names; both are {concept!r}"
        )
    activations = {concept: concept_activations, negative: negative_activations}
    return fit_cavs(activations, [(concept, negative)], method, seed, holdout, layer)[0]


def fit_cavs(
    activations: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    method: str = "logistic",
    seed: int = 0,
    holdout: float = 0.33,
    layer: str | None = None,
) -> list[CAV]:
    """Fit one CAV per (concept, negative) pair of image sets at one layer.

    The inner products between image sets are computed once and shared by every pair that
    uses them, so fitting ``R`` concept runs and many null runs at a layer costs little
    more than one pass over the activations. Each pair's seed is derived from ``seed`` and
    the two set names, so the result for a pair does not depend on its position in
    ``pairs``.

    Parameters
    ----------
    activations : mapping of str to numpy.ndarray of shape (n_i, d)
        Activations of each image set at the layer.
    pairs : sequence of (str, str)
        (concept name, negative name) keys of ``activations``.
    method, seed, holdout, layer
        As in :func:`fit_cav`.

    Returns
    -------
    list of CAV
        One per pair, in the order of ``pairs``.
    """
    check_choice("method", method, METHODS)
    if not 0.0 <= holdout < 1.0:
        raise InvalidArgumentError(f"holdout={holdout!r} must lie in [0, 1)")
    checked = _check_pairs(activations, pairs)
    gram = _GramBlocks(checked)
    cavs = []
    for concept, negative in pairs:
        pair_seed = pair_seed_of(seed, concept, negative)
        cavs.append(_fit_pair(checked, gram, concept, negative, method, pair_seed, holdout, layer))
    return cavs


def pair_seed_of(seed: int, concept: str, negative: str) -> int:
    """Derive a 32-bit seed for one pair from the call's seed and the two set names."""
    entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(concept.encode()), zlib.crc32(negative.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _check_pairs(
    activations: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]]
) -> dict[str, np.ndarray]:
    if len(pairs) == 0:
        raise InvalidArgumentError("pairs is empty; give at least one (concept, negative) pair")
    used: list[str] = []
    for pair in pairs:
        if len(pair) != 2:
            raise InvalidArgumentError(f"pairs must hold (concept, negative) tuples; got {pair!r}")
        concept, negative = pair
        for name in pair:
            if name not in activations:
                raise InvalidArgumentError(
                    f"pair {pair!r} names {name!r}, which is not a key of activations "
                    f"(keys: {sorted(activations)})"
                )
        if concept == negative:
            raise InvalidArgumentError(f"pair {pair!r} fits a set against itself")
        used.extend(pair)
    checked = {
        name: check_activations(f"activations[{name!r}]", activations[name])
        for name in dict.fromkeys(used)
    }
    widths = {name: array.shape[1] for name, array in checked.items()}
    if len(set(widths.values())) > 1:
        raise InvalidArgumentError(
            f"activation sets have different widths {widths}; they must come from one layer"
        )
    return checked


class _GramBlocks:
    """Inner products between image sets, computed on first use and kept."""

    def __init__(self, activations: Mapping[str, np.ndarray]) -> None:
        self._activations = activations
        self._blocks: dict[tuple[str, str], np.ndarray] = {}

    def block(self, first: str, second: str) -> np.ndarray:
        """Return ``A_first @ A_second.T`` in float64, of shape (n_first, n_second)."""
        key = (first, second)
        if key not in self._blocks:
            if (second, first) in self._blocks:
                return self._blocks[(second, first)].T
            left = self._activations[first]
            right = self._activations[second]
            dtype = np.result_type(left.dtype, right.dtype)
            product = left.astype(dtype, copy=False) @ right.astype(dtype, copy=False).T
            self._blocks[key] = product.astype(np.float64, copy=False)
        return self._blocks[key]

    def pair(self, first: str, second: str) -> np.ndarray:
        """Return the Gram matrix of the two sets stacked, first set's rows first."""
        return np.block(
            [
                [self.block(first, first), self.block(first, second)],
                [self.block(second, first), self.block(second, second)],
            ]
        )


def _fit_pair(
    activations: Mapping[str, np.ndarray],
    gram: _GramBlocks,
    concept: str,
    negative: str,
    method: str,
    seed: int,
    holdout: float,
    layer: str | None,
) -> CAV:
    concept_acts = activations[concept]
    negative_acts = activations[negative]
    n_concept, n_negative = len(concept_acts), len(negative_acts)
    labels = np.concatenate([np.ones(n_concept, np.int64), np.zeros(n_negative, np.int64)])
    train, test = _split(labels, holdout, seed)

    def describe(direction: np.ndarray, intercept: float, accuracy: float) -> CAV:
        degenerate = not np.isfinite(direction).all()
        if degenerate:
            warnings.warn(
                f"every activation of {concept!r} and {negative!r} at layer {layer!r} is the "
                "same vector, so no direction separates them; the CAV and its scores are NaN",
                WeakCAVWarning,
                stacklevel=4,
            )
        return CAV(
            direction=direction,
            accuracy=accuracy,
            method=method,
            concept=concept,
            negative=negative,
            layer=layer,
            n_concept=n_concept,
            n_negative=n_negative,
            seed=seed,
            intercept=intercept,
            degenerate=degenerate,
        )

    if method == "mean_difference":
        weights, intercept = _mean_difference(concept_acts, negative_acts, labels, train)
        return describe(*_finish(weights, intercept, concept_acts, negative_acts, labels, test))

    n_train = len(train)
    width = concept_acts.shape[1]
    if n_train < width:
        pair_gram = gram.pair(concept, negative)
        weights, intercept = _fit_dual(
            pair_gram, concept_acts, negative_acts, labels, train, method, seed
        )
    else:
        stacked = np.concatenate([concept_acts, negative_acts]).astype(np.float64)
        weights, intercept = _fit_primal(stacked, labels, train, method, seed)
    return describe(*_finish(weights, intercept, concept_acts, negative_acts, labels, test))


def _split(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    indices = np.arange(len(labels))
    if holdout == 0.0:
        return indices, indices[:0]
    n_test = int(np.ceil(holdout * len(labels)))
    if n_test < 2 or len(labels) - n_test < 2:
        # Too few images for a stratified split: fit on all and report no accuracy.
        return indices, indices[:0]
    train, test = train_test_split(indices, test_size=n_test, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def _make_classifier(method: str, seed: int) -> LogisticRegression | SGDClassifier:
    if method == "logistic":
        return LogisticRegression(C=1.0, max_iter=1000)
    if method == "sgd":
        return SGDClassifier(loss="hinge", alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed)
    return SGDClassifier(
        loss="perceptron", eta0=1.0, learning_rate="constant", penalty=None, random_state=seed
    )


def _fit_classifier(
    features: np.ndarray, labels: np.ndarray, method: str, seed: int
) -> tuple[np.ndarray, float]:
    classifier = _make_classifier(method, seed)
    with warnings.catch_warnings():
        # Slow convergence on separable data is common and harmless for the direction;
        # it is logged instead of shown to the user.
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(features, labels)
    if getattr(classifier, "n_iter_", None) is not None:
        logger.debug("%s classifier ran %s iterations", method, classifier.n_iter_)
    # classes_ is sorted, so positive coefficients favour label 1, the concept.
    return classifier.coef_[0].astype(np.float64), float(classifier.intercept_[0])


def _fit_dual(
    pair_gram: np.ndarray,
    concept_acts: np.ndarray,
    negative_acts: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    method: str,
    seed: int,
) -> tuple[np.ndarray, float]:
    train_gram = pair_gram[np.ix_(train, train)]
    # The eigendecomposition and the fit solve small problems (a few hundred samples), on
    # which threaded BLAS only adds synchronisation: on a busy 2-core machine it made them
    # about 40 times slower. The large Gram products above keep every thread.
    with threadpool_limits(limits=1, user_api="blas"):
        eigenvalues, eigenvectors = np.linalg.eigh(train_gram)
        largest = eigenvalues[-1]
        if largest <= 0.0:
            return np.zeros(concept_acts.shape[1]), 0.0
        keep = eigenvalues > largest * _EIGENVALUE_CUTOFF
        scale = np.sqrt(eigenvalues[keep])
        basis = eigenvectors[:, keep]
        features = basis * scale
        beta, intercept = _fit_classifier(features, labels[train], method, seed)

    # w = A_train^T U S^(-1/2) beta, written as one coefficient per image of each set.
    coefficients = np.zeros(len(labels))
    coefficients[train] = basis @ (beta / scale)
    n_concept = len(concept_acts)
    weights = coefficients[:n_concept] @ concept_acts + coefficients[n_concept:] @ negative_acts
    return np.asarray(weights, dtype=np.float64), intercept


def _fit_primal(
    stacked: np.ndarray, labels: np.ndarray, train: np.ndarray, method: str, seed: int
) -> tuple[np.ndarray, float]:
    return _fit_classifier(stacked[train], labels[train], method, seed)


def _mean_difference(
    concept_acts: np.ndarray, negative_acts: np.ndarray, labels: np.ndarray, train: np.ndarray
) -> tuple[np.ndarray, float]:
    n_concept = len(concept_acts)
    concept_rows = train[train < n_concept]
    negative_rows = train[train >= n_concept] - n_concept
    concept_mean = concept_acts[concept_rows].mean(axis=0, dtype=np.float64)
    negative_mean = negative_acts[negative_rows].mean(axis=0, dtype=np.float64)
    weights = concept_mean - negative_mean
    # The decision threshold lies halfway between the two means.
    intercept = -float(weights @ (concept_mean + negative_mean)) / 2.0
    return weights, intercept


def _finish(
    weights: np.ndarray,
    intercept: float,
    concept_acts: np.ndarray,
    negative_acts: np.ndarray,
    labels: np.ndarray,
    test: np.ndarray,
) -> tuple[np.ndarray, float, float]:
    """Normalise the weights and measure balanced accuracy on the held-out images."""
    norm = float(np.linalg.norm(weights))
    if norm == 0.0 or _all_rows_equal(concept_acts, negative_acts):
        return np.full(weights.shape, np.nan), float("nan"), float("nan")
    direction = weights / norm
    unit_intercept = intercept / norm
    if len(test) == 0:
        return direction, unit_intercept, float("nan")
    n_concept = len(concept_acts)
    test_concept = test[test < n_concept]
    test_negative = test[test >= n_concept] - n_concept
    decision = np.concatenate(
        [concept_acts[test_concept] @ direction, negative_acts[test_negative] @ direction]
    )
    predicted = (decision + unit_intercept > 0).astype(np.int64)
    return direction, unit_intercept, float(balanced_accuracy_score(labels[test], predicted))


def _all_rows_equal(concept_acts: np.ndarray, negative_acts: np.ndarray) -> bool:
    reference = concept_acts[0]
    return bool(np.all(concept_acts == reference) and np.all(negative_acts == reference))

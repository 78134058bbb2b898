"""Fitting concept activation vectors (CAVs).

A CAV is the unit normal of a linear classifier that separates the activations of a
concept's images (label 1) from those of a negative set (label 0) at one layer.

When a pair has fewer images than activation dimensions, which is the usual case (a few
hundred images against thousands of dimensions), the classifier is fitted in the sample
dimension. The Gram matrix of the training activations ``A`` has a Cholesky factor,
``K = A A^T = L L^T``, so the rows of ``Z = L`` have the same inner products as the rows
of ``A``. Logistic regression with an L2 penalty, hinge-loss SGD with an L2 penalty and
the perceptron depend on the data only through inner products, and they keep their
weights in the span of the data. The classifier fitted on ``Z``, with weights ``beta``,
is therefore the one fitted on ``A``, with weights ``w = A^T c`` where ``L^T c = beta``.
When ``K`` is singular (repeated images), ``Z`` comes from its eigenvectors instead.

This costs the Gram products plus a fit whose size grows with the square of the number
of images, not with the layer width times the number of iterations. The Gram blocks of
image sets shared by several pairs are computed once (:func:`fit_cavs`), and the
held-out images' decision values come from them too.
"""

from __future__ import annotations

import logging
import threading
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import sklearn
from scipy.linalg import LinAlgWarning, solve_triangular
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import train_test_split
from threadpoolctl import ThreadpoolController

from cav._checks import check_activations, check_choice
from cav.errors import InvalidArgumentError, WeakCAVWarning

logger = logging.getLogger(__name__)

METHODS = ("logistic", "sgd", "perceptron", "mean_difference")

FIT_REVISION = 2
"""Revision of the fitting code, part of the cache key of every stored CAV.

CAVs that another revision stored are fitted again. Revision 2 (Cholesky features,
Newton-Cholesky logistic regression) moved the directions of the benchmark CNN by up to
2e-5 in cosine from revision 1's."""

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
        ``"logistic"``: L2-penalised logistic regression (C = 1), solved to its minimum
        by Newton-Cholesky steps. ``"sgd"``: linear SVM
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
    sets = _ImageSets(checked)
    seeds = [pair_seed_of(seed, concept, negative) for concept, negative in pairs]
    solutions = _solve_pairs(sets, pairs, method, seeds, holdout)

    cavs = []
    for (concept, negative), pair_seed, solution in zip(pairs, seeds, solutions, strict=True):
        direction, unit_intercept, accuracy = _finish(
            solution.weights, solution.intercept, solution.decisions, solution.test_labels
        )
        degenerate = not np.isfinite(direction).all()
        if degenerate:
            warnings.warn(
                f"every activation of {concept!r} and {negative!r} at layer {layer!r} is the "
                "same vector, so no direction separates them; the CAV and its scores are NaN",
                WeakCAVWarning,
                stacklevel=3,
            )
        cavs.append(
            CAV(
                direction=direction,
                accuracy=accuracy,
                method=method,
                concept=concept,
                negative=negative,
                layer=layer,
                n_concept=len(checked[concept]),
                n_negative=len(checked[negative]),
                seed=pair_seed,
                intercept=unit_intercept,
                degenerate=degenerate,
            )
        )
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


class _ImageSets:
    """The activation sets of one :func:`fit_cavs` call, and what is computed once per set.

    The inner products between sets are computed on first use and kept, so a set shared
    by several pairs costs one product per partner. Whether a set's rows are all one vector
    is also kept.
    """

    def __init__(self, activations: Mapping[str, np.ndarray]) -> None:
        self.activations = activations
        self._blocks: dict[tuple[str, str], np.ndarray] = {}
        self._constant = {name: _is_constant(rows) for name, rows in activations.items()}
        # The small per-pair problems (a few hundred samples) run on one BLAS thread:
        # threaded BLAS only adds synchronisation there, and on a busy 2-core machine it
        # made them about 40 times slower. The large Gram products keep every thread.
        # Finding the loaded BLAS libraries reads /proc/self/maps, so it happens once
        # per call, and each pair only enters the limit.
        self.blas = ThreadpoolController()

    def blas_threads(self) -> int:
        """Return the number of threads that the loaded BLAS libraries may use, at least 1."""
        counts = [info["num_threads"] for info in self.blas.select(user_api="blas").info()]
        return max([1, *counts])

    def labels(self, concept: str, negative: str) -> np.ndarray:
        """Return the labels of the two sets stacked: 1 for the concept, 0 for the negative."""
        n_concept, n_negative = len(self.activations[concept]), len(self.activations[negative])
        return np.concatenate([np.ones(n_concept, np.int64), np.zeros(n_negative, np.int64)])

    def compute_blocks(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Compute the Gram blocks of ``pairs`` now, so that fits on threads only read them."""
        for first, second in pairs:
            for key in ((first, first), (first, second), (second, second)):
                self.block(*key)

    def block(self, first: str, second: str) -> np.ndarray:
        """Return ``A_first @ A_second.T`` in float64, of shape (n_first, n_second)."""
        key = (first, second)
        if key not in self._blocks:
            if (second, first) in self._blocks:
                return self._blocks[(second, first)].T
            left = self.activations[first]
            right = self.activations[second]
            dtype = np.result_type(left.dtype, right.dtype)
            product = left.astype(dtype, copy=False) @ right.astype(dtype, copy=False).T
            self._blocks[key] = product.astype(np.float64, copy=False)
        return self._blocks[key]

    def pair_gram(self, first: str, second: str) -> np.ndarray:
        """Return the Gram matrix of the two sets stacked, first set's rows first."""
        n_first = len(self.activations[first])
        n_total = n_first + len(self.activations[second])
        stacked = np.empty((n_total, n_total))
        stacked[:n_first, :n_first] = self.block(first, first)
        stacked[:n_first, n_first:] = self.block(first, second)
        stacked[n_first:, :n_first] = self.block(second, first)
        stacked[n_first:, n_first:] = self.block(second, second)
        return stacked

    def one_vector(self, first: str, second: str) -> bool:
        """Return whether every row of both sets is the same vector."""
        return (
            self._constant[first]
            and self._constant[second]
            and np.array_equal(self.activations[first][0], self.activations[second][0])
        )


def _is_constant(rows: np.ndarray) -> bool:
    # Comparing two rows first settles the usual case without a pass over the set.
    return len(rows) < 2 or bool(np.array_equal(rows[1], rows[0]) and np.all(rows == rows[0]))


@dataclass
class _Solution:
    """A fitted pair before its weights are normalised: the classifier's weights (d,) and
    intercept, and the decision values and labels of the held-out images."""

    weights: np.ndarray
    intercept: float
    decisions: np.ndarray
    test_labels: np.ndarray


def _solve_pairs(
    sets: _ImageSets,
    pairs: Sequence[tuple[str, str]],
    method: str,
    seeds: Sequence[int],
    holdout: float,
) -> list[_Solution]:
    """Fit every pair, on as many threads as BLAS may use, each with one BLAS thread.

    The Gram blocks are computed first, with every BLAS thread. The per-pair fits are
    small (a few hundred samples): on one thread each, several run at once, and
    scikit-learn's SGD and numpy's linear algebra release the GIL while they work.
    """
    splits = [
        _split(sets.labels(concept, negative), holdout, seed)
        for (concept, negative), seed in zip(pairs, seeds, strict=True)
    ]
    duals = [
        index
        for index, ((concept, negative), (train, _)) in enumerate(zip(pairs, splits, strict=True))
        if _fits_in_sample_dimension(sets, concept, negative, method, train)
    ]
    sets.compute_blocks([pairs[index] for index in duals])

    def solve(index: int) -> _Solution:
        concept, negative = pairs[index]
        train, test = splits[index]
        return _solve_pair(sets, concept, negative, method, seeds[index], train, test)

    n_workers = min(len(pairs), sets.blas_threads())
    # scikit-learn's configuration is local to a thread, so every worker enters it. The
    # activations were checked by the caller and the classifiers' settings are constants,
    # so scikit-learn's own checks are skipped: they cost about 0.2 s for 160 pairs.
    config = {"assume_finite": True, "skip_parameter_validation": True}

    # Set when the caller's thread stops waiting (an error or Ctrl-C), so that the other
    # workers stop after their current pair instead of finishing their chunks.
    stop = threading.Event()

    def solve_chunk(indices: Sequence[int]) -> list[_Solution]:
        solved = []
        with sklearn.config_context(**config):
            for index in indices:
                if stop.is_set():
                    break
                solved.append(solve(index))
        return solved

    chunks = [range(worker, len(pairs), n_workers) for worker in range(n_workers)]
    solutions: list[_Solution | None] = [None] * len(pairs)
    # Warning filters are global to the process, so they are set here, once, and not in
    # each thread. Slow convergence on separable data is common and harmless for the
    # direction, so it is not shown, and the iteration count is logged instead. On an
    # ill-conditioned Hessian (such as all-zero features), scikit-learn's Newton solver
    # warns and finishes with L-BFGS, which needs nothing from the user.
    with warnings.catch_warnings(), sets.blas.limit(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", LinAlgWarning)
        if n_workers == 1:
            results = [solve_chunk(chunks[0])]
        else:
            with ThreadPoolExecutor(max_workers=n_workers) as pool:
                futures = [pool.submit(solve_chunk, chunk) for chunk in chunks]
                try:
                    results = [future.result() for future in futures]
                except BaseException:
                    stop.set()
                    raise
    for chunk, chunk_solutions in zip(chunks, results, strict=True):
        for index, solution in zip(chunk, chunk_solutions, strict=True):
            solutions[index] = solution
    return [solution for solution in solutions if solution is not None]


def _fits_in_sample_dimension(
    sets: _ImageSets, concept: str, negative: str, method: str, train: np.ndarray
) -> bool:
    width = sets.activations[concept].shape[1]
    return (
        method != "mean_difference"
        and len(train) < width
        and not sets.one_vector(concept, negative)
    )


def _solve_pair(
    sets: _ImageSets,
    concept: str,
    negative: str,
    method: str,
    seed: int,
    train: np.ndarray,
    test: np.ndarray,
) -> _Solution:
    concept_acts = sets.activations[concept]
    negative_acts = sets.activations[negative]
    labels = sets.labels(concept, negative)
    test_labels = labels[test]
    if sets.one_vector(concept, negative):
        width = concept_acts.shape[1]
        return _Solution(np.zeros(width), 0.0, np.zeros(len(test)), test_labels)
    if method == "mean_difference":
        weights, intercept = _mean_difference(concept_acts, negative_acts, labels, train)
        decisions = _decisions(weights, concept_acts, negative_acts, test)
        return _Solution(weights, intercept, decisions, test_labels)
    if _fits_in_sample_dimension(sets, concept, negative, method, train):
        return _fit_dual(sets, concept, negative, labels, train, test, method, seed)
    stacked = np.concatenate([concept_acts, negative_acts]).astype(np.float64)
    weights, intercept = _fit_classifier(stacked[train], labels[train], method, seed)
    decisions = _decisions(weights, concept_acts, negative_acts, test)
    return _Solution(weights, intercept, decisions, test_labels)


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
        # The penalised loss has one minimum, and Newton steps reach it in a few iterations
        # on the few hundred features of a sample-dimension fit. On the benchmark CNN's
        # layers they were 1.7 times faster than L-BFGS at its default tolerance, and their
        # directions were within 1e-11 of the minimum's in cosine, against 6e-5 for L-BFGS.
        return LogisticRegression(C=1.0, max_iter=1000, tol=1e-8, solver="newton-cholesky")
    if method == "sgd":
        return SGDClassifier(loss="hinge", alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed)
    return SGDClassifier(
        loss="perceptron", eta0=1.0, learning_rate="constant", penalty=None, random_state=seed
    )


def _fit_classifier(
    features: np.ndarray, labels: np.ndarray, method: str, seed: int
) -> tuple[np.ndarray, float]:
    """Fit the classifier. The caller sets the warning filters (see :func:`_solve_pairs`)."""
    classifier = _make_classifier(method, seed)
    classifier.fit(features, labels)
    if getattr(classifier, "n_iter_", None) is not None:
        logger.debug("%s classifier ran %s iterations", method, classifier.n_iter_)
    # classes_ is sorted, so positive coefficients favour label 1, the concept.
    return classifier.coef_[0].astype(np.float64), float(classifier.intercept_[0])


def _fit_dual(
    sets: _ImageSets,
    concept: str,
    negative: str,
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    method: str,
    seed: int,
) -> _Solution:
    """Fit the classifier in the sample dimension, as the module docstring describes.

    The decision values ``a @ weights`` of the held-out images come from the Gram matrix,
    not from ``a``.
    """
    pair_gram = sets.pair_gram(concept, negative)
    features, to_coefficients = _gram_features(pair_gram[np.ix_(train, train)])
    beta, intercept = _fit_classifier(features, labels[train], method, seed)
    # The weights are w = A_train^T coefficients: one coefficient per training image.
    train_coefficients = to_coefficients(beta)
    decisions = pair_gram[np.ix_(test, train)] @ train_coefficients

    coefficients = np.zeros(len(labels))
    coefficients[train] = train_coefficients
    n_concept = len(sets.activations[concept])
    weights = np.zeros(sets.activations[concept].shape[1])
    for rows, acts in (
        (coefficients[:n_concept], sets.activations[concept]),
        (coefficients[n_concept:], sets.activations[negative]),
    ):
        # One product per pair, so that a pair's weights do not depend on which other
        # pairs are fitted in the same call. It is taken in the activations' own dtype,
        # because a float64 vector makes numpy copy a float32 (n, d) matrix to float64
        # first: about ten times the cost of the product itself.
        weights += rows.astype(acts.dtype) @ acts
    return _Solution(weights, intercept, decisions, labels[test])


def _gram_features(
    train_gram: np.ndarray,
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Return features ``Z`` with ``Z Z^T = train_gram`` and a map from weights to coefficients.

    The map takes weights on ``Z`` to one coefficient per training image. ``Z`` is the
    Cholesky factor when the matrix is positive definite, the usual case with fewer images
    than dimensions. Otherwise it is built from the eigenvectors whose eigenvalues exceed
    the float32 rounding of the largest.
    """
    try:
        factor = np.linalg.cholesky(train_gram)
    except np.linalg.LinAlgError:
        pass
    else:
        # w = A^T L^(-T) beta, so the coefficients solve L^T c = beta.
        return factor, lambda beta: solve_triangular(factor, beta, trans="T", lower=True)
    eigenvalues, eigenvectors = np.linalg.eigh(train_gram)
    largest = float(eigenvalues[-1])
    if largest <= 0.0:
        # Every training activation is zero, and so are the features and the weights.
        n_train = len(train_gram)
        return np.zeros((n_train, 1)), lambda beta: np.zeros(n_train)
    keep = eigenvalues > largest * _EIGENVALUE_CUTOFF
    scale = np.sqrt(eigenvalues[keep])
    basis = eigenvectors[:, keep]
    return basis * scale, lambda beta: basis @ (beta / scale)


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


def _decisions(
    weights: np.ndarray, concept_acts: np.ndarray, negative_acts: np.ndarray, test: np.ndarray
) -> np.ndarray:
    """Return ``a @ weights`` for the held-out images ``test`` of the stacked sets."""
    n_concept = len(concept_acts)
    return np.concatenate(
        [
            concept_acts[test[test < n_concept]] @ weights,
            negative_acts[test[test >= n_concept] - n_concept] @ weights,
        ]
    )


def _finish(
    weights: np.ndarray, intercept: float, decisions: np.ndarray, test_labels: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """Normalise the weights and measure balanced accuracy on the held-out images."""
    norm = float(np.linalg.norm(weights))
    if norm == 0.0:
        return np.full(weights.shape, np.nan), float("nan"), float("nan")
    direction = weights / norm
    unit_intercept = intercept / norm
    if len(test_labels) == 0:
        return direction, unit_intercept, float("nan")
    predicted = (decisions + intercept > 0).astype(np.int64)
    # Balanced accuracy: the mean over the classes present of the share predicted right.
    recalls = [
        np.mean(predicted[test_labels == value] == value)
        for value in (0, 1)
        if np.any(test_labels == value)
    ]
    return direction, unit_intercept, float(np.mean(recalls))

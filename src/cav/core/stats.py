"""Statistics of TCAV scores: intervals, tests against random sets, and corrections.

Two tests compare a concept's scores with scores of CAVs trained on random sets only.

``"ttest"``
    The two-sided t-test of the TCAV paper (Kim et al., ICML 2018): the ``R`` concept
    scores (concept against each random set) against ``R`` null scores (random set against
    random set). The ``R`` concept runs share one concept set, so their spread misses the
    variation between concept sets, and the test rejects too often when the concept is
    just another random set.
``"calibrated"``
    A round-robin test at the level of image sets (:func:`round_robin_matrix`,
    :func:`set_statistics`, :func:`calibrated_test`). The concept set is compared with
    each random set used as a pseudo-concept, in the same way, so the ``R + 1`` set
    statistics are exchangeable when the concept is a random set.

All functions take and return numpy values and never import a deep-learning framework.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from cav._checks import check_choice
from cav.errors import InvalidArgumentError

TESTS = ("calibrated", "ttest")
# Pair statistics the calibrated test can compare between sets.
STATISTICS = ("cosine", "score")
TTEST_VARIANTS = ("welch", "student")
CORRECTIONS = ("holm", "bonferroni", "none")

# The smallest number of random sets each test needs for a p-value.
MIN_RANDOM_SETS = {"ttest": 2, "calibrated": 3}


@dataclass(frozen=True)
class TestResult:
    """Outcome of one test of a concept against random sets.

    Attributes
    ----------
    statistic : float
        The t statistic; NaN when the test could not be run.
    df : float
        Degrees of freedom of the t distribution used for ``p_value``.
    p_value : float
        Two-sided p-value, uncorrected; NaN when the test could not be run.
    rank_p_value : float
        Exact permutation p-value of the calibrated test; NaN for the t-test.
    note : str
        Why the p-value is NaN, or an empty string.
    """

    __test__ = False  # Keeps pytest from collecting this class as a test case.

    statistic: float
    df: float
    p_value: float
    rank_p_value: float = math.nan
    note: str = ""


def mean_interval(
    values: np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float, float]:
    """Return the mean, the sample standard deviation and the t-interval of the mean.

    ``mean = sum(x) / n``, ``sd = sqrt(sum((x - mean)^2) / (n - 1))`` and the interval is
    ``mean -+ t_{(1 + confidence) / 2, n - 1} * sd / sqrt(n)``, where ``t_{q, k}`` is the
    ``q`` quantile of Student's t distribution with ``k`` degrees of freedom.

    Parameters
    ----------
    values : numpy.ndarray of shape (n,)
        Finite values; NaN entries are dropped first.
    confidence : float
        Coverage of the interval, in (0, 1).

    Returns
    -------
    tuple of 4 floats
        ``(mean, sd, low, high)``. The mean is NaN when no value is finite; ``sd``,
        ``low`` and ``high`` are NaN when fewer than two are.
    """
    if not 0.0 < confidence < 1.0:
        raise InvalidArgumentError(f"confidence={confidence!r} must lie in (0, 1)")
    array = np.asarray(values, dtype=np.float64).ravel()
    finite = array[~np.isnan(array)]
    n = finite.size
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(finite.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(finite.std(ddof=1))
    half_width = float(scipy_stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half_width, mean + half_width


def ttest_scores(
    concept_scores: np.ndarray, null_scores: np.ndarray, variant: str = "welch"
) -> TestResult:
    """Run the TCAV paper's two-sided t-test of concept scores against null scores.

    With sample means ``m_c, m_0``, sample variances ``v_c, v_0`` (``n - 1`` in the
    denominator) and sizes ``n_c, n_0``:

    - ``"welch"``: ``t = (m_c - m_0) / sqrt(v_c / n_c + v_0 / n_0)`` with the
      Welch-Satterthwaite degrees of freedom
      ``(v_c / n_c + v_0 / n_0)^2 / ((v_c / n_c)^2 / (n_c - 1) + (v_0 / n_0)^2 / (n_0 - 1))``.
    - ``"student"``: ``t = (m_c - m_0) / sqrt(v_p (1 / n_c + 1 / n_0))`` with the pooled
      variance ``v_p = ((n_c - 1) v_c + (n_0 - 1) v_0) / (n_c + n_0 - 2)`` and
      ``n_c + n_0 - 2`` degrees of freedom.

    ``p = 2 * P(T_df > |t|)``, computed by :func:`scipy.stats.ttest_ind`.

    Parameters
    ----------
    concept_scores : numpy.ndarray of shape (n_c,)
        TCAV scores of the concept runs.
    null_scores : numpy.ndarray of shape (n_0,)
        TCAV scores of the random-against-random runs.
    variant : {"welch", "student"}
        Unequal (Welch) or pooled (Student) variances.

    Returns
    -------
    TestResult
        NaN p-value with a note when a score is NaN or a sample is too small.
    """
    check_choice("ttest", variant, TTEST_VARIANTS)
    concept = np.asarray(concept_scores, dtype=np.float64).ravel()
    null = np.asarray(null_scores, dtype=np.float64).ravel()
    if np.isnan(concept).any() or np.isnan(null).any():
        return _not_tested("some TCAV scores are undefined (NaN)")
    minimum = 2 if variant == "welch" else 1
    if concept.size < 2 or null.size < minimum or concept.size + null.size < 3:
        return _not_tested(
            f"the t-test needs at least 2 concept runs and {minimum} null run(s); "
            f"got {concept.size} and {null.size}"
        )
    if np.ptp(concept) == 0 and np.ptp(null) == 0:
        if concept[0] == null[0]:
            return _not_tested("every concept and null score is the same value")
        # Two constant samples that differ: the t statistic is infinite.
        df = float(concept.size + null.size - 2)
        return TestResult(math.copysign(math.inf, concept[0] - null[0]), df, 0.0)
    with warnings.catch_warnings():
        # scipy warns about precision loss when a sample is constant, as concept scores
        # of exactly 1.0 often are. The variance it computes is then exactly 0.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = scipy_stats.ttest_ind(concept, null, equal_var=variant == "student")
    return TestResult(float(result.statistic), float(result.df), float(result.pvalue))


def round_robin_matrix(
    concept_scores: np.ndarray,
    concept_zero_shares: np.ndarray,
    null_scores: np.ndarray,
    null_zero_shares: np.ndarray,
) -> np.ndarray:
    """Assemble the scores of every ordered pair of the concept and ``R`` random sets.

    Set 0 is the concept ``C`` and set ``i + 1`` the random set ``N_i``. Entry ``[x, y]``
    is ``s(X, Y)``, the TCAV score of the CAV that points from set ``Y`` toward set ``X``.
    Reversing a pair negates the CAV and every derivative, so a derivative that was
    positive becomes negative and exact zeros stay zero:

        ``s(Y, X) = 1 - s(X, Y) - z(X, Y)``,

    where ``z`` is the share of derivatives that are exactly zero. Pairs that were fitted
    in one orientation only are completed with this identity; an orientation given
    directly is kept.

    Parameters
    ----------
    concept_scores, concept_zero_shares : numpy.ndarray of shape (R,)
        ``s(C, N_i)`` and ``z(C, N_i)``.
    null_scores, null_zero_shares : numpy.ndarray of shape (R, R)
        ``s(N_i, N_j)`` and ``z(N_i, N_j)`` where fitted, NaN elsewhere (the diagonal
        is ignored).

    Returns
    -------
    numpy.ndarray of shape (R + 1, R + 1)
        The score matrix, NaN on the diagonal and for pairs fitted in neither orientation.
    """
    concept = np.asarray(concept_scores, dtype=np.float64).ravel()
    concept_zero = np.asarray(concept_zero_shares, dtype=np.float64).ravel()
    null = np.asarray(null_scores, dtype=np.float64)
    null_zero = np.asarray(null_zero_shares, dtype=np.float64)
    n_random = concept.size
    if concept_zero.shape != (n_random,):
        raise InvalidArgumentError(
            f"concept_zero_shares has shape {concept_zero.shape}; expected ({n_random},)"
        )
    for name, array in (("null_scores", null), ("null_zero_shares", null_zero)):
        if array.shape != (n_random, n_random):
            raise InvalidArgumentError(
                f"{name} has shape {array.shape}; expected ({n_random}, {n_random})"
            )

    scores = np.full((n_random + 1, n_random + 1), np.nan)
    zeros = np.full_like(scores, np.nan)
    scores[0, 1:], zeros[0, 1:] = concept, concept_zero
    scores[1:, 1:], zeros[1:, 1:] = null, null_zero
    np.fill_diagonal(scores, np.nan)

    # Fill each missing orientation from the one that was fitted.
    missing = np.isnan(scores) & ~np.isnan(scores.T)
    reversed_scores = 1.0 - scores.T - zeros.T
    scores[missing] = reversed_scores[missing]
    return scores


def antisymmetric_matrix(concept_values: np.ndarray, null_values: np.ndarray) -> np.ndarray:
    """Assemble a pair statistic that changes sign when a pair is reversed.

    For the cosine statistic ``c(X, Y) = mean_i S_i / mean_i ||g_i||``, reversing the
    pair negates the CAV and so every derivative: ``c(Y, X) = -c(X, Y)``. The layout is
    that of :func:`round_robin_matrix`: set 0 is the concept, set ``i + 1`` the random
    set ``N_i``, and entry ``[x, y]`` is ``c(X, Y)``.

    Parameters
    ----------
    concept_values : numpy.ndarray of shape (R,)
        ``c(C, N_i)``.
    null_values : numpy.ndarray of shape (R, R)
        ``c(N_i, N_j)`` where fitted, NaN elsewhere.

    Returns
    -------
    numpy.ndarray of shape (R + 1, R + 1)
        NaN on the diagonal and for pairs fitted in neither orientation.
    """
    concept = np.asarray(concept_values, dtype=np.float64).ravel()
    null = np.asarray(null_values, dtype=np.float64)
    n_random = concept.size
    if null.shape != (n_random, n_random):
        raise InvalidArgumentError(
            f"null_values has shape {null.shape}; expected ({n_random}, {n_random})"
        )
    values = np.full((n_random + 1, n_random + 1), np.nan)
    values[0, 1:] = concept
    values[1:, 1:] = null
    np.fill_diagonal(values, np.nan)
    missing = np.isnan(values) & ~np.isnan(values.T)
    values[missing] = -values.T[missing]
    return values


def set_statistics(score_matrix: np.ndarray) -> np.ndarray:
    """Return each set's mean score against the other sets of a round robin.

    ``T(X) = (1 / R) * sum_{Y != X} s(X, Y)`` over the ``R`` other sets. For the concept,
    ``T(C)`` is the mean of its ``R`` TCAV scores.

    Parameters
    ----------
    score_matrix : numpy.ndarray of shape (R + 1, R + 1)
        Output of :func:`round_robin_matrix`.

    Returns
    -------
    numpy.ndarray of shape (R + 1,)
        ``T`` per set, concept first; NaN for a set with any undefined score.
    """
    matrix = np.asarray(score_matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise InvalidArgumentError(
            f"score_matrix must be square with at least 2 rows; got shape {matrix.shape}"
        )
    off_diagonal = ~np.eye(matrix.shape[0], dtype=bool)
    rows = matrix[off_diagonal].reshape(matrix.shape[0], matrix.shape[0] - 1)
    return rows.mean(axis=1)


def calibrated_test(set_stats: np.ndarray) -> TestResult:
    """Test whether the concept's set statistic differs from those of the random sets.

    Let ``T_0 = T(C)`` and ``T_1 .. T_R`` be the statistics of the random sets
    (:func:`set_statistics`), ``u_X = T_X - (1 / (R + 1)) sum_Y T_Y`` their deviations
    from the grand mean, so ``sum_X u_X = 0``.

    The test is the prediction interval for one new draw. If ``T_0 .. T_R`` were
    independent draws of one normal distribution, ``T_0 - mean(T_1 .. T_R)`` would have
    variance ``sigma^2 (1 + 1 / R)``, and the sample variance ``s^2`` of ``T_1 .. T_R``
    estimates ``sigma^2`` with ``R - 1`` degrees of freedom, independently of the means,
    so ``t = (T_0 - mean(T_1 .. T_R)) / (s * sqrt(1 + 1 / R))`` follows Student's t with
    ``R - 1`` degrees of freedom. In terms of ``u``: ``T_0 - mean(T_1 .. T_R) =
    (R + 1) / R * u_0`` and ``(R - 1) s^2 = sum_i u_i^2 - u_0^2 / R``, hence

        ``t = u_0 * sqrt((R + 1) / R) / sqrt((sum_{i=1..R} u_i^2 - u_0^2 / R) / (R - 1))``,
        ``p = 2 * P(T_{R-1} > |t|)``.

    The set statistics of a round robin are not independent (their sum is fixed), but
    ``t`` only depends on differences between them. Any exchangeable normal vector has
    covariance ``a I + b J`` (``J`` all ones), and its differences are distributed as
    those of independent draws with variance ``a``, so ``t`` keeps the same distribution.

    The rank p-value needs no normality: when the concept is exchangeable with the random
    sets, the rank of ``|u_0|`` among all ``|u_X|`` is uniform, so
    ``p_rank = (1 + #{i >= 1 : |u_i| >= |u_0|}) / (R + 1)`` is exact (conservative with
    ties). Its smallest value is ``1 / (R + 1)``.

    Parameters
    ----------
    set_stats : numpy.ndarray of shape (R + 1,)
        ``T`` of the concept first, then of each random set.

    Returns
    -------
    TestResult
        With ``R - 1`` degrees of freedom; NaN p-values and a note when ``R < 3`` or a
        statistic is NaN.
    """
    values = np.asarray(set_stats, dtype=np.float64).ravel()
    n_random = values.size - 1
    if n_random < MIN_RANDOM_SETS["calibrated"]:
        return _not_tested(
            f"the calibrated test needs at least {MIN_RANDOM_SETS['calibrated']} random sets; "
            f"got {max(n_random, 0)}"
        )
    if np.isnan(values).any():
        return _not_tested("some TCAV scores are undefined (NaN)")
    deviations = values - values.mean()
    concept_deviation = deviations[0]
    rank_p_value = float(
        (1 + np.count_nonzero(np.abs(deviations[1:]) >= np.abs(concept_deviation))) / (n_random + 1)
    )
    df = float(n_random - 1)
    residual = float(np.sum(deviations[1:] ** 2) - concept_deviation**2 / n_random)
    if residual <= 0.0:
        if concept_deviation == 0.0:
            return TestResult(math.nan, df, math.nan, rank_p_value, "every set has the same score")
        # The random sets agree exactly and the concept differs: an infinite t.
        return TestResult(math.copysign(math.inf, concept_deviation), df, 0.0, rank_p_value)
    statistic = concept_deviation * math.sqrt((n_random + 1) / n_random)
    statistic /= math.sqrt(residual / df)
    p_value = float(2.0 * scipy_stats.t.sf(abs(statistic), df))
    return TestResult(float(statistic), df, p_value, rank_p_value)


def cycle_scores(score_matrix: np.ndarray) -> np.ndarray:
    """Return the null scores of the t-test: ``s(N_i, N_{i+1 mod R})`` for each ``i``.

    Parameters
    ----------
    score_matrix : numpy.ndarray of shape (R + 1, R + 1)
        Output of :func:`round_robin_matrix`; row and column 0 (the concept) are unused.

    Returns
    -------
    numpy.ndarray of shape (R,), or (1,) when R = 2, or (0,) when R < 2
        For ``R = 2`` the cycle would hold one pair in both orientations, so only
        ``s(N_0, N_1)`` is returned.
    """
    matrix = np.asarray(score_matrix, dtype=np.float64)
    n_random = matrix.shape[0] - 1
    if n_random < 2:
        return np.empty(0)
    if n_random == 2:
        return np.array([matrix[1, 2]])
    rows = np.arange(n_random)
    return matrix[1 + rows, 1 + (rows + 1) % n_random]


def correct_p_values(p_values: np.ndarray, method: str = "holm") -> np.ndarray:
    """Adjust p-values for multiple testing; NaN entries are not counted as tests.

    With ``m`` finite p-values sorted as ``p_(1) <= ... <= p_(m)``:

    - ``"bonferroni"``: ``min(1, m * p_i)``.
    - ``"holm"``: ``p~_(k) = max_{j <= k} min(1, (m - j + 1) * p_(j))``, the step-down
      adjustment, which controls the family-wise error rate like Bonferroni and rejects at
      least as often.
    - ``"none"``: the p-values unchanged.

    Parameters
    ----------
    p_values : numpy.ndarray of shape (n,)
        Uncorrected p-values, NaN for tests that were not run.
    method : {"holm", "bonferroni", "none"}
        The correction.

    Returns
    -------
    numpy.ndarray of shape (n,)
        Adjusted p-values in the input order; NaN where the input is NaN.
    """
    check_choice("correction", method, CORRECTIONS)
    values = np.asarray(p_values, dtype=np.float64).ravel()
    finite = ~np.isnan(values)
    if np.any((values[finite] < 0.0) | (values[finite] > 1.0)):
        raise InvalidArgumentError(f"p_values must lie in [0, 1]; got {values[finite]}")
    adjusted = values.copy()
    n_tests = int(finite.sum())
    if method == "none" or n_tests == 0:
        return adjusted
    tested = values[finite]
    if method == "bonferroni":
        adjusted[finite] = np.minimum(1.0, n_tests * tested)
        return adjusted
    order = np.argsort(tested, kind="stable")
    multipliers = n_tests - np.arange(n_tests)
    stepped = np.maximum.accumulate(np.minimum(1.0, multipliers * tested[order]))
    holm = np.empty(n_tests)
    holm[order] = stepped
    adjusted[finite] = holm
    return adjusted


def weak_cav_test(
    accuracies: np.ndarray, n_heldout: int, threshold: float = 0.6, alpha: float = 0.05
) -> tuple[float, float, bool]:
    """Flag CAVs that separate the concept from random sets hardly better than chance.

    ``mean_accuracy`` is the mean held-out balanced accuracy of the runs. The binomial
    test checks whether ``k = round(mean_accuracy * n_heldout)`` correct answers out of
    ``n_heldout`` exceed chance: ``p = P(Binomial(n_heldout, 0.5) >= k)``. One run's
    held-out size is used, not the sum over runs, because the runs share the concept's
    images. The CAVs are weak when ``mean_accuracy < threshold`` or ``p >= alpha``.

    Parameters
    ----------
    accuracies : numpy.ndarray of shape (R,)
        Held-out balanced accuracy of each run; NaN when nothing was held out.
    n_heldout : int
        Number of held-out images of one run.
    threshold : float
        Lowest acceptable mean accuracy.
    alpha : float
        Level of the binomial test.

    Returns
    -------
    tuple of (float, float, bool)
        ``(mean_accuracy, p_value, weak)``. With no held-out accuracy the mean and p are
        NaN and ``weak`` is False, because there is nothing to judge.
    """
    values = np.asarray(accuracies, dtype=np.float64).ravel()
    finite = values[~np.isnan(values)]
    if finite.size == 0 or n_heldout <= 0:
        mean = float(finite.mean()) if finite.size else math.nan
        return mean, math.nan, False
    mean_accuracy = float(finite.mean())
    correct = round(mean_accuracy * n_heldout)
    p_value = float(scipy_stats.binomtest(correct, n_heldout, 0.5, alternative="greater").pvalue)
    weak = mean_accuracy < threshold or p_value >= alpha
    return mean_accuracy, p_value, bool(weak)


def _not_tested(note: str) -> TestResult:
    return TestResult(math.nan, math.nan, math.nan, math.nan, note)

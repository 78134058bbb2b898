"""The per-(concept, layer, target) summary of TCAV runs, with tests and corrections."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cav.core import stats

RUN_COLUMNS = {
    "concept": "str",
    "negative": "str",
    "layer": "str",
    "target": "int64",
    "run": "int64",
    "kind": "str",
    "score": "float64",
    "magnitude": "float64",
    "cosine": "float64",
    "zero_share": "float64",
    "cav_accuracy": "float64",
    "n_heldout": "int64",
    "n_inputs": "int64",
}

SUMMARY_COLUMNS = {
    "concept": "str",
    "layer": "str",
    "target": "int64",
    "n_random": "int64",
    "n_inputs": "int64",
    "mean": "float64",
    "sd": "float64",
    "ci_low": "float64",
    "ci_high": "float64",
    "magnitude": "float64",
    "null_mean": "float64",
    "cav_accuracy": "float64",
    "weak_cav": "bool",
    "zero_share": "float64",
    "undefined": "bool",
    "test": "str",
    "test_statistic": "str",
    "statistic": "float64",
    "df": "float64",
    "p_value": "float64",
    "p_value_rank": "float64",
    "p_value_corrected": "float64",
    "significant": "bool",
    "correction": "str",
    "alpha": "float64",
    "note": "str",
}

# Mean held-out accuracy below which the CAVs of a concept are flagged as weak.
MIN_CAV_ACCURACY = 0.6


def make_table(rows: Sequence[Mapping[str, object]], columns: Mapping[str, str]) -> pd.DataFrame:
    """Build a DataFrame with exactly ``columns`` (name -> dtype), in that order."""
    data = {name: [row[name] for row in rows] for name in columns}
    return pd.DataFrame(
        {name: pd.Series(data[name], dtype=dtype) for name, dtype in columns.items()}
    )


def _run_values(
    runs: pd.DataFrame,
    concept: str,
    layer: str,
    target: int,
    random_names: Sequence[str],
    column: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Return one column of the runs as concept values and a null-run matrix.

    Returns
    -------
    concept_values : numpy.ndarray of shape (R,)
        The concept's run against each random set, in sorted name order; NaN where missing.
    null_values : numpy.ndarray of shape (R, R)
        Entry (i, j) is the null run of random set i against random set j; NaN where missing.
    """
    names = sorted(random_names)
    position = {name: index for index, name in enumerate(names)}
    n_random = len(names)
    at = (runs["layer"] == layer) & (runs["target"] == target)

    concept_values = np.full(n_random, np.nan)
    concept_rows = runs[at & (runs["kind"] == "concept") & (runs["concept"] == concept)]
    for negative, value in concept_rows[["negative", column]].itertuples(index=False):
        concept_values[position[negative]] = value

    null_values = np.full((n_random, n_random), np.nan)
    null_rows = runs[at & (runs["kind"] == "null")]
    for first, second, value in null_rows[["concept", "negative", column]].itertuples(index=False):
        null_values[position[first], position[second]] = value
    return concept_values, null_values


def cosine_matrix(
    runs: pd.DataFrame, concept: str, layer: str, target: int, random_names: Sequence[str]
) -> np.ndarray:
    """Return the round-robin matrix of the cosine statistic of one concept.

    Same layout as :func:`score_matrix`; see :func:`cav.core.stats.antisymmetric_matrix`.

    Returns
    -------
    numpy.ndarray of shape (R + 1, R + 1)
    """
    concept_values, null_values = _run_values(runs, concept, layer, target, random_names, "cosine")
    return stats.antisymmetric_matrix(concept_values, null_values)


def score_matrix(
    runs: pd.DataFrame, concept: str, layer: str, target: int, random_names: Sequence[str]
) -> np.ndarray:
    """Return the round-robin score matrix of one concept at one layer and target.

    Rows and columns are the concept (index 0), then the random sets in sorted name order;
    see :func:`cav.core.stats.round_robin_matrix`.

    Returns
    -------
    numpy.ndarray of shape (R + 1, R + 1)
    """
    concept_scores, null_scores = _run_values(runs, concept, layer, target, random_names, "score")
    concept_zero, null_zero = _run_values(runs, concept, layer, target, random_names, "zero_share")
    return stats.round_robin_matrix(concept_scores, concept_zero, null_scores, null_zero)


def null_distribution(matrix: np.ndarray, test: str) -> np.ndarray:
    """Return the random-set values the concept is compared with.

    ``"calibrated"``: the set statistics ``T(N_i)`` of the random sets used as
    pseudo-concepts. ``"ttest"``: the null runs' scores ``s(N_i, N_{i+1})``.

    Returns
    -------
    numpy.ndarray of shape (R,) (or fewer for the t-test with R < 3)
    """
    if test == "calibrated":
        return stats.set_statistics(matrix)[1:]
    return stats.cycle_scores(matrix)


def summarize_runs(
    runs: pd.DataFrame,
    *,
    concepts: Sequence[str],
    layers: Sequence[str],
    targets: Sequence[int],
    random_names: Sequence[str],
    input_zero_shares: Mapping[tuple[str, str, int], float],
    test: str = "calibrated",
    ttest: str = "welch",
    correction: str = "holm",
    alpha: float = 0.05,
    statistic: str = "cosine",
) -> pd.DataFrame:
    """Summarise the runs of every (concept, layer, target) and test them.

    Each group gets the mean, sample standard deviation and 95% t-interval of its ``R``
    concept scores (:func:`cav.core.stats.mean_interval`) and the mean magnitude score.
    It also gets the mean held-out CAV accuracy with the weak-CAV flag
    (:func:`cav.core.stats.weak_cav_test`, threshold 0.6) and the p-value of ``test``.
    The p-values are corrected over all groups of the call
    (:func:`cav.core.stats.correct_p_values`), and ``significant`` is
    ``p_value_corrected < alpha``.

    Parameters
    ----------
    runs : pandas.DataFrame
        One row per run and target, with the columns of :data:`RUN_COLUMNS`.
    concepts, layers, targets, random_names : sequences
        The groups to summarise, in output order, and the random sets' names.
    input_zero_shares : mapping of (concept, layer, target) to float
        Share of inputs whose derivatives are exactly zero in every concept run.
    test, ttest, correction, alpha, statistic
        As in :func:`cav.run_tcav`.

    Returns
    -------
    pandas.DataFrame
        One row per (concept, layer, target) with the columns of :data:`SUMMARY_COLUMNS`.
    """
    rows = []
    for concept in concepts:
        for layer in layers:
            for target in targets:
                matrix = score_matrix(runs, concept, layer, target, random_names)
                group = runs[
                    (runs["kind"] == "concept")
                    & (runs["concept"] == concept)
                    & (runs["layer"] == layer)
                    & (runs["target"] == target)
                ]
                if test == "calibrated" and statistic == "cosine":
                    tested = cosine_matrix(runs, concept, layer, target, random_names)
                else:
                    tested = matrix
                row = _summarize_group(group, matrix, tested, test, ttest, alpha)
                row["test_statistic"] = statistic if test == "calibrated" else "score"
                row.update(
                    concept=concept,
                    layer=layer,
                    target=target,
                    zero_share=float(input_zero_shares.get((concept, layer, target), math.nan)),
                    correction=correction,
                )
                rows.append(row)
    table = make_table(rows, SUMMARY_COLUMNS)
    corrected = stats.correct_p_values(table["p_value"].to_numpy(), correction)
    table["p_value_corrected"] = corrected
    table["significant"] = np.nan_to_num(corrected, nan=1.0) < alpha
    return table


def _summarize_group(
    group: pd.DataFrame,
    matrix: np.ndarray,
    tested: np.ndarray,
    test: str,
    ttest: str,
    alpha: float,
) -> dict[str, object]:
    """Summarise one group. ``matrix`` contains its scores and ``tested`` the tested statistic."""
    concept_scores = matrix[0, 1:]
    mean, sd, low, high = stats.mean_interval(concept_scores)
    if test == "calibrated":
        result = stats.calibrated_test(stats.set_statistics(tested))
    else:
        result = stats.ttest_scores(concept_scores, stats.cycle_scores(matrix), ttest)
    heldout = int(group["n_heldout"].min()) if len(group) else 0
    accuracy, _, weak = stats.weak_cav_test(
        group["cav_accuracy"].to_numpy(), heldout, MIN_CAV_ACCURACY, alpha
    )
    null_values = null_distribution(matrix, test)
    undefined = bool(np.isnan(concept_scores).all())
    notes = [result.note] if result.note else []
    notes.extend(_undefined_notes(group, concept_scores))
    return {
        "n_random": len(concept_scores),
        "n_inputs": int(group["n_inputs"].max()) if len(group) else 0,
        "mean": mean,
        "sd": sd,
        "ci_low": low,
        "ci_high": high,
        "magnitude": _nanmean(group["magnitude"].to_numpy()),
        "null_mean": _nanmean(null_values),
        "cav_accuracy": accuracy,
        "weak_cav": weak,
        "undefined": undefined,
        "test": test,
        "statistic": result.statistic,
        "df": result.df,
        "p_value": result.p_value,
        "p_value_rank": result.rank_p_value,
        "p_value_corrected": math.nan,
        "significant": False,
        "alpha": alpha,
        "note": "; ".join(dict.fromkeys(notes)),
    }


def _undefined_notes(group: pd.DataFrame, concept_scores: np.ndarray) -> list[str]:
    n_undefined = int(np.isnan(concept_scores).sum())
    if n_undefined == 0:
        return []
    zero_runs = int((group["zero_share"] == 1.0).sum())
    notes = []
    if zero_runs:
        notes.append(
            f"every directional derivative is exactly zero in {zero_runs} of "
            f"{len(concept_scores)} runs, so their TCAV scores are undefined"
        )
    degenerate = int(group["zero_share"].isna().sum())
    if degenerate:
        notes.append(
            f"{degenerate} CAVs are undefined because the concept and random activations "
            "are identical"
        )
    return notes


def _nanmean(values: np.ndarray) -> float:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[~np.isnan(finite)]
    return float(finite.mean()) if finite.size else math.nan

"""Calibration of run_tcav's default test: random concepts are rarely significant.

Each trial runs the whole pipeline on a seeded numpy MLP whose "concept" is one more draw
from the distribution of the random pool, so every rejection is a false positive. The
share of rejections at alpha = 0.05 must stay within a binomial margin of 0.05.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cav.core import stats
from cav.errors import WeakCAVWarning
from cav.pipeline.run import run_tcav
from cav.pipeline.toy import make_toy_mlp
from cav.report.summary import score_matrix

ALPHA = 0.05


def max_false_positives(n_trials: int, tail: float = 1e-3) -> int:
    """Largest number of rejections consistent with a true rate of ALPHA (one-sided tail)."""
    return int(scipy_stats.binom.ppf(1.0 - tail, n_trials, ALPHA))


def null_trial(trial: int, width: int, n_random: int, set_size: int, layers: list[str]):
    """Run one trial with a random concept; return the result."""
    rng = np.random.default_rng([width, trial])
    model = make_toy_mlp(width, hidden=16, seed=trial)
    inputs = rng.normal(size=(80, width))
    concept = rng.normal(size=(set_size, width))
    pool = rng.normal(size=(n_random * set_size, width))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakCAVWarning)
        return run_tcav(
            model,
            inputs,
            1,
            {"random_concept": concept},
            random_pool=pool,
            layers=layers,
            n_random=n_random,
            correction="none",
            seed=trial,
        )


def rejections(n_trials: int, width: int, n_random: int, set_size: int, layers: list[str]):
    """Count calibrated and t-test rejections per layer over seeded null trials."""
    counts = {(layer, test): 0 for layer in layers for test in ("calibrated", "ttest")}
    for trial in range(n_trials):
        result = null_trial(trial, width, n_random, set_size, layers)
        for row in result.summary().itertuples(index=False):
            counts[(row.layer, "calibrated")] += int(row.p_value < ALPHA)
            matrix = score_matrix(
                result.runs, row.concept, row.layer, 1, result.params["random_sets"]
            )
            ttest = stats.ttest_scores(matrix[0, 1:], stats.cycle_scores(matrix))
            counts[(row.layer, "ttest")] += int(ttest.p_value < ALPHA)
    return counts


def test_random_concept_rarely_significant():
    n_trials = 40
    counts = rejections(n_trials, width=16, n_random=6, set_size=20, layers=["features"])
    assert counts[("features", "calibrated")] <= max_false_positives(n_trials)


def test_planted_concept_detected():
    rng = np.random.default_rng(7)
    model = make_toy_mlp(16, hidden=16, seed=7)
    inputs = rng.normal(size=(80, 16))
    gradient = model.gradients(inputs, ["features"], 1)["features"].mean(axis=0)
    concept = rng.normal(size=(20, 16)) + 2.0 * gradient / np.linalg.norm(gradient)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakCAVWarning)
        result = run_tcav(
            model,
            inputs,
            1,
            {"planted": concept},
            random_pool=rng.normal(size=(120, 16)),
            layers="features",
            n_random=6,
        )
    assert result.summary()["p_value"].iloc[0] < ALPHA


@pytest.mark.slow
@pytest.mark.parametrize("width", [16, 64])
def test_calibration_many_seeds(width):
    n_trials = 200
    counts = rejections(n_trials, width, n_random=10, set_size=30, layers=["features", "hidden"])
    for layer in ("features", "hidden"):
        assert counts[(layer, "calibrated")] <= max_false_positives(n_trials), layer
    # The t-test's runs share one concept set, so it rejects random concepts too often.
    assert counts[("features", "ttest")] > max_false_positives(n_trials)

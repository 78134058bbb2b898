"""The two ways the study scores a trained model: the TCAV protocol and cav-keras's.

Both return two tidy tables for one cell of the study:

- runs: one row per CAV run and class, with the columns of :data:`RUN_COLUMNS`;
- tests: one row per (layer, class), with the columns of :data:`TEST_COLUMNS`.

A class whose directional derivatives are all exactly zero has an undefined score (NaN,
``undefined`` true, the reason in ``note``), never a score of 0.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from cav.errors import InvalidArgumentError
from cav.experiments.config import StudyConfig, derive_seed
from cav.experiments.networks import LAYER_NAMES
from cav.experiments.sampling import ImbalancedSet, scale_images
from cav.experiments.study_data import StudyData

logger = logging.getLogger(__name__)

RUN_COLUMNS = (
    "layer",
    "layer_index",
    "target",
    "class",
    "kind",
    "run",
    "negative",
    "score",
    "magnitude",
    "cosine",
    "zero_share",
    "cav_accuracy",
)
TEST_COLUMNS = (
    "layer",
    "layer_index",
    "target",
    "class",
    "n_runs",
    "mean",
    "sd",
    "ci_low",
    "ci_high",
    "null_mean",
    "zero_share",
    "cav_accuracy",
    "weak_cav",
    "p_value",
    "p_value_rank",
    "p_value_corrected",
    "significant",
    "undefined",
    "note",
)


def layer_index(layer: str | int) -> int:
    """Return the position of ``layer`` (a name or an index) in the study CNN, or -1."""
    if isinstance(layer, int | np.integer):
        return int(layer)
    text = str(layer)
    if text in LAYER_NAMES:
        return LAYER_NAMES.index(text)
    return int(text) if text.isdigit() else -1


def score_tcav(
    model: Any,
    data: StudyData,
    config: StudyConfig,
    seed: int,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score a trained model with the TCAV protocol through :func:`cav.run_tcav`.

    Every image set is scaled by 1/255 like the training inputs. The concept set
    (``concept_set_size`` images) and R random sets (``random_set_size`` images each,
    disjoint, from the random pool) are drawn from ``seed`` alone, so every ratio of a
    seed is tested against the same sets. Target 1 is scored on the positive class's test
    images and target 0 on the negative class's, with logit gradients.

    Returns
    -------
    runs, tests : pandas.DataFrame
        Tables with the columns of :data:`RUN_COLUMNS` and :data:`TEST_COLUMNS`.
    """
    from cav.pipeline.run import run_tcav

    concept_set, random_sets = draw_image_sets(data, config, seed)
    inputs = {
        1: scale_images(_cap(data.test_positive, config.max_test_images, seed, "test-positive")),
        0: scale_images(_cap(data.test_negative, config.max_test_images, seed, "test-negative")),
    }
    concepts = {data.concept: scale_images(concept_set)}
    scaled_random_sets = {name: scale_images(images) for name, images in random_sets.items()}
    check_value_ranges(inputs, {**concepts, **scaled_random_sets})
    result = run_tcav(
        model,
        inputs,
        target=[1, 0],
        concepts=concepts,
        random_sets=scaled_random_sets,
        layers=list(config.layers),
        method=config.method,
        output="logit",
        test=config.test,
        alpha=config.alpha,
        seed=derive_seed(seed, "tcav"),
        batch_size=config.gradient_batch_size,
        cache_dir=config.cache_dir,
        progress=progress,
    )
    return _tidy_runs(result.runs, data), _tidy_tests(result.summary(), data)


def check_value_ranges(inputs: dict[int, np.ndarray], image_sets: dict[str, np.ndarray]) -> None:
    """Raise when a concept or random set lies on another value range than the inputs.

    The TCAV protocol scales every set alike, so a mismatch means the image data mix
    value ranges (uint8 0-255 against floats 0-1, the mix-up of the cav-keras notebook).
    The rule is that of :func:`cav.pipeline.sets.value_range_mismatches`.

    Raises
    ------
    InvalidArgumentError
        Naming the sets, their ranges and the inputs' range.
    """
    from cav.pipeline.sets import value_range_mismatches

    (low, high), flagged = value_range_mismatches(list(inputs.values()), image_sets)
    if flagged:
        raise InvalidArgumentError(
            f"--protocol tcav: image sets lie on a different value range from the test "
            f"images [{low:.3g}, {high:.3g}]: {', '.join(flagged)}; give every image set "
            "the same value range, or use --protocol cav-keras to reproduce the cav-keras "
            "notebook's unscaled concept images on purpose"
        )


def draw_image_sets(
    data: StudyData, config: StudyConfig, seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw the concept set and the R random sets of one seed (uint8, not scaled).

    Returns
    -------
    concept_set : numpy.ndarray of shape (concept_set_size, h, w, c)
        Images drawn without replacement from ``data.concept_images`` (all of them when
        fewer are available).
    random_sets : dict of str to numpy.ndarray of shape (random_set_size, h, w, c)
        ``"random_00"``, ``"random_01"``, ...: disjoint sets from ``data.random_pool``.
    """
    config = config.resolved()
    runs, size = int(config.random_runs or 0), int(config.random_set_size or 0)
    rng = np.random.default_rng(derive_seed(seed, "image-sets"))
    n_concept = min(int(config.concept_set_size or size), len(data.concept_images))
    concept_rows = np.sort(rng.choice(len(data.concept_images), size=n_concept, replace=False))
    needed = runs * size
    if needed > len(data.random_pool):
        raise InvalidArgumentError(
            f"random_runs * random_set_size = {runs} * {size} = {needed} random images are "
            f"needed, but the random pool has {len(data.random_pool)}; lower --random-runs "
            "or --random-set-size"
        )
    pool_rows = rng.choice(len(data.random_pool), size=needed, replace=False)
    random_sets = {
        f"random_{i:02d}": data.random_pool[np.sort(pool_rows[i * size : (i + 1) * size])]
        for i in range(runs)
    }
    return data.concept_images[concept_rows], random_sets


def score_cav_keras(
    model: Any,
    data: StudyData,
    training_set: ImbalancedSet,
    config: StudyConfig,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score a trained model with the cav-keras notebook's procedure, once per layer.

    The steps run through :class:`cav.tcav.TCAV`. The concept images are passed unscaled
    (0-255) while the model was trained on [0, 1] inputs, and the negatives are uniform
    noise. The CAV is a perceptron fitted on all images. The derivative is that of the
    binary cross-entropy against each image's own label, and the scores are taken on the
    training images. There is one run and no test, so p-values are NaN.

    Returns
    -------
    runs, tests : pandas.DataFrame
        Tables with the columns of :data:`RUN_COLUMNS` and :data:`TEST_COLUMNS`.
    """
    from cav.tcav import TCAV

    concept = np.asarray(data.concept_images, dtype=np.float32)
    tcav = TCAV(model, seed=derive_seed(seed, "cav-keras"))
    run_rows: list[dict[str, Any]] = []
    test_rows: list[dict[str, Any]] = []
    for layer in config.layers:
        tcav.split_model(bottleneck=layer, conv_layer=True)
        tcav.train_cav(concept, seed=derive_seed(seed, "cav-keras", str(layer)))
        tcav.calculate_sensitivity(
            training_set.x, training_set.y, batch_size=config.gradient_batch_size
        )
        name = _layer_name(layer)
        accuracy = math.nan if tcav.cav is None else float(tcav.cav.accuracy)
        for target in (1, 0):
            score = float(tcav.tcav_score[target])
            zero = float(tcav.zero_fraction[target])
            undefined = math.isnan(score)
            row = {
                "layer": name,
                "layer_index": layer_index(layer),
                "target": target,
                "class": data.class_names[target],
            }
            run_rows.append(
                row
                | {
                    "kind": "concept",
                    "run": 0,
                    "negative": "noise",
                    "score": score,
                    "magnitude": math.nan,
                    "cosine": math.nan,
                    "zero_share": zero,
                    "cav_accuracy": accuracy,
                }
            )
            note = "one run, no test (cav-keras protocol)"
            if undefined:
                note = _undefined_note(zero)
            test_rows.append(
                row
                | {
                    "n_runs": 1,
                    "mean": score,
                    "sd": math.nan,
                    "ci_low": math.nan,
                    "ci_high": math.nan,
                    "null_mean": math.nan,
                    "zero_share": zero,
                    "cav_accuracy": accuracy,
                    "weak_cav": False,
                    "p_value": math.nan,
                    "p_value_rank": math.nan,
                    "p_value_corrected": math.nan,
                    "significant": pd.NA,
                    "undefined": undefined,
                    "note": note,
                }
            )
    runs = pd.DataFrame(run_rows, columns=list(RUN_COLUMNS))
    tests = pd.DataFrame(test_rows, columns=list(TEST_COLUMNS))
    tests["significant"] = tests["significant"].astype("boolean")
    return runs, tests


def _layer_name(layer: str | int) -> str:
    index = layer_index(layer)
    return LAYER_NAMES[index] if 0 <= index < len(LAYER_NAMES) else str(layer)


def _undefined_note(zero_share: float) -> str:
    return (
        f"undefined: {zero_share:.0%} of the directional derivatives are exactly zero "
        "(the gradient vanishes, e.g. a saturated sigmoid or a dead ReLU)"
    )


def _cap(images: np.ndarray, limit: int | None, seed: int, key: str) -> np.ndarray:
    """Keep at most ``limit`` images, drawn without replacement from ``seed``."""
    if limit is None or len(images) <= limit:
        return images
    rng = np.random.default_rng(derive_seed(seed, key))
    return images[np.sort(rng.choice(len(images), size=limit, replace=False))]


def _tidy_runs(runs: pd.DataFrame, data: StudyData) -> pd.DataFrame:
    """Convert ``TCAVResult.runs`` to :data:`RUN_COLUMNS`."""
    table = pd.DataFrame(
        {
            "layer": runs["layer"].astype(str),
            "layer_index": [layer_index(v) for v in runs["layer"]],
            "target": runs["target"].astype(int),
            "class": [data.class_names[int(t)] for t in runs["target"]],
            "kind": runs["kind"].astype(str),
            "run": runs["run"].astype(int),
            "negative": runs["negative"].astype(str),
        }
    )
    for column in ("score", "magnitude", "cosine", "zero_share", "cav_accuracy"):
        table[column] = runs[column].astype(float).to_numpy()
    return table.reset_index(drop=True)


def _tidy_tests(summary: pd.DataFrame, data: StudyData) -> pd.DataFrame:
    """Convert ``TCAVResult.summary()`` to :data:`TEST_COLUMNS`."""
    undefined = summary["undefined"].astype(bool).to_numpy()
    notes = []
    for flag, zero, note in zip(undefined, summary["zero_share"], summary["note"], strict=True):
        if flag:
            notes.append(_undefined_note(float(zero)))
        else:
            notes.append("" if pd.isna(note) else str(note))

    table = pd.DataFrame(
        {
            "layer": summary["layer"].astype(str),
            "layer_index": [layer_index(v) for v in summary["layer"]],
            "target": summary["target"].astype(int),
            "class": [data.class_names[int(t)] for t in summary["target"]],
            "n_runs": summary["n_random"].astype(int),
        }
    )
    for column in (
        "mean",
        "sd",
        "ci_low",
        "ci_high",
        "null_mean",
        "zero_share",
        "cav_accuracy",
    ):
        table[column] = summary[column].astype(float).to_numpy()
    table["weak_cav"] = summary["weak_cav"].astype(bool).to_numpy()
    for column in ("p_value", "p_value_rank", "p_value_corrected"):
        table[column] = summary[column].astype(float).to_numpy()
    # A test that did not run (too few random sets, undefined scores) is neither
    # significant nor not significant.
    significant = summary["significant"].astype("boolean").to_numpy()
    table["significant"] = pd.array(
        [
            pd.NA if np.isnan(p) else bool(s)
            for p, s in zip(table["p_value"], significant, strict=True)
        ],
        dtype="boolean",
    )
    table["undefined"] = undefined
    table["note"] = notes
    return table[list(TEST_COLUMNS)].reset_index(drop=True)

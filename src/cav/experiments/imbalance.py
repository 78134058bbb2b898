"""The class-imbalance study: train the notebook's CNN at several class ratios, run TCAV.

For each (ratio, seed) cell the study keeps ``ratio`` of the positive class's training
images (all negatives), trains the CNN, measures it on the test images and scores the
concept at each layer with the chosen protocol. Cells are independent: every random draw
of a cell derives from its seed and ratio (see :func:`cav.experiments.config.derive_seed`),
so a cell gives the same result alone, in a larger study, or after ``resume``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, recall_score

from cav.errors import InvalidArgumentError
from cav.experiments.config import StudyConfig, derive_seed
from cav.experiments.networks import build_keras_cnn, train_keras_cnn
from cav.experiments.protocols import score_cav_keras, score_tcav
from cav.experiments.results import (
    CellResult,
    StudyResult,
    cell_file_name,
    read_cell,
    remove_temporary_files,
    write_text_atomic,
)
from cav.experiments.sampling import (
    ImbalancedSet,
    check_kept_images,
    imbalanced_training_set,
    scale_images,
)
from cav.experiments.study_data import StudyData, check_study_data, load_study_data

logger = logging.getLogger(__name__)

CELLS_FOLDER = "cells"
"""Folder inside the output folder that contains one JSON file per finished cell."""

SETTINGS_FILE = "settings.json"
"""File in the output folder that records the settings its cells were made with."""

SETTINGS_FORMAT = 1
"""Version of the settings file layout."""

# Settings that change no cell: which cells run, and where files are read and cached.
_SETTINGS_NOT_IN_KEY = ("ratios", "seeds", "cache_dir", "data_dir")


def run_study(
    config: StudyConfig,
    output_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = False,
    data: StudyData | None = None,
    on_cell: Callable[[CellResult, bool], None] | None = None,
) -> StudyResult:
    """Run every (ratio, seed) cell of the study.

    Parameters
    ----------
    config : StudyConfig
        Settings; dataset defaults are filled in with :meth:`StudyConfig.resolved`.
    output_dir : str or Path, optional
        When given, each finished cell is written to ``output_dir/cells/`` atomically,
        and the settings that change a cell's result to ``output_dir/settings.json``.
    resume : bool, default False
        Reuse the cells already in ``output_dir/cells/`` instead of running them again.
        The ratios and seeds may differ from the earlier run (the missing cells run);
        every other setting must be the same.
    progress : bool, default False
        Show tqdm progress bars for training and scoring.
    data : StudyData, optional
        Images to use instead of loading those that ``config`` names.
    on_cell : callable, optional
        Called with ``(cell, reused)`` after each cell, e.g. to report progress.

    Returns
    -------
    StudyResult
        The cells in the order ratios x seeds. Each cell is the one its file gives back
        (:meth:`CellResult.reloaded`), so a resumed study equals an uninterrupted one.

    Raises
    ------
    InvalidArgumentError
        If ``resume`` is set and ``output_dir`` was made with other settings, or a ratio
        keeps fewer than 2 positive training images.
    """
    config = config.resolved()
    key = config.cell_key()
    cells_dir = Path(output_dir) / CELLS_FOLDER if output_dir is not None else None
    if output_dir is not None:
        prepare_output_folder(Path(output_dir), config, resume)
    if data is None:
        data = load_study_data(config)
    check_study_data(data)
    for ratio in config.ratios:
        check_kept_images(len(data.train_positive), ratio, data.positive)

    cells: list[CellResult] = []
    for ratio in config.ratios:
        for seed in config.seeds:
            reused = None
            if resume and cells_dir is not None:
                reused = read_cell(cells_dir / cell_file_name(ratio, seed), key)
            if reused is not None:
                logger.info("ratio %g, seed %d: reusing the finished cell", ratio, seed)
                cell = reused
            else:
                cell = run_cell(data, config, ratio, seed, progress=progress)
                if cells_dir is not None:
                    cell.write(cells_dir)
                cell = cell.reloaded()
            cells.append(cell)
            if on_cell is not None:
                on_cell(cell, reused is not None)
    return StudyResult(config=config, cells=cells, data_source=data.source)


def prepare_output_folder(folder: Path, config: StudyConfig, resume: bool) -> None:
    """Check that ``folder`` can take the study's files, then record its settings.

    Hidden temporary files of an interrupted earlier run are deleted first. With
    ``resume``, settings that differ from those recorded in ``folder/settings.json`` raise
    :class:`InvalidArgumentError` naming each difference, before any training.
    """
    cells_dir = folder / CELLS_FOLDER
    cells_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*remove_temporary_files(folder), *remove_temporary_files(cells_dir)]:
        logger.info("deleted %s, left by an interrupted run", stale)

    settings = study_settings(config)
    path = folder / SETTINGS_FILE
    if resume:
        recorded = read_settings(path)
        if recorded is None:
            logger.info("--resume: %s has no readable %s; starting afresh", folder, SETTINGS_FILE)
        elif recorded != settings:
            raise InvalidArgumentError(
                f"--resume: {folder} was made with other settings "
                f"({describe_differences(recorded, settings)}); rerun with the same options, "
                "choose a new --output folder, or leave out --resume to start over"
            )
    document = {"format": SETTINGS_FORMAT, "key": config.cell_key(), "settings": settings}
    write_text_atomic(path, json.dumps(document, indent=1, sort_keys=True) + "\n")


def study_settings(config: StudyConfig) -> dict[str, Any]:
    """Return the settings that change a cell's result, as JSON values.

    These are the settings hashed by :meth:`StudyConfig.cell_key`: everything but the
    ratios, the seeds and the data and cache folders.
    """
    values = config.resolved().to_dict()
    for name in _SETTINGS_NOT_IN_KEY:
        values.pop(name)
    result: dict[str, Any] = json.loads(json.dumps(values, sort_keys=True, default=str))
    return result


def read_settings(path: Path) -> dict[str, Any] | None:
    """Return the settings recorded in ``path``, or ``None`` when missing or unreadable."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != SETTINGS_FORMAT:
        return None
    settings = document.get("settings")
    return settings if isinstance(settings, dict) else None


def describe_differences(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """List the settings that differ, e.g. ``"epochs: 3 in the folder, 1 now"``."""
    names = sorted(set(recorded) | set(current))
    parts = [
        f"{name}: {recorded.get(name)!r} in the folder, {current.get(name)!r} now"
        for name in names
        if recorded.get(name) != current.get(name)
    ]
    return "; ".join(parts)


def run_cell(
    data: StudyData,
    config: StudyConfig,
    ratio: float,
    seed: int,
    *,
    progress: bool = False,
) -> CellResult:
    """Train the CNN at one class ratio and seed, measure it and score the concept.

    Parameters
    ----------
    data : StudyData
        The images of the study.
    config : StudyConfig
        Settings (resolved here).
    ratio : float
        Fraction of positive training images kept, in (0, 1].
    seed : int
        Seed of the cell: the subsample, the initial weights, the batch order, the image
        sets and the CAVs derive from it.
    progress : bool, default False
        Show progress bars.

    Returns
    -------
    CellResult
    """
    config = config.resolved()
    ratio_key = f"{float(ratio):.6g}"
    started = time.perf_counter()
    training_set = imbalanced_training_set(
        data.train_positive, data.train_negative, ratio, derive_seed(seed, "subsample", ratio_key)
    )
    logger.info(
        "ratio %g, seed %d: training on %d %s and %d %s images (positive share %.4f)",
        ratio,
        seed,
        training_set.n_positive,
        data.positive,
        training_set.n_negative,
        data.negative,
        training_set.positive_share,
    )
    model, training = _train(training_set, config, seed, ratio_key, progress)
    trained = time.perf_counter()

    metrics = evaluate_model(model, data, config.gradient_batch_size)
    evaluated = time.perf_counter()
    logger.info("ratio %g, seed %d: test metrics %s", ratio, seed, _format_metrics(metrics))

    if config.protocol == "tcav":
        runs, tests = score_tcav(model, data, config, seed, progress=progress)
    else:
        runs, tests = score_cav_keras(model, data, training_set, config, seed)
    finished = time.perf_counter()
    seconds = {
        "train": trained - started,
        "evaluate": evaluated - trained,
        "score": finished - evaluated,
        "total": finished - started,
    }
    logger.info(
        "ratio %g, seed %d: done in %.1f s (train %.1f s, score %.1f s)",
        ratio,
        seed,
        seconds["total"],
        seconds["train"],
        seconds["score"],
    )
    return CellResult(
        ratio=float(ratio),
        seed=int(seed),
        protocol=config.protocol,
        n_positive=training_set.n_positive,
        n_negative=training_set.n_negative,
        metrics=metrics,
        training=training,
        runs=runs,
        tests=tests,
        seconds=seconds,
        key=config.cell_key(),
    )


def evaluate_model(model: Any, data: StudyData, batch_size: int = 256) -> dict[str, float]:
    """Measure the model on the test images of both classes.

    A test image is predicted positive when its sigmoid output is > 0.5 (Keras' binary
    accuracy threshold).

    Returns
    -------
    dict of str to float
        ``accuracy`` is the share of correct predictions and ``balanced_accuracy`` the mean
        of the two recalls. ``positive_recall`` is the share of positive test images
        predicted positive, and ``negative_recall`` the same for the negative class.
        ``saturated_share`` is the share of test images whose float32 output is exactly
        0 or 1, where the gradient of the loss vanishes. ``n_test`` counts the images.
    """
    x = scale_images(np.concatenate([data.test_positive, data.test_negative]))
    y = np.concatenate(
        [np.ones(len(data.test_positive), dtype=int), np.zeros(len(data.test_negative), dtype=int)]
    )
    probability = np.asarray(model.predict(x, batch_size=max(batch_size, 256), verbose=0))
    probability = probability.reshape(-1).astype(np.float32)
    predicted = (probability > 0.5).astype(int)
    return {
        "accuracy": float(np.mean(predicted == y)),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "positive_recall": float(recall_score(y, predicted, pos_label=1, zero_division=0)),
        "negative_recall": float(recall_score(y, predicted, pos_label=0, zero_division=0)),
        "saturated_share": float(np.mean((probability == 0.0) | (probability == 1.0))),
        "n_test": float(len(y)),
    }


def _train(
    training_set: ImbalancedSet,
    config: StudyConfig,
    seed: int,
    ratio_key: str,
    progress: bool,
) -> tuple[Any, dict[str, Any]]:
    # The initial weights depend on the seed only, so the cells of one seed start from the
    # same network and differ by their training data alone.
    model = build_keras_cnn(training_set.x.shape[1:], seed=derive_seed(seed, "init"))
    bar = _progress_bar(
        progress,
        total=config.epochs * len(training_set.y),
        desc=f"train ratio {training_set.ratio:g} seed {seed}",
    )
    try:
        log = train_keras_cnn(
            model,
            training_set.x,
            training_set.y,
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            seed=derive_seed(seed, "shuffle", ratio_key),
            on_batch=None if bar is None else (lambda epoch, n: bar.update(n)),
        )
    finally:
        if bar is not None:
            bar.close()
    training = {"loss": list(log.loss), "accuracy": list(log.accuracy), "seconds": log.seconds}
    return model, training


def _progress_bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False)


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())

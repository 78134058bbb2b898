"""Results of the class-imbalance study: one :class:`CellResult` per (ratio, seed)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cav.experiments.config import StudyConfig
from cav.experiments.protocols import RUN_COLUMNS, TEST_COLUMNS

_FLOAT_TEST_COLUMNS = frozenset(
    {
        "mean",
        "sd",
        "ci_low",
        "ci_high",
        "null_mean",
        "zero_share",
        "cav_accuracy",
        "p_value",
        "p_value_rank",
        "p_value_corrected",
    }
)

CELL_FORMAT = 1
"""Version of the cell file layout; files of another version are not reused."""

TEMPORARY_SUFFIX = ".tmp"
"""Suffix of the hidden temporary files that atomic writes rename into place."""


@dataclass
class CellResult:
    """Everything measured in one (ratio, seed) cell of the study.

    Attributes
    ----------
    ratio : float
        Fraction of positive training images kept.
    seed : int
        Study seed of the cell.
    protocol : str
        ``"tcav"`` or ``"cav-keras"``.
    n_positive, n_negative : int
        Training images of each class.
    metrics : dict of str to float
        Model metrics on the test images: ``accuracy``, ``balanced_accuracy``,
        ``positive_recall``, ``negative_recall``, ``saturated_share`` (share of test images
        whose float32 sigmoid output is exactly 0 or 1), ``n_test``.
    training : dict
        ``loss`` and ``accuracy`` per epoch and ``seconds``.
    runs : pandas.DataFrame
        One row per CAV run and class (:data:`cav.experiments.protocols.RUN_COLUMNS`).
    tests : pandas.DataFrame
        One row per (layer, class) (:data:`cav.experiments.protocols.TEST_COLUMNS`).
    seconds : dict of str to float
        Wall-clock time of each step (``train``, ``evaluate``, ``score``, ``total``).
    key : str
        :meth:`StudyConfig.cell_key` of the settings that produced the cell.
    """

    ratio: float
    seed: int
    protocol: str
    n_positive: int
    n_negative: int
    metrics: dict[str, float]
    training: dict[str, Any]
    runs: pd.DataFrame
    tests: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)
    key: str = ""

    @property
    def positive_share(self) -> float:
        """Share of positives among the training images."""
        return self.n_positive / (self.n_positive + self.n_negative)

    @property
    def file_name(self) -> str:
        """Name of the cell's file inside the ``cells`` folder."""
        return cell_file_name(self.ratio, self.seed)

    def to_dict(self) -> dict[str, Any]:
        """Return the cell as JSON-compatible values (NaN becomes ``None``)."""
        return {
            "format": CELL_FORMAT,
            "key": self.key,
            "ratio": self.ratio,
            "seed": self.seed,
            "protocol": self.protocol,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "positive_share": self.positive_share,
            "metrics": _clean(self.metrics),
            "training": _clean(self.training),
            "seconds": _clean(self.seconds),
            "runs": _records(self.runs),
            "tests": _records(self.tests),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CellResult:
        """Rebuild a cell written by :meth:`to_dict`."""
        tests = pd.DataFrame(values["tests"], columns=list(TEST_COLUMNS))
        tests["significant"] = tests["significant"].astype("boolean")
        tests["undefined"] = tests["undefined"].astype(bool)
        for column in TEST_COLUMNS:
            if column in _FLOAT_TEST_COLUMNS:
                tests[column] = tests[column].astype(float)
        tests["weak_cav"] = tests["weak_cav"].astype(bool)
        runs = pd.DataFrame(values["runs"], columns=list(RUN_COLUMNS))
        for column in ("score", "magnitude", "cosine", "zero_share", "cav_accuracy"):
            runs[column] = runs[column].astype(float)
        return cls(
            ratio=float(values["ratio"]),
            seed=int(values["seed"]),
            protocol=str(values["protocol"]),
            n_positive=int(values["n_positive"]),
            n_negative=int(values["n_negative"]),
            metrics={k: _float(v) for k, v in values["metrics"].items()},
            training=values["training"],
            runs=runs,
            tests=tests,
            seconds={k: _float(v) for k, v in values["seconds"].items()},
            key=str(values["key"]),
        )

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write the cell to ``folder/<file_name>`` atomically and return the path.

        The JSON text goes to a temporary file in the same folder that then replaces the
        target with :func:`os.replace`, so an interrupted run leaves either the old file or
        the new one, never a partial file.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.file_name
        write_text_atomic(path, self.to_json())
        return path

    def to_json(self) -> str:
        """Return the text of the cell's file."""
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def reloaded(self) -> CellResult:
        """Return the cell as :meth:`write` then :func:`read_cell` give it back.

        A study builds its outputs from reloaded cells, so that a cell computed in this
        process and one reused by ``resume`` give byte-identical result files.
        """
        return CellResult.from_dict(json.loads(self.to_json()))


def cell_file_name(ratio: float, seed: int) -> str:
    """Return the file name of the (ratio, seed) cell, e.g. ``ratio-0.25_seed-0.json``."""
    return f"ratio-{ratio:g}_seed-{seed}.json"


def read_cell(path: str | os.PathLike[str], key: str) -> CellResult | None:
    """Read a finished cell, or return ``None`` when it is missing, unreadable or stale.

    A cell is stale when its settings key differs from ``key`` or its format is older.
    """
    try:
        values = json.loads(Path(path).read_text())
        if values.get("format") != CELL_FORMAT or values.get("key") != key:
            return None
        return CellResult.from_dict(values)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and :func:`os.replace`.

    The temporary file is named ``.<name>.<random>.tmp`` in the same folder and is
    flushed to disk before the rename, so a reader sees the old file or the whole new
    one. A process killed before the rename leaves only that hidden temporary file, which
    :func:`remove_temporary_files` deletes.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_temporary_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that an interrupted :func:`write_text_atomic` left.

    Returns
    -------
    list of Path
        The files deleted, sorted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = sorted(folder.glob(f".*{TEMPORARY_SUFFIX}"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


@dataclass
class StudyResult:
    """All cells of a study and the settings that produced them.

    Attributes
    ----------
    config : StudyConfig
        Resolved settings.
    cells : list of CellResult
        In the order ratios x seeds of the settings.
    data_source : str
        Where the images came from.
    """

    config: StudyConfig
    cells: list[CellResult]
    data_source: str = ""

    def runs(self) -> pd.DataFrame:
        """Return every run of every cell as one tidy table.

        Returns
        -------
        pandas.DataFrame
            One row per (ratio, seed, layer, class, run): the cell columns ``ratio``,
            ``positive_share``, ``seed``, ``protocol``, the run columns, and the test
            columns ``p_value``, ``p_value_corrected``, ``significant``, ``undefined``, ``note``
            of the run's (layer, class).
        """
        frames = []
        for cell in self.cells:
            tests = cell.tests[
                [
                    "layer",
                    "target",
                    "p_value",
                    "p_value_corrected",
                    "significant",
                    "undefined",
                    "note",
                ]
            ]
            frame = cell.runs.merge(tests, on=["layer", "target"], how="left")
            frames.append(_with_cell_columns(frame, cell))
        return _concat(frames)

    def tests(self) -> pd.DataFrame:
        """Return one row per (ratio, seed, layer, class) with its mean score and test."""
        return _concat([_with_cell_columns(cell.tests.copy(), cell) for cell in self.cells])

    def metrics(self) -> pd.DataFrame:
        """Return one row per (ratio, seed) with the class counts and model metrics.

        Timings are left out, so that the same settings give the same table; they are in
        each cell's ``seconds`` and in ``cav.log``.
        """
        rows = []
        for cell in self.cells:
            row: dict[str, Any] = {
                "ratio": cell.ratio,
                "seed": cell.seed,
                "n_positive": cell.n_positive,
                "n_negative": cell.n_negative,
                "positive_share": cell.positive_share,
            }
            row.update(cell.metrics)
            rows.append(row)
        return pd.DataFrame(rows)


def _with_cell_columns(frame: pd.DataFrame, cell: CellResult) -> pd.DataFrame:
    frame.insert(0, "ratio", cell.ratio)
    frame.insert(1, "positive_share", cell.positive_share)
    frame.insert(2, "seed", cell.seed)
    frame.insert(3, "protocol", cell.protocol)
    return frame


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [_clean(row) for row in frame.to_dict(orient="records")]


def _clean(value: Any) -> Any:
    """Turn NaN and pandas NA into ``None`` and numpy scalars into Python ones."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if value is pd.NA or value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)

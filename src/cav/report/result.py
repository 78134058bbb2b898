"""The result of :func:`cav.run_tcav`: runs, summary, parameters, files and figures."""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cav.errors import InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMAT_NAME = "cav.TCAVResult"
FORMAT_VERSION = 1

# Columns shown by repr(); the full table is summary().
_REPR_COLUMNS = [
    "concept",
    "layer",
    "target",
    "mean",
    "ci_low",
    "ci_high",
    "p_value",
    "p_value_corrected",
    "significant",
    "undefined",
]


class TCAVResult:
    """Every run of a TCAV call, its per-(concept, layer, target) summary and parameters.

    Parameters
    ----------
    runs : pandas.DataFrame
        One row per CAV run and target: ``concept``, ``negative``, ``layer``, ``target``,
        ``run``, ``kind`` (``"concept"`` or ``"null"``), ``score`` (TCAV score),
        ``magnitude``, ``zero_share`` (share of exactly-zero derivatives),
        ``cav_accuracy`` (held-out balanced accuracy), ``n_heldout``, ``n_inputs``. Null
        runs (random set against random set) name the two random sets in ``concept`` and
        ``negative``.
    summary : pandas.DataFrame
        One row per (concept, layer, target); see :meth:`summary`.
    params : dict
        The call's parameters and provenance (JSON-compatible values).
    """

    def __init__(self, runs: pd.DataFrame, summary: pd.DataFrame, params: Mapping[str, Any]):
        if not isinstance(runs, pd.DataFrame) or not isinstance(summary, pd.DataFrame):
            raise InvalidTypeError("runs and summary must be pandas DataFrames")
        self.runs = runs
        self._summary = summary
        self.params = dict(params)

    def summary(self) -> pd.DataFrame:
        """Return one row per (concept, layer, target) with its statistics.

        Columns: ``n_random`` (R) and ``n_inputs``. ``mean``, ``sd`` and the 95%
        t-interval ``ci_low``, ``ci_high`` of the R concept scores. The mean
        ``magnitude``, and ``null_mean``, the mean of the random-set values the concept is
        compared with. The mean held-out ``cav_accuracy`` and ``weak_cav``.
        ``zero_share``, the share of inputs whose derivatives are exactly zero in every
        run, and ``undefined`` (every score NaN). The test's ``test``, ``statistic``,
        ``df``, ``p_value`` and ``p_value_rank`` (calibrated test only), then
        ``p_value_corrected``, ``significant``, ``correction`` and ``alpha``. ``note``
        gives the reason when a p-value is missing or a score undefined.

        Returns
        -------
        pandas.DataFrame
            A copy, so editing it leaves the result unchanged.
        """
        return self._summary.copy()

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Serialise runs, summary and parameters to JSON, written to ``path`` if given.

        NaN and infinite floats are stored as the strings ``"NaN"``, ``"Infinity"`` and
        ``"-Infinity"``, so the file is standard JSON and every value round-trips exactly
        through :meth:`from_json`.

        Returns
        -------
        str
            The JSON text.
        """
        document = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "params": self.params,
            "runs": _table_to_json(self.runs),
            "summary": _table_to_json(self._summary),
        }
        text = json.dumps(document, indent=1, allow_nan=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike[str]) -> TCAVResult:
        """Load a result written by :meth:`to_json`, from a file path or the JSON text."""
        if isinstance(source, str) and source.lstrip().startswith("{"):
            text = source
        else:
            text = Path(source).read_text(encoding="utf-8")
        document = json.loads(text)
        if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
            raise InvalidArgumentError(
                f"source is not a {FORMAT_NAME} JSON document (missing 'format' field)"
            )
        if document.get("format_version") != FORMAT_VERSION:
            raise InvalidArgumentError(
                f"format_version {document.get('format_version')!r} is not supported; "
                f"this version of cav reads {FORMAT_VERSION}"
            )
        runs = _table_from_json(document["runs"])
        summary = _table_from_json(document["summary"])
        return cls(runs, summary, document["params"])

    def to_csv(self, path: str | os.PathLike[str], table: str = "runs") -> None:
        """Write the ``"runs"`` or ``"summary"`` table to a CSV file (no index column)."""
        tables = {"runs": self.runs, "summary": self._summary}
        if table not in tables:
            raise InvalidArgumentError(f"table={table!r} is not supported; use 'runs' or 'summary'")
        tables[table].to_csv(path, index=False)

    def plot(self, **kwargs: Any) -> Figure:
        """Draw the summary; see :func:`cav.report.plots.plot_result` for the options."""
        from cav.report.plots import plot_result

        return plot_result(self, **kwargs)

    def _headline(self) -> str:
        params = self.params
        n_significant = int(self._summary["significant"].sum())
        return (
            f"TCAVResult: {len(params.get('concepts', []))} concept(s) x "
            f"{len(params.get('layers', []))} layer(s) x {len(params.get('targets', []))} "
            f"target(s), R = {params.get('n_random')} random sets, {params.get('test')} test, "
            f"{params.get('correction')} correction, alpha = {params.get('alpha')}: "
            f"{n_significant} of {len(self._summary)} significant"
        )

    def __repr__(self) -> str:
        columns = [name for name in _REPR_COLUMNS if name in self._summary.columns]
        table = self._summary[columns].to_string(index=False, float_format=_format_float)
        return f"{self._headline()}\n{table}"

    def _repr_html_(self) -> str:
        table = self._summary.to_html(index=False, float_format=_format_float, na_rep="NaN")
        return f"<p>{html.escape(self._headline())}</p>\n{table}"


def _format_float(value: float) -> str:
    return f"{value:.3g}"


def _encode(value: Any, dtype_name: str) -> Any:
    if dtype_name.startswith("float"):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        return number
    if dtype_name.startswith("int"):
        return int(value)
    if dtype_name == "bool":
        return bool(value)
    return None if pd.isna(value) else str(value)


def _table_to_json(table: pd.DataFrame) -> dict[str, Any]:
    dtypes = [str(dtype) for dtype in table.dtypes]
    data = [
        [_encode(value, dtype) for value in table[column].tolist()]
        for column, dtype in zip(table.columns, dtypes, strict=True)
    ]
    return {"columns": [str(column) for column in table.columns], "dtypes": dtypes, "data": data}


def _table_from_json(stored: Mapping[str, Any]) -> pd.DataFrame:
    columns = {}
    for name, dtype, values in zip(
        stored["columns"], stored["dtypes"], stored["data"], strict=True
    ):
        if dtype.startswith("float"):
            values = [float(value) for value in values]
        columns[name] = pd.Series(values, dtype=dtype)
    return pd.DataFrame(columns, columns=list(stored["columns"]))

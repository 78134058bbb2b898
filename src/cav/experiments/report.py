"""Tables, figure and files of the class-imbalance study.

:func:`write_outputs` writes, into one folder:

- ``results.csv``: every run of every cell, tidy (:meth:`StudyResult.runs`);
- ``results.json``: the settings, the runs, the per-(layer, class) tests and the model
  metrics;
- ``summary.md``: the cav-keras notebook's table (ratio x layer x class) extended with the
  spread, the p-value, significance and undefined cells, and the model metrics;
- ``tcav_vs_imbalance.png``: TCAV score against the positive-class share, one panel per
  layer.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cav.experiments.networks import LAYER_NAMES
from cav.experiments.results import StudyResult, _clean, write_text_atomic

FIGURE_NAME = "tcav_vs_imbalance.png"
OUTPUT_FILES = ("results.csv", "results.json", "summary.md", FIGURE_NAME)
"""Files that :func:`write_outputs` writes."""

_CLASS_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def summary_table(result: StudyResult) -> pd.DataFrame:
    """Aggregate the tests of every cell into one row per (ratio, layer, class).

    With one seed, ``score`` is the mean of the R concept runs, ``spread`` their standard
    deviation and ``p_value`` the corrected p-value of the cell. With several seeds,
    ``score`` is the mean over seeds of the cell means, ``spread`` the standard deviation of
    those means across seeds and ``p_value`` their median corrected p-value.

    Returns
    -------
    pandas.DataFrame
        Columns ``ratio``, ``positive_share``, ``layer``, ``layer_index``, ``class``,
        ``target``, ``score``, ``spread``, ``p_value``, ``n_seeds``, ``n_significant``,
        ``n_tested``, ``n_undefined``, ``null_mean`` (mean score of the random-vs-random
        runs), ``zero_share``, ``cav_accuracy``, ``note``.
    """
    tests = result.tests()
    if tests.empty:
        return pd.DataFrame()
    rows = []
    keys = ["ratio", "layer_index", "layer", "target", "class"]
    for (ratio, index, layer, target, name), group in tests.groupby(keys, sort=False):
        means = group["mean"].to_numpy(dtype=float)
        defined = means[~np.isnan(means)]
        if len(group) == 1:
            spread = float(group["sd"].iloc[0])
            p_value = float(group["p_value_corrected"].iloc[0])
        else:
            spread = float(np.std(defined, ddof=1)) if defined.size > 1 else math.nan
            p_value = (
                float(np.nanmedian(group["p_value_corrected"]))
                if group["p_value_corrected"].notna().any()
                else math.nan
            )
        significant = group["significant"]
        notes = sorted({str(n) for n in group["note"] if isinstance(n, str) and n})
        rows.append(
            {
                "ratio": ratio,
                "positive_share": float(group["positive_share"].iloc[0]),
                "layer": layer,
                "layer_index": index,
                "class": name,
                "target": target,
                "score": float(defined.mean()) if defined.size else math.nan,
                "spread": spread,
                "p_value": p_value,
                "n_seeds": len(group),
                "n_significant": int(significant.fillna(False).astype(bool).sum()),
                "n_tested": int(significant.notna().sum()),
                "n_undefined": int(group["undefined"].astype(bool).sum()),
                "null_mean": float(group["null_mean"].mean()),
                "zero_share": float(group["zero_share"].mean()),
                "cav_accuracy": float(group["cav_accuracy"].mean()),
                "note": "; ".join(notes),
            }
        )
    return pd.DataFrame(rows)


def metrics_table(result: StudyResult) -> pd.DataFrame:
    """Average the model metrics of each ratio over the seeds.

    Returns
    -------
    pandas.DataFrame
        One row per ratio: ``ratio``, ``n_positive``, ``n_negative``, ``positive_share``,
        the means of ``accuracy``, ``balanced_accuracy``, ``positive_recall``,
        ``negative_recall``, ``saturated_share``, and ``n_seeds``.
    """
    metrics = result.metrics()
    if metrics.empty:
        return metrics
    columns = [
        "n_positive",
        "n_negative",
        "positive_share",
        "accuracy",
        "balanced_accuracy",
        "positive_recall",
        "negative_recall",
        "saturated_share",
    ]
    table = metrics.groupby("ratio", sort=False)[columns].mean().reset_index()
    table["n_seeds"] = metrics.groupby("ratio", sort=False).size().to_numpy()
    return table


def summary_markdown(result: StudyResult) -> str:
    """Render the study as Markdown: settings, the TCAV table and the model metrics."""
    config = result.config
    lines = [
        "# TCAV under class imbalance",
        "",
        f"Positive class **{config.positive}** (label 1, subsampled), negative class "
        f"**{config.negative}** (label 0, all kept), concept **{config.concept}**; "
        f"protocol `{config.protocol}`, seeds {', '.join(str(s) for s in config.seeds)}.",
        f"Data: {result.data_source}.",
        "",
        _protocol_text(result),
        "",
        "## TCAV scores",
        "",
        _markdown_table(_display_scores(summary_table(result))),
        "",
        "## Model on the test images",
        "",
        _markdown_table(_display_metrics(metrics_table(result))),
        "",
    ]
    return "\n".join(lines)


def plot_study(result: StudyResult) -> Figure:
    """Plot the TCAV score against the positive-class share, one panel per layer.

    The x axis is categorical: one position per ratio, from balanced to most imbalanced,
    labelled with the ratio and the real share of positives. Each class is a line with
    error bars of one ``spread`` (see :func:`summary_table`) and a dotted line at the mean
    score of the random-vs-random runs. Filled stars mark scores that are significant (in
    every seed, with several seeds), open circles those that are not, crosses at the
    bottom of the panel mark undefined scores.

    Returns
    -------
    matplotlib.figure.Figure
    """
    table = summary_table(result)
    layers = list(dict.fromkeys(zip(table["layer_index"], table["layer"], strict=True)))
    columns = min(len(layers), 4)
    rows = math.ceil(len(layers) / columns)
    figure = Figure(figsize=(3.6 * columns + 0.6, 3.3 * rows + 1.1), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, sharey=True, squeeze=False)).ravel()
    ratios = list(dict.fromkeys(table["ratio"]))
    shares = table.groupby("ratio", sort=False)["positive_share"].first()
    labels = [f"{r:g}\n({shares[r]:.1%})" for r in ratios]
    classes = list(dict.fromkeys(zip(table["target"], table["class"], strict=True)))

    for axis, (index, layer) in zip(axes, layers, strict=False):
        panel = table[table["layer"] == layer]
        for number, (target, name) in enumerate(classes):
            _plot_class(axis, panel[panel["target"] == target], ratios, name, number, len(classes))
        axis.set_title(f"layer {index} ({layer})" if index >= 0 else f"layer {layer}")
        axis.set_xticks(range(len(ratios)), labels)
        axis.set_ylim(-0.08, 1.05)
        axis.set_xlim(-0.4, len(ratios) - 0.6)
        axis.grid(axis="y", color="0.9")
        axis.set_xlabel("positives kept (positive share)")
    for axis in axes[len(layers) :]:
        axis.set_visible(False)
    axes[0].set_ylabel(f"TCAV score of '{result.config.concept}'")
    handles, _ = axes[0].get_legend_handles_labels()
    handles += [
        Line2D([], [], color="0.3", linestyle=":", label="random-vs-random mean"),
        Line2D([], [], color="0.3", marker="*", markersize=11, linestyle="", label="significant"),
        Line2D(
            [],
            [],
            color="0.3",
            marker="o",
            markerfacecolor="white",
            linestyle="",
            label="not significant",
        ),
        Line2D([], [], color="0.3", marker="x", linestyle="", label="undefined (zero gradient)"),
    ]
    figure.legend(
        handles=handles, loc="outside upper center", ncols=min(len(handles), 6), frameon=False
    )
    return figure


def write_outputs(
    result: StudyResult, output_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write the four output files of the study into ``output_dir``.

    Parameters
    ----------
    result : StudyResult
        The finished study.
    output_dir : str or Path
        Folder, created if missing.
    extra : dict, optional
        More JSON-compatible values to store in ``results.json`` (e.g. versions). Give
        no timings or paths here if the file should repeat byte for byte.

    Returns
    -------
    dict of str to Path
        File name to path of each file written. Every file is written atomically.
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in OUTPUT_FILES}
    runs = result.runs()
    write_text_atomic(paths["results.csv"], runs.to_csv(index=False))
    # Folders are left out of the settings, so the file does not depend on where the data
    # or the cache lie. cav.log records them.
    config = result.config.to_dict()
    for name in ("data_dir", "cache_dir"):
        config.pop(name, None)
    document = {
        "config": config,
        "data_source": result.data_source,
        **(extra or {}),
        "runs": _clean(runs.to_dict(orient="records")),
        "tests": _clean(result.tests().to_dict(orient="records")),
        "metrics": _clean(result.metrics().to_dict(orient="records")),
    }
    write_text_atomic(paths["results.json"], json.dumps(document, indent=1, allow_nan=False))
    write_text_atomic(paths["summary.md"], summary_markdown(result))
    figure = plot_study(result)
    temporary = folder / f".{FIGURE_NAME}.tmp.png"
    figure.savefig(temporary, dpi=130)
    os.replace(temporary, paths[FIGURE_NAME])
    return paths


def _plot_class(
    axis: Any, rows: pd.DataFrame, ratios: list[float], name: str, number: int, n_classes: int
) -> None:
    colour = _CLASS_COLOURS[number % len(_CLASS_COLOURS)]
    # Classes are shifted apart a little so their error bars do not overlap.
    offset = (number - (n_classes - 1) / 2) * 0.08
    rows = rows.set_index("ratio").reindex(ratios)
    x = np.arange(len(ratios)) + offset
    score = rows["score"].to_numpy(dtype=float)
    spread = np.nan_to_num(rows["spread"].to_numpy(dtype=float))
    # Scores lie in [0, 1], so the bars stop at the ends of that range.
    below = np.minimum(spread, np.nan_to_num(score))
    above = np.minimum(spread, 1.0 - np.nan_to_num(score))
    axis.errorbar(x, score, yerr=[below, above], color=colour, capsize=3, linewidth=1.5, label=name)
    axis.plot(x, rows["null_mean"].to_numpy(dtype=float), ":", color=colour, linewidth=1.2)
    significant = (rows["n_significant"] == rows["n_seeds"]) & (rows["n_tested"] > 0)
    tested = rows["n_tested"].to_numpy() > 0
    star = significant.to_numpy() & ~np.isnan(score)
    axis.plot(x[star], score[star], "*", color=colour, markersize=13, zorder=3)
    plain = tested & ~star & ~np.isnan(score)
    axis.plot(x[plain], score[plain], "o", color=colour, markerfacecolor="white", zorder=3)
    undefined = rows["n_undefined"].to_numpy() > 0
    axis.plot(x[undefined], np.full(undefined.sum(), -0.04), "x", color=colour, markersize=9)


def _protocol_text(result: StudyResult) -> str:
    config = result.config
    if config.protocol == "cav-keras":
        return (
            "Protocol `cav-keras` (the cav-keras notebook's procedure): concept images unscaled "
            "(0-255), uniform-noise counterexamples, perceptron CAV, gradient of the binary "
            "cross-entropy, scores on the training images, one run per cell and no test."
        )
    return (
        f"Protocol `tcav`: concept and random images scaled like the inputs, "
        f"{config.random_runs} random sets of {config.random_set_size} images, "
        f"{config.concept_set_size} concept images, `{config.method}` CAVs, logit gradients, "
        f"scores on the test images; `{config.test}` test, Holm correction over the "
        f"layers and classes of each cell, alpha {config.alpha:g}. "
        "Score ± spread: mean ± standard deviation over the random runs (over the seeds "
        "when there are several)."
    )


def _display_scores(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return table
    rows = []
    for row in table.to_dict(orient="records"):
        score = "undefined" if math.isnan(row["score"]) else f"{row['score']:.3f}"
        if not math.isnan(row["spread"]) and not math.isnan(row["score"]):
            score += f" ± {row['spread']:.3f}"
        if row["n_tested"] == 0:
            significant = "no test"
        elif row["n_seeds"] == 1:
            significant = "yes" if row["n_significant"] else "no"
        else:
            significant = f"{row['n_significant']}/{row['n_seeds']} seeds"
        undefined = ""
        if row["n_undefined"]:
            undefined = f"{row['n_undefined']}/{row['n_seeds']} ({row['zero_share']:.0%} zero)"
        accuracy = row["cav_accuracy"]
        rows.append(
            {
                "ratio": f"{row['ratio']:g}",
                "positive share": f"{row['positive_share']:.1%}",
                "layer": _layer_label(row["layer_index"], row["layer"]),
                "class": row["class"],
                "score": score,
                "p (corrected)": "" if math.isnan(row["p_value"]) else f"{row['p_value']:.3g}",
                "significant": significant,
                "undefined": undefined,
                "CAV accuracy": "" if math.isnan(accuracy) else f"{accuracy:.2f}",
            }
        )
    return pd.DataFrame(rows)


def _display_metrics(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return table
    return pd.DataFrame(
        {
            "ratio": [f"{r:g}" for r in table["ratio"]],
            "train images (pos/neg)": [
                f"{p:.0f}/{n:.0f}"
                for p, n in zip(table["n_positive"], table["n_negative"], strict=True)
            ],
            "positive share": [f"{v:.1%}" for v in table["positive_share"]],
            "accuracy": [f"{v:.3f}" for v in table["accuracy"]],
            "balanced accuracy": [f"{v:.3f}" for v in table["balanced_accuracy"]],
            "positive recall": [f"{v:.3f}" for v in table["positive_recall"]],
            "negative recall": [f"{v:.3f}" for v in table["negative_recall"]],
            "saturated outputs": [f"{v:.1%}" for v in table["saturated_share"]],
            "seeds": [str(int(v)) for v in table["n_seeds"]],
        }
    )


def _layer_label(index: int, name: str) -> str:
    if 0 <= index < len(LAYER_NAMES) and LAYER_NAMES[index] == name:
        return f"{index} {name}"
    return str(name)


def _markdown_table(frame: pd.DataFrame) -> str:
    """Render ``frame`` as a GitHub Markdown table of its string values."""
    if frame.empty:
        return "(no results)"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])

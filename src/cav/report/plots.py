"""Figures of TCAV results, drawn on :class:`matplotlib.figure.Figure` objects.

The figures are built without :mod:`matplotlib.pyplot`, so they work under any backend
(Agg included), never open a window, and are not kept alive by pyplot's figure registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cav.report.summary import null_distribution, score_matrix

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from cav.report.result import TCAVResult

_NULL_COLOR = "0.6"
_TARGET_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def plot_result(result: TCAVResult, *, panel_width: float | None = None) -> Figure:
    """Draw each concept's mean TCAV score beside the random sets it is compared with.

    One panel per layer. For each (concept, target) the dot is the mean of the R concept
    scores with its 95% t-interval. The grey points to its right are what the test
    compares it with: the pseudo-concept statistics ``T(N_i)`` of the random sets for the
    calibrated test, or the random-against-random scores for the t-test. A star marks a
    significant result (corrected p-value below alpha), and undefined scores are labelled.

    Parameters
    ----------
    result : TCAVResult
        The result to draw.
    panel_width : float, optional
        Width of one panel in inches; default grows with the number of groups.

    Returns
    -------
    matplotlib.figure.Figure
    """
    params = result.params
    summary = result.summary()
    layers = list(params["layers"])
    groups = [(concept, target) for concept in params["concepts"] for target in params["targets"]]
    width = panel_width if panel_width is not None else max(3.5, 0.9 * len(groups) + 1.2)
    figure = Figure(figsize=(width * len(layers), 4.2), layout="constrained")
    axes = figure.subplots(1, len(layers), sharey=True, squeeze=False)[0]
    for axis, layer in zip(axes, layers, strict=True):
        _draw_layer(axis, result, summary, layer, groups)
    axes[0].set_ylabel("TCAV score")
    _add_legend(axes[-1], params)
    test_name = (
        "calibrated test"
        if params["test"] == "calibrated"
        else f"{params['ttest'].capitalize()} t-test"
    )
    figure.suptitle(
        f"{test_name}, R = {params['n_random']} random sets, "
        f"{params['correction']} correction, alpha = {params['alpha']}"
    )
    return figure


def _draw_layer(
    axis: Axes,
    result: TCAVResult,
    summary: Any,
    layer: str,
    groups: list[tuple[str, int]],
) -> None:
    params = result.params
    targets = list(params["targets"])
    for position, (concept, target) in enumerate(groups):
        row = summary[
            (summary["concept"] == concept)
            & (summary["layer"] == layer)
            & (summary["target"] == target)
        ].iloc[0]
        color = _TARGET_COLORS[targets.index(target) % len(_TARGET_COLORS)]
        matrix = score_matrix(result.runs, concept, layer, target, params["random_sets"])
        null_values = null_distribution(matrix, params["test"])
        _draw_group(axis, position, row, null_values, color)
    axis.axhline(0.5, color="0.3", linewidth=0.8, linestyle="--", zorder=0)
    # Thin lines separate the groups of one concept from the next.
    for position in range(len(targets), len(groups), len(targets)):
        axis.axvline(position - 0.5, color="0.85", linewidth=0.8, zorder=0)
    axis.set_xticks(range(len(groups)))
    labels = [f"{concept}\nclass {target}" for concept, target in groups]
    long_names = max(len(concept) for concept, _ in groups) > 10
    axis.set_xticklabels(
        labels, fontsize=9, rotation=30 if long_names else 0, ha="right" if long_names else "center"
    )
    axis.set_xlim(-0.6, len(groups) - 0.2)
    axis.set_ylim(-0.05, 1.12)
    axis.set_title(f"layer {layer}")
    axis.grid(axis="y", alpha=0.3)


def _draw_group(axis: Axes, position: int, row: Any, null_values: np.ndarray, color: str) -> None:
    finite = null_values[np.isfinite(null_values)]
    if finite.size:
        # Evenly spread offsets instead of random jitter, so the figure is reproducible.
        offsets = np.linspace(-0.08, 0.08, finite.size) if finite.size > 1 else np.zeros(1)
        axis.scatter(position + 0.22 + offsets, np.sort(finite), s=12, color=_NULL_COLOR, zorder=2)
    if row["undefined"]:
        axis.text(position, 0.5, "undefined", ha="center", va="center", rotation=90, fontsize=9)
        return
    mean = row["mean"]
    if np.isfinite(row["ci_low"]):
        error = [[mean - row["ci_low"]], [row["ci_high"] - mean]]
        axis.errorbar(position, mean, yerr=error, fmt="o", color=color, capsize=4, zorder=3)
    else:
        axis.plot(position, mean, "o", color=color, zorder=3)
    if row["significant"]:
        top = row["ci_high"] if np.isfinite(row["ci_high"]) else mean
        axis.text(position, min(top, 1.0) + 0.03, "*", ha="center", va="bottom", fontsize=16)


def _add_legend(axis: Axes, params: dict[str, Any]) -> None:
    null_label = "random sets as pseudo-concepts" if params["test"] == "calibrated" else "null runs"
    handles = [
        Line2D([], [], marker="o", color="0.2", linestyle="", label="concept mean, 95% CI"),
        Line2D([], [], marker="o", color=_NULL_COLOR, linestyle="", markersize=4, label=null_label),
        Line2D([], [], marker="$*$", color="0.2", linestyle="", markersize=9, label="significant"),
    ]
    for index, target in enumerate(params["targets"]):
        color = _TARGET_COLORS[index % len(_TARGET_COLORS)]
        handles.append(Line2D([], [], color=color, linewidth=3, label=f"class {target}"))
    axis.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)

"""Check that cav and captum give the same TCAV scores for identical CAVs.

The two libraries fit their CAVs with differently seeded SGD, so their timed runs give
different CAVs and scores that differ by more than rounding. This check removes that
difference: it fits the CAVs of the t-test design once with :func:`cav.fit_cavs`, on the
same pairs, method, seed and holdout as ``cav.run_tcav``, and

1. confirms that those CAVs give ``run_tcav``'s scores, by scoring them with the adapter's
   gradients (so they are the CAVs ``run_tcav`` used);
2. writes them into a fresh ``save_path`` in captum's CAV file format, with captum's row
   convention (one row per concept id, pointing toward that concept). Then
   ``captum.concept.TCAV.interpret`` loads them instead of training its own, and it
   computes its sign-count scores from its own layer gradients;
3. compares captum's sign-count score of every run with cav's TCAV score of the same run.

A score is the fraction of the n target images with a positive directional derivative, so
two scores can differ only in steps of 1/n. A step appears when the float32 gradients of
the two code paths round a derivative that is within rounding of zero to opposite signs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from _variants import (
    CAV_OPTIONS,
    CONCEPT_NAME,
    TARGET_INDEX,
    null_pairs,
    random_names,
    run_cav,
    to_nchw,
)
from _workload import Workload


def check_identical_cavs(
    workload: Workload,
    torch_model: Any,
    layers: Sequence[int],
    batch_size: int,
    seed: int,
    holdout: float = 0.33,
) -> dict[str, Any]:
    """Run the three steps above and return the per-run differences.

    Returns
    -------
    dict
        ``runs``: one entry per (layer, run) with ``cav_score`` (from ``run_tcav``),
        ``refit_score`` (step 1) and ``captum_score`` (step 3, absent without captum);
        the largest absolute differences, and the number of runs whose scores differ by at
        least one target image.
    """
    import cav

    adapter = cav.wrap(torch_model)
    layer_names = [adapter.resolve_layer(index) for index in layers]
    targets = to_nchw(workload.targets)
    names = random_names(len(workload.random_sets))
    sets = {CONCEPT_NAME: to_nchw(workload.concept)}
    sets.update(
        {name: to_nchw(images) for name, images in zip(names, workload.random_sets, strict=True)}
    )
    pairs = [(CONCEPT_NAME, name) for name in names]
    pairs += [(names[first], names[second]) for first, second in null_pairs(len(names))]

    cav_scores = run_cav(
        torch_model, targets, {CONCEPT_NAME: sets[CONCEPT_NAME]},
        [sets[name] for name in names], layers, batch_size, seed,
    )  # fmt: skip
    activations = {
        name: adapter.activations(images, layer_names, batch_size) for name, images in sets.items()
    }
    gradients = adapter.gradients(
        targets, layer_names, TARGET_INDEX, output="logit", batch_size=batch_size
    )

    directions: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    for layer in layer_names:
        layer_activations = {name: values[layer] for name, values in activations.items()}
        # The same call as run_tcav makes, so the inner products round the same way.
        fitted = cav.fit_cavs(layer_activations, pairs, CAV_OPTIONS["method"], seed, holdout, layer)
        directions[layer] = np.stack([item.direction for item in fitted])
        refit = np.atleast_1d(
            cav.tcav_score(cav.directional_derivatives(gradients[layer], directions[layer]))
        )
        reference = cav_scores[layer]["concept_scores"] + cav_scores[layer]["null_scores"]
        for (concept, negative), cav_score, refit_score in zip(
            pairs, reference, refit, strict=True
        ):
            rows.append(
                {
                    "layer": layer,
                    "concept": concept,
                    "negative": negative,
                    "cav_score": float(cav_score),
                    "refit_score": float(refit_score),
                }
            )

    report: dict[str, Any] = {"n_targets": len(targets), "score_step": 1.0 / len(targets)}
    try:
        captum_scores = _captum_scores(torch_model, targets, pairs, layer_names, directions)
    except ImportError as exc:
        report["captum"] = f"not run: {exc}"
    else:
        for row in rows:
            row["captum_score"] = captum_scores[(row["layer"], row["concept"], row["negative"])]
    report["runs"] = rows
    report.update(_differences(rows, len(targets)))
    return report


def _differences(rows: list[dict[str, Any]], n_targets: int) -> dict[str, Any]:
    """Count the runs whose scores differ by at least one target image.

    captum returns float32 fractions, which differ from the float64 fractions of cav by up
    to about 3e-8 without any target changing sign, so the scores are compared as counts of
    targets, ``round(score * n)``.
    """
    summary: dict[str, Any] = {}
    for other in ("refit_score", "captum_score"):
        if not rows or other not in rows[0]:
            continue
        gaps = np.abs([row["cav_score"] - row[other] for row in rows])
        steps = np.rint(gaps * n_targets).astype(int)
        key = other.removesuffix("_score")
        summary[f"{key}_max_abs_diff"] = float(gaps.max())
        summary[f"{key}_max_diff_targets"] = int(steps.max())
        summary[f"{key}_runs_differing"] = int(np.count_nonzero(steps))
    summary["n_runs"] = len(rows)
    return summary


def _captum_scores(
    torch_model: Any,
    targets: np.ndarray,
    pairs: list[tuple[str, str]],
    layer_names: list[str],
    directions: dict[str, np.ndarray],
) -> dict[tuple[str, str, str], float]:
    """Score the given directions through ``captum.concept.TCAV.interpret``."""
    import torch
    from captum.concept import TCAV, Concept
    from captum.concept._core.cav import CAV as CaptumCAV

    ids = {name: index for index, name in enumerate(dict.fromkeys(n for p in pairs for n in p))}
    concepts = {name: Concept(index, name, None) for name, index in ids.items()}
    experimental_sets = [[concepts[first], concepts[second]] for first, second in pairs]
    logit_model = torch_model[:-1]
    with tempfile.TemporaryDirectory(prefix="captum-check-") as folder:
        save_path = os.path.join(folder, "cav")
        model_id = "identical_cavs"
        tcav = TCAV(logit_model, layer_names, model_id=model_id, save_path=save_path)
        for layer in layer_names:
            for column, concept_set in enumerate(experimental_sets):
                direction = torch.as_tensor(directions[layer][column], dtype=torch.float32)
                stats = _captum_stats(concept_set, direction)
                CaptumCAV(concept_set, layer, stats, save_path, model_id).save()
        scores = tcav.interpret(torch.from_numpy(targets), experimental_sets, target=0)

    found = {}
    for (first, second), concept_set in zip(pairs, experimental_sets, strict=True):
        key = "-".join(str(item.id) for item in concept_set)
        for layer in layer_names:
            found[(layer, first, second)] = float(scores[key][layer]["sign_count"][0])
    return found


def _captum_stats(concept_set: list[Any], direction: Any) -> dict[str, Any]:
    """Build captum's CAV statistics: rows in sorted class order, each toward its class.

    captum stores ``weights`` of shape (2, d) with ``classes`` sorted by concept id. Its row
    for the first concept of the set is the direction toward that concept. The classes are
    int32, the dtype captum itself stores and its loader accepts.
    """
    import torch

    first, second = concept_set
    toward = {first.id: direction, second.id: -direction}
    classes = sorted(toward)
    weights = torch.stack([toward[class_id] for class_id in classes])
    return {"weights": weights, "classes": np.array(classes, dtype=np.int32)}

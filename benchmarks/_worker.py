"""One measurement in a fresh process: load the workload, set up a variant, time one call.

The result goes to the JSON file named by ``--result``: the wall time, the resident memory
before and during the call (see :mod:`_measure`), the variant's scores and p-values, and for
``cav-torch`` and ``cav-keras`` the time of each phase of ``run_tcav``.
"""

from __future__ import annotations

import os

# Keras reads its backend once, at import; the parent passes it in the environment.
os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from _measure import measure
from _workload import Workload, load_workload

logger = logging.getLogger(__name__)

# Private steps of cav.pipeline.run timed separately when they exist; the benchmark only
# wraps them with a timer and works without them.
_PIPELINE_PHASES = {
    "_compute_activations": "activations",
    "_fit_all_cavs": "fit CAVs",
    "_score_targets": "gradients and scores",
}


def run_worker(args: argparse.Namespace) -> int:
    """Run the variant ``args.worker`` once and write its result to ``args.result``."""
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")
    workload = subset_workload(load_workload(Path(args.workload)), args.targets, args.random_runs)
    run = _run_check if args.worker == "check" else _run_timed
    result = run(workload, args)
    result["config"] = {
        "variant": args.worker,
        "targets": len(workload.targets),
        "random_runs": len(workload.random_sets),
        "set_size": len(workload.concept),
        "layers": list(args.layers),
        "batch_size": args.batch_size,
        "keras_backend": os.environ["KERAS_BACKEND"],
    }
    Path(args.result).write_text(json.dumps(result))
    return 0


def subset_workload(workload: Workload, targets: int, random_runs: int) -> Workload:
    """Take ``targets`` target images (repeating the stored ones) and the first random sets."""
    if random_runs > len(workload.random_sets):
        raise ValueError(
            f"--random-runs {random_runs} exceeds the {len(workload.random_sets)} random sets "
            "stored in the workload"
        )
    order = np.arange(targets) % len(workload.targets)
    return replace(
        workload,
        targets=np.ascontiguousarray(workload.targets[order]),
        random_sets=workload.random_sets[:random_runs],
    )


def _run_timed(workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    import _variants

    variant = args.worker
    if variant == "floor":
        prepared = _variants.setup_floor(workload, args.layers, args.batch_size)
    elif variant == "floor-keras":
        prepared = _variants.setup_floor_keras(workload, args.layers, args.batch_size)
    elif variant == "captum":
        prepared = _variants.setup_captum(workload, args.layers, args.batch_size, args.seed)
    else:
        framework = variant.removeprefix("cav-")
        prepared = _variants.setup_cav(workload, args.layers, args.batch_size, args.seed, framework)
    _warm_up(workload, args.batch_size)

    phases: dict[str, float] = {}
    with _timed_pipeline_phases(phases if variant.startswith("cav-") else None):
        output, measurement = measure(prepared.call)
    result: dict[str, Any] = {
        "variant": variant,
        "seconds": measurement.seconds,
        "cpu_seconds": measurement.cpu_seconds,
        "rss_before": measurement.rss_before,
        "rss_peak": measurement.rss_peak,
        "rss_growth": measurement.rss_growth,
        "process_max_rss": measurement.process_max_rss,
        "details": prepared.details,
        "layer_widths": _layer_widths(workload, args.layers),
    }
    if phases:
        result["phases_s"] = phases
    if variant.startswith("floor"):
        result["details"].update(output)
    else:
        result["scores"] = output
    return result


def _warm_up(workload: Workload, batch_size: int) -> None:
    """Run the PyTorch CNN forward and backward on one batch, outside the timed call.

    This pays the one-time costs of the first call (thread pools, kernel selection) before
    timing, equally for every variant.
    """
    import torch
    from _variants import build_models, to_nchw

    keras_model, torch_model = build_models(workload)
    images = workload.targets[:batch_size]
    batch = torch.from_numpy(to_nchw(images)).requires_grad_(True)
    torch_model(batch).sum().backward()
    keras_model(images, training=False)


def _layer_widths(workload: Workload, layers: list[int]) -> dict[str, int]:
    import torch
    from _variants import build_models, to_nchw

    _, torch_model = build_models(workload)
    widths = {}
    with torch.no_grad():
        values = torch.from_numpy(to_nchw(workload.targets[:1]))
        for index, module in enumerate(torch_model):
            values = module(values)
            if index in layers:
                widths[str(index)] = int(values[0].numel())
    return widths


@contextmanager
def _timed_pipeline_phases(phases: dict[str, float] | None) -> Iterator[None]:
    """Add the time spent in each step of ``cav.pipeline.run`` to ``phases``."""
    if phases is None:
        yield
        return
    from cav.pipeline import run as pipeline

    originals = {name: getattr(pipeline, name, None) for name in _PIPELINE_PHASES}
    try:
        for name, original in originals.items():
            if original is not None:
                setattr(pipeline, name, _timer(original, _PIPELINE_PHASES[name], phases))
        yield
    finally:
        for name, original in originals.items():
            if original is not None:
                setattr(pipeline, name, original)


def _timer(
    function: Callable[..., Any], label: str, phases: dict[str, float]
) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            phases[label] = phases.get(label, 0.0) + time.perf_counter() - start

    return timed


def _run_check(workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    from _check import check_identical_cavs
    from _variants import build_models

    _, torch_model = build_models(workload)
    return check_identical_cavs(workload, torch_model, args.layers, args.batch_size, args.seed)

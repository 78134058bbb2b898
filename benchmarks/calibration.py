"""Measure the false-positive rate and power of run_tcav's tests on toy models.

Each trial builds a seeded numpy MLP (:class:`cav.pipeline.toy.ToyMLP`) of a given input
width. It draws inputs, a random pool and two concepts from the same standard normal
distribution, and moves one concept along the model's mean class-1 input gradient
("planted") while the other stays as drawn ("null"). Then it runs :func:`cav.run_tcav`
with the calibrated test. The t-test of the TCAV paper is computed from the same runs (its cycle
of null runs is a subset of the round robin), so both tests see identical CAVs.

Layers: ``features`` (the input, followed by a ReLU layer, so gradients vary between
inputs) and ``hidden`` (the ReLU output, followed by a linear head, so every input has
the same gradient and every TCAV score is 0 or 1).

Reported per width, layer and test, at an uncorrected level of 0.05: the false-positive
rate of the null concept and the power for the planted one, each with a 95%
Clopper-Pearson interval, and the power at the level where each test's observed
false-positive rate is 0.05 (size-adjusted power).

Usage::

    python benchmarks/calibration.py --widths 16 64 256 --trials 200 --output calibration.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

import cav
from cav.core import stats
from cav.errors import WeakCAVWarning
from cav.pipeline.toy import make_toy_mlp
from cav.report.summary import score_matrix

LAYERS = ("features", "hidden")


@dataclass(frozen=True)
class Setting:
    """One toy problem: widths, sizes and the planted concept's shift."""

    width: int
    n_random: int = 10
    set_size: int = 50
    n_inputs: int = 200
    hidden: int = 32
    shift: float = 1.0


def run_trial(setting: Setting, trial: int) -> dict[tuple[str, str, str], float]:
    """Return the p-value of each (concept, layer, test) of one seeded trial."""
    rng = np.random.default_rng([setting.width, trial])
    model = make_toy_mlp(setting.width, hidden=setting.hidden, seed=trial)
    inputs = rng.normal(size=(setting.n_inputs, setting.width))
    gradient = model.gradients(inputs, ["features"], 1)["features"].mean(axis=0)
    direction = gradient / np.linalg.norm(gradient)

    concepts = {
        "null": rng.normal(size=(setting.set_size, setting.width)),
        "planted": rng.normal(size=(setting.set_size, setting.width)) + setting.shift * direction,
    }
    pool = rng.normal(size=(setting.n_random * setting.set_size, setting.width))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakCAVWarning)
        result = cav.run_tcav(
            model,
            inputs,
            1,
            concepts,
            random_pool=pool,
            layers=list(LAYERS),
            n_random=setting.n_random,
            correction="none",
            seed=trial,
        )
    return trial_p_values(result)


def trial_p_values(result: cav.TCAVResult) -> dict[tuple[str, str, str], float]:
    """Return the calibrated, rank and t-test p-values of each (concept, layer) of a run."""
    p_values = {}
    for row in result.summary().itertuples(index=False):
        p_values[(row.concept, row.layer, "calibrated")] = row.p_value
        p_values[(row.concept, row.layer, "rank")] = row.p_value_rank
        matrix = score_matrix(result.runs, row.concept, row.layer, 1, result.params["random_sets"])
        # The same round robin tested on the TCAV scores instead of the cosines.
        on_scores = stats.calibrated_test(stats.set_statistics(matrix))
        p_values[(row.concept, row.layer, "calibrated_score")] = on_scores.p_value
        ttest = stats.ttest_scores(matrix[0, 1:], stats.cycle_scores(matrix))
        p_values[(row.concept, row.layer, "ttest")] = ttest.p_value
    return p_values


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Return the exact binomial interval of a rate (Clopper-Pearson)."""
    tail = (1.0 - confidence) / 2.0
    low = scipy_stats.beta.ppf(tail, successes, trials - successes + 1) if successes else 0.0
    high = (
        scipy_stats.beta.ppf(1.0 - tail, successes + 1, trials - successes)
        if successes < trials
        else 1.0
    )
    return float(low), float(high)


def summarize(
    p_values: list[dict],
    width: int | str,
    layers: Sequence[str] = LAYERS,
    effect: str = "planted",
    alpha: float = 0.05,
) -> list[dict]:
    """Turn the trials' p-values into rates with intervals."""
    rows = []
    for layer in layers:
        for test in ("calibrated", "calibrated_score", "rank", "ttest"):
            null = np.array([trial[("null", layer, test)] for trial in p_values])
            planted = np.array([trial[(effect, layer, test)] for trial in p_values])
            n_trials = len(null)
            false_positives = int(np.sum(null < alpha))
            detections = int(np.sum(planted < alpha))
            # Size-adjusted power: reject below the empirical alpha-quantile of null p-values.
            threshold = float(np.quantile(np.nan_to_num(null, nan=1.0), alpha, method="lower"))
            adjusted = int(np.sum(planted < threshold)) if threshold > 0 else 0
            rows.append(
                {
                    "width": width,
                    "layer": layer,
                    "test": test,
                    "trials": n_trials,
                    "false_positive_rate": false_positives / n_trials,
                    "false_positive_interval": clopper_pearson(false_positives, n_trials),
                    "power": detections / n_trials,
                    "power_interval": clopper_pearson(detections, n_trials),
                    "size_adjusted_power": adjusted / n_trials,
                    "undefined": int(np.isnan(null).sum() + np.isnan(planted).sum()),
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| width | layer | test | trials | false-positive rate [95% CI] | power [95% CI] "
        "| size-adjusted power |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        fp_low, fp_high = row["false_positive_interval"]
        power_low, power_high = row["power_interval"]
        lines.append(
            f"| {row['width']} | {row['layer']} | {row['test']} | {row['trials']} "
            f"| {row['false_positive_rate']:.3f} [{fp_low:.3f}, {fp_high:.3f}] "
            f"| {row['power']:.3f} [{power_low:.3f}, {power_high:.3f}] "
            f"| {row['size_adjusted_power']:.3f} |"
        )
    return "\n".join(lines)


def train_cifar_cnn(data_dir: str, seed: int, epochs: int) -> tuple[object, dict]:
    """Train the cav-keras notebook's CNN (PyTorch build) on CIFAR-10 ship (1) vs bird (0).

    Returns the model and the images needed by the trials, scaled to [0, 1], NCHW.
    """
    import torch

    from cav.data import load_classes
    from cav.experiments.networks import build_torch_cnn

    def scaled(images: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0

    train = load_classes("cifar10", ["ship", "bird"], "train", data_dir)
    test = load_classes("cifar10", ["ship"], "test", data_dir)
    pool_classes = [name for name in CIFAR100_POOL_CLASSES if name != "sea"]
    pool = load_classes("cifar100", pool_classes, "train", data_dir)
    sea = load_classes("cifar100", ["sea"], "train", data_dir)["sea"]

    images = scaled(np.concatenate([train["ship"], train["bird"]]))
    labels = np.concatenate([np.ones(len(train["ship"])), np.zeros(len(train["bird"]))])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_torch_cnn()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_function = torch.nn.BCELoss()
        rng = np.random.default_rng(seed)
        model.train()
        for _ in range(epochs):
            order = rng.permutation(len(images))
            for start in range(0, len(order), 64):
                batch = order[start : start + 64]
                optimizer.zero_grad()
                output = model(torch.from_numpy(images[batch]))[:, 0]
                loss = loss_function(output, torch.from_numpy(labels[batch]).float())
                loss.backward()
                optimizer.step()
        model.eval()
    data = {
        "inputs": scaled(test["ship"][:200]),
        "pool": scaled(np.concatenate(list(pool.values()))),
        "sea": scaled(sea),
    }
    return model, data


# CIFAR-100 classes whose training images form the random pool (sea is the concept).
CIFAR100_POOL_CLASSES = [
    "apple",
    "bed",
    "bicycle",
    "bottle",
    "bridge",
    "butterfly",
    "castle",
    "chair",
    "cloud",
    "couch",
    "crab",
    "forest",
    "girl",
    "house",
    "keyboard",
    "lamp",
    "lawn_mower",
    "lion",
    "motorcycle",
    "mountain",
    "mushroom",
    "orange",
    "palm_tree",
    "pickup_truck",
    "plain",
    "rabbit",
    "road",
    "rocket",
    "rose",
    "skyscraper",
    "snail",
    "table",
    "tank",
    "tiger",
    "train",
    "tulip",
    "wardrobe",
    "willow_tree",
    "wolf",
    "worm",
]
CIFAR_LAYERS = ["5", "11", "14"]


def run_cifar_trials(
    model: object, data: dict, trials: int, n_random: int, set_size: int
) -> list[dict[tuple[str, str, str], float]]:
    """Run TCAV for the sea concept and a random concept drawn from the pool, per trial."""
    results = []
    for trial in range(trials):
        rng = np.random.default_rng([2018, trial])
        order = rng.permutation(len(data["pool"]))
        random_concept = data["pool"][order[:set_size]]
        pool = data["pool"][order[set_size : set_size * (n_random + 1)]]
        sea = data["sea"][rng.permutation(len(data["sea"]))[:set_size]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WeakCAVWarning)
            result = cav.run_tcav(
                model,
                data["inputs"],
                1,
                {"null": random_concept, "sea": sea},
                random_pool=pool,
                layers=CIFAR_LAYERS,
                n_random=n_random,
                correction="none",
                seed=trial,
            )
        results.append(trial_p_values(result))
    return results


def machine_description() -> dict[str, str]:
    import sklearn

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "cav": cav.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--widths",
        type=int,
        nargs="*",
        default=[16, 64, 256],
        help="input widths of the toy models (default: 16 64 256; none to skip them)",
    )
    parser.add_argument("--trials", type=int, default=200, help="seeded trials per width")
    parser.add_argument("--random-runs", type=int, default=10, help="random sets R per run")
    parser.add_argument(
        "--set-size", type=int, default=50, help="images per concept and random set"
    )
    parser.add_argument(
        "--shift",
        type=float,
        default=1.0,
        help="distance the planted concept is moved along the gradient",
    )
    parser.add_argument("--output", help="JSON file for the rates and the machine description")
    parser.add_argument("--cifar-dir", help="folder with the CIFAR-10/100 data; adds real trials")
    parser.add_argument("--cifar-trials", type=int, default=100, help="trials on CIFAR")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the CIFAR CNN")
    args = parser.parse_args(argv)

    all_rows = []
    started = time.perf_counter()
    if args.cifar_dir:
        train_start = time.perf_counter()
        model, data = train_cifar_cnn(args.cifar_dir, seed=0, epochs=args.epochs)
        print(f"CIFAR CNN trained in {time.perf_counter() - train_start:.0f} s", file=sys.stderr)
        trial_start = time.perf_counter()
        p_values = run_cifar_trials(model, data, args.cifar_trials, args.random_runs, args.set_size)
        all_rows.extend(summarize(p_values, "cifar", CIFAR_LAYERS, effect="sea"))
        elapsed = time.perf_counter() - trial_start
        print(f"CIFAR: {args.cifar_trials} trials in {elapsed:.0f} s", file=sys.stderr)
    for width in args.widths:
        setting = Setting(width, args.random_runs, args.set_size, shift=args.shift)
        width_start = time.perf_counter()
        p_values = [run_trial(setting, trial) for trial in range(args.trials)]
        rows = summarize(p_values, width)
        all_rows.extend(rows)
        elapsed = time.perf_counter() - width_start
        print(f"width {width}: {args.trials} trials in {elapsed:.0f} s", file=sys.stderr)
    print(format_table(all_rows))
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s on {machine_description()}", file=sys.stderr)
    if args.output:
        document = {
            "arguments": vars(args),
            "machine": machine_description(),
            "seconds": total,
            "rows": all_rows,
        }
        with open(args.output, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

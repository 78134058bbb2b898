"""Benchmark ``cav.run_tcav`` against captum's TCAV and against the cost floor.

Workload W1 is the TCAV experiment of the class-imbalance study. It uses the study's CNN
(PyTorch ``nn.Sequential`` and Keras, same weights) and 1,000 CIFAR-10 ship test images as
targets. The concept is 200 CIFAR-100 sea images, against 20 random sets of 200 other
CIFAR-100 images. Each of the layers 1, 5, 7 and 11 gets 20 concept runs and 20 null runs,
with hinge-loss SGD CAVs (alpha 0.01) on both sides and the t-test of the TCAV paper.

Variants, each timed in a fresh subprocess after the images and models are loaded:

- ``cav-torch`` and ``cav-keras``: one ``cav.run_tcav`` call (``method="sgd"``,
  ``output="logit"``, ``test="ttest"``, Student's t-test).
- ``captum``: ``captum.concept.TCAV.interpret`` on the CNN without its final Sigmoid, so
  that it differentiates the logit as cav does, then ``scipy.stats.ttest_ind`` per layer.
- ``floor``: the framework passes any implementation needs, in plain PyTorch. They are
  one forward and backward pass over the targets with the gradients at the layers, and one
  forward pass over the concept and random images with their activations at the layers.
- ``floor-keras``: the same passes through the Keras CNN's layers, under Keras's torch
  backend (left out of the default variants under another backend).

Suites: ``w1`` (medians, ratios, memory), ``check`` (same scores for identical CAVs),
``scaling`` (time against inputs, random runs, layers and batch size) and ``memory`` (peak memory of
``run_tcav`` against the number of targets at the widest layer). ``--smoke`` runs a tiny
version of ``w1`` and ``check`` in under a minute, mostly process start-up.

Usage::

    python benchmarks/bench_tcav.py --suite all --json bench.json
    python benchmarks/bench_tcav.py --smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from _workload import WorkloadSpec, prepare_workload, spec_as_dict  # noqa: E402

logger = logging.getLogger("bench_tcav")

VARIANTS = ("cav-torch", "cav-keras", "captum", "floor", "floor-keras")
SUITES = ("w1", "check", "scaling", "memory")
DEFAULT_DATA_DIR = BENCH_DIR.parents[1] / "shared" / "data"
MIB = 1024 * 1024
PHASES = ("activations", "fit CAVs", "gradients and scores")
# The CIFAR-10 test split has 1,000 ship images; larger target counts repeat them.
UNIQUE_TARGETS = 1000
LAYER_1_WIDTH = 32 * 32 * 32


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with ``--worker``, one timed variant) and return the exit code."""
    args = parse_args(argv)
    if args.worker:
        from _worker import run_worker

        return run_worker(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.smoke:
        apply_smoke(args)
    report = run_benchmark(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=_json_default))
        logger.info("results written to %s", args.json)
    return 0 if not report.get("failures") else 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--suite",
        nargs="+",
        default=["w1", "check"],
        choices=[*SUITES, "all"],
        help="what to run; 'all' adds scaling and memory",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=VARIANTS,
        help="variants of the w1 suite",
    )

    parser.add_argument("--targets", type=int, default=1000, help="target images")
    parser.add_argument(
        "--random-runs", type=int, default=20, help="random sets R: R concept and R null runs"
    )
    parser.add_argument("--set-size", type=int, default=200, help="images per concept/random set")
    parser.add_argument(
        "--layers", type=int, nargs="+", default=[1, 5, 7, 11], help="layer indices of the CNN"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each variant")
    parser.add_argument("--batch-size", type=int, default=64, help="images per pass, all variants")
    parser.add_argument("--seed", type=int, default=0, help="seed of images, model and CAVs")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("CAV_TEST_DATA_DIR", str(DEFAULT_DATA_DIR)),
        help="folder with cifar-10-jpg.tar.gz and cifar-100-jpg.tar.gz; "
        "$CAV_TEST_DATA_DIR sets the default",
    )
    parser.add_argument("--synthetic", action="store_true", help="uniform-noise images, no data")
    parser.add_argument(
        "--train-images",
        type=int,
        default=2000,
        help="CIFAR-10 images for a brief training of the CNN; 0 keeps random weights",
    )
    parser.add_argument("--train-epochs", type=int, default=1, help="training epochs of the CNN")
    parser.add_argument(
        "--keras-backend",
        default=os.environ.get("KERAS_BACKEND", "torch"),
        choices=["torch", "tensorflow", "jax"],
        help="Keras backend of the cav-keras variant; $KERAS_BACKEND sets the default",
    )
    parser.add_argument(
        "--scaling-targets",
        type=int,
        nargs="+",
        default=[250, 500, 1000, 2000],
        help="target counts of the scaling suite",
    )
    parser.add_argument(
        "--scaling-random-runs",
        type=int,
        nargs="+",
        default=[5, 10, 20],
        help="values of R in the scaling suite",
    )
    parser.add_argument(
        "--scaling-batch-sizes",
        type=int,
        nargs="+",
        default=[64, 256],
        help="batch sizes of the scaling suite (it also runs each of --layers alone)",
    )
    parser.add_argument("--scaling-repeats", type=int, default=1, help="timed runs per row")
    parser.add_argument(
        "--memory-targets",
        type=int,
        nargs="+",
        default=[2000, 5000, 10000],
        help="target counts of the memory suite",
    )
    parser.add_argument("--memory-layer", type=int, default=1, help="layer of the memory suite")

    parser.add_argument("--json", help="write every measurement to this JSON file")
    parser.add_argument("--workdir", help="folder for the workload file; None: a temporary folder")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes and random weights, for CI (under a minute); overrides the sizes above",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")

    # Internal: run one variant and write its measurement (used by the subprocesses).
    parser.add_argument("--worker", choices=[*VARIANTS, "check"], help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if "all" in args.suite:
        args.suite = list(SUITES)
    if args.keras_backend != "torch" and "floor-keras" in args.variants:
        if args.variants != list(VARIANTS):
            parser.error(
                f"--variants floor-keras runs under Keras's torch backend, not "
                f"--keras-backend {args.keras_backend}; drop it or use --keras-backend torch"
            )
        args.variants.remove("floor-keras")
    archive = Path(args.data_dir) / "cifar-10-jpg.tar.gz"
    if not args.worker and not args.synthetic and not archive.exists():
        parser.error(
            f"--data-dir {args.data_dir}: {archive.name} not found there; name the folder "
            "with the CIFAR archives, or pass --synthetic for noise images"
        )
    return args


def apply_smoke(args: argparse.Namespace) -> None:
    """Shrink every size so that the whole run takes under a minute."""
    args.targets = 16
    args.random_runs = 3
    args.set_size = 12
    args.repeats = 1
    args.train_images = 0
    args.scaling_targets = [8, 16]
    args.scaling_random_runs = [2, 3]
    args.scaling_batch_sizes = [8, 16]
    args.memory_targets = [16, 32]


# Orchestration ---------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the workload once, then run the selected suites; return every measurement."""
    with tempfile.TemporaryDirectory(prefix="bench-tcav-") as temporary:
        workdir = Path(args.workdir or temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        spec = WorkloadSpec(
            targets=min(UNIQUE_TARGETS, max(_all_target_counts(args))),
            random_runs=max(args.random_runs, *args.scaling_random_runs),
            set_size=args.set_size,
            seed=args.seed,
            train_images=args.train_images,
            train_epochs=args.train_epochs,
            data_dir=str(args.data_dir),
            synthetic=args.synthetic,
        )
        workload_path = workdir / "workload.npz"
        os.environ.setdefault("KERAS_BACKEND", args.keras_backend)
        preparation = prepare_workload(spec, workload_path)

        report: dict[str, Any] = {
            "machine": machine_info(),
            "command": [Path(sys.executable).name, *sys.argv],
            "workload": spec_as_dict(spec),
            "settings": {
                "targets": args.targets,
                "random_runs": args.random_runs,
                "layers": args.layers,
                "repeats": args.repeats,
                "batch_size": args.batch_size,
                "keras_backend": args.keras_backend,
                "smoke": args.smoke,
            },
            "preparation_s": preparation,
            "failures": [],
        }
        if "captum" in args.variants and not _captum_installed():
            # captum is in the "bench" extra only; without it the other variants still run.
            args.variants = [variant for variant in args.variants if variant != "captum"]
            report["skipped"] = [
                'captum: not installed (pip install -c constraints.txt -e ".[bench]")'
            ]
            logger.warning("captum is not installed; its variant is skipped")
        runner = Runner(args, workload_path, report["failures"])
        if "w1" in args.suite:
            report["w1"] = run_w1(args, runner)
        if "check" in args.suite:
            report["check"] = runner.run("check", args.targets, args.random_runs, args.layers)
        if "scaling" in args.suite:
            report["scaling"] = run_scaling(args, runner)
        if "memory" in args.suite:
            report["memory"] = run_memory(args, runner)
        report["machine"]["load_average_end"] = os.getloadavg()
    return report


def _captum_installed() -> bool:
    try:
        import captum  # noqa: F401
    except ImportError:
        return False
    return True


def _all_target_counts(args: argparse.Namespace) -> list[int]:
    counts = [args.targets]
    if "scaling" in args.suite:
        counts += args.scaling_targets
    if "memory" in args.suite:
        counts += args.memory_targets
    return counts


class Runner:
    """Start one subprocess per measurement and collect what it writes."""

    def __init__(self, args: argparse.Namespace, workload: Path, failures: list[Any]) -> None:
        self.args = args
        self.workload = workload
        self.failures = failures

    def run(
        self,
        variant: str,
        targets: int,
        random_runs: int,
        layers: Sequence[int],
        batch_size: int | None = None,
    ) -> dict[str, Any] | None:
        """Run ``variant`` in a fresh Python process and return its result, or None on failure."""
        result_path = self.workload.with_name(f"result-{variant}-{time.monotonic_ns()}.json")
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker", variant,
            "--workload", str(self.workload),
            "--result", str(result_path),
            "--targets", str(targets),
            "--random-runs", str(random_runs),
            "--layers", *map(str, layers),
            "--batch-size", str(batch_size or self.args.batch_size),
            "--seed", str(self.args.seed),
        ]  # fmt: skip
        env = {**os.environ, "KERAS_BACKEND": self.args.keras_backend}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        logger.info(
            "%s: %d targets, R=%d, layers %s, batch size %d",
            variant,
            targets,
            random_runs,
            list(layers),
            batch_size or self.args.batch_size,
        )
        try:
            completed = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.args.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            error = f"timed out after {self.args.timeout} s"
            self.failures.append({"variant": variant, "error": error})
            logger.error("%s timed out after %s s", variant, self.args.timeout)
            return None
        if completed.returncode != 0 or not result_path.exists():
            tail = completed.stderr[-3000:]
            self.failures.append(
                {"variant": variant, "returncode": completed.returncode, "stderr": tail}
            )
            logger.error("%s failed with exit code %d:\n%s", variant, completed.returncode, tail)
            return None
        result: dict[str, Any] = json.loads(result_path.read_text())
        result_path.unlink()
        if "seconds" in result:
            logger.info(
                "%s: %.2f s, peak RSS %.0f MiB above %.0f MiB before the call",
                variant,
                result["seconds"],
                result["rss_growth"] / MIB,
                result["rss_before"] / MIB,
            )
        return result


def run_w1(args: argparse.Namespace, runner: Runner) -> dict[str, Any]:
    """Time every variant ``repeats`` times, interleaved, and summarise medians and ratios.

    The variants run in turn within each repeat, and the order rotates from one repeat to
    the next, so slow drifts of the machine's load spread over all variants.
    """
    variants = list(args.variants)
    measurements: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    for repeat in range(args.repeats):
        shift = repeat % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            result = runner.run(variant, args.targets, args.random_runs, args.layers)
            if result is not None:
                measurements[variant].append(result)

    summary = {variant: summarise(results) for variant, results in measurements.items()}
    return {
        "summary": summary,
        "ratios": ratios(summary),
        "agreement": agreement(measurements),
        "measurements": measurements,
    }


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, minimum and maximum time and the largest memory figures of one variant."""
    if not results:
        return {"runs": 0}
    seconds = [result["seconds"] for result in results]
    cpu_seconds = [result["cpu_seconds"] for result in results]
    return {
        "runs": len(results),
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "median_cpu_s": statistics.median(cpu_seconds),
        "rss_before_mib": max(result["rss_before"] for result in results) / MIB,
        "rss_growth_mib": max(result["rss_growth"] for result in results) / MIB,
        "process_max_rss_mib": max(result["process_max_rss"] for result in results) / MIB,
        "phases_median_s": {
            phase: statistics.median(result["phases_s"].get(phase, 0.0) for result in results)
            for phase in PHASES
            if all(result.get("phases_s") for result in results)
        },
    }


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Ratios captum / cav and cav / floor: of the median wall times, of the fastest runs,
    and of the median CPU times.

    On a shared machine the fastest run is the least disturbed one, and CPU time depends
    less on other processes than wall time, so both ratios are given beside the median.
    """
    found: dict[str, dict[str, float]] = {}
    for numerator, denominator in (
        ("captum", "cav-torch"),
        ("captum", "cav-keras"),
        ("cav-torch", "floor"),
        ("cav-keras", "floor"),
        ("cav-keras", "floor-keras"),
        ("captum", "floor"),
    ):
        top = summary.get(numerator, {})
        bottom = summary.get(denominator, {})
        if top.get("runs") and bottom.get("runs"):
            found[f"{numerator} / {denominator}"] = {
                "median": top["median_s"] / bottom["median_s"],
                "min": top["min_s"] / bottom["min_s"],
                "median_cpu": top["median_cpu_s"] / bottom["median_cpu_s"],
            }
    return found


def agreement(measurements: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Compare the scores and p-values of the variants' first runs, layer by layer.

    cav-torch and cav-keras fit CAVs from the same activations up to float rounding.
    captum fits its own CAVs with differently seeded SGD, so its scores differ by the
    spread of the CAV fit, and only its p-values are comparable in size.
    """
    first = {
        variant: results[0]["scores"]
        for variant, results in measurements.items()
        if results and results[0].get("scores")
    }
    comparison: dict[str, Any] = {}
    if "cav-torch" in first and "cav-keras" in first:
        gaps = []
        for torch_layer, keras_layer in zip(first["cav-torch"], first["cav-keras"], strict=True):
            torch_scores = _all_scores(first["cav-torch"][torch_layer])
            keras_scores = _all_scores(first["cav-keras"][keras_layer])
            gaps.append(float(np.max(np.abs(torch_scores - keras_scores))))
        comparison["cav-torch vs cav-keras max abs score diff"] = max(gaps)
    comparison["p_values"] = {
        variant: {layer: item["p_value"] for layer, item in scores.items()}
        for variant, scores in first.items()
    }
    return comparison


def _all_scores(layer_scores: dict[str, Any]) -> np.ndarray:
    return np.array(layer_scores["concept_scores"] + layer_scores["null_scores"])


def run_scaling(args: argparse.Namespace, runner: Runner) -> list[dict[str, Any]]:
    """Time cav-torch and the floor against targets, random runs, layers and batch size.

    Each row changes one setting of W1 and keeps the others.
    """
    base = {
        "targets": args.targets,
        "random_runs": args.random_runs,
        "layers": list(args.layers),
        "batch_size": args.batch_size,
    }
    configurations: list[tuple[str, str, dict[str, Any]]] = []
    for targets in args.scaling_targets:
        configurations.append(("targets", str(targets), {**base, "targets": targets}))
    for random_runs in args.scaling_random_runs:
        settings = {**base, "random_runs": random_runs}
        configurations.append(("random runs", str(random_runs), settings))
    for layer in args.layers:
        configurations.append(("layers", str(layer), {**base, "layers": [layer]}))
    if len(args.layers) > 1:
        configurations.append(("layers", ",".join(map(str, args.layers)), base))
    for batch_size in args.scaling_batch_sizes:
        configurations.append(("batch size", str(batch_size), {**base, "batch_size": batch_size}))

    rows = []
    for axis, value, settings in configurations:
        row: dict[str, Any] = {"axis": axis, "value": value, **settings}
        for variant in ("cav-torch", "floor"):
            seconds = []
            cpu_seconds = []
            for _ in range(args.scaling_repeats):
                result = runner.run(variant, **settings)
                if result is not None:
                    seconds.append(result["seconds"])
                    cpu_seconds.append(result["cpu_seconds"])
                    if variant == "cav-torch":
                        row["phases_s"] = result.get("phases_s")
            row[f"{variant}_s"] = statistics.median(seconds) if seconds else None
            row[f"{variant}_cpu_s"] = statistics.median(cpu_seconds) if cpu_seconds else None
        if row.get("cav-torch_s") and row.get("floor_s"):
            row["cav / floor"] = row["cav-torch_s"] / row["floor_s"]
            row["cav / floor cpu"] = row["cav-torch_cpu_s"] / row["floor_cpu_s"]
        rows.append(row)
    return rows


def run_memory(args: argparse.Namespace, runner: Runner) -> list[dict[str, Any]]:
    """Measure the peak memory of ``run_tcav`` (PyTorch) against the number of targets.

    The concept and random activations at the layer are held during the CAV fits, so they
    are reported beside the growth. What remains above them should not depend on the
    number of targets beyond the (n_targets, n_cavs) derivatives.
    """
    layer = args.memory_layer
    rows = []
    for targets in args.memory_targets:
        result = runner.run("cav-torch", targets, args.random_runs, [layer])
        if result is None:
            continue
        n_images = args.set_size * (args.random_runs + 1)
        width = result.get("layer_widths", {}).get(str(layer), LAYER_1_WIDTH)
        activation_bytes = n_images * width * 4
        n_cavs = 2 * args.random_runs
        rows.append(
            {
                "targets": targets,
                "layer": layer,
                "seconds": result["seconds"],
                "rss_before_mib": result["rss_before"] / MIB,
                "rss_growth_mib": result["rss_growth"] / MIB,
                "concept_activations_mib": activation_bytes / MIB,
                "growth_above_activations_mib": (result["rss_growth"] - activation_bytes) / MIB,
                "derivatives_mib": targets * n_cavs * 8 / MIB,
                "target_gradients_mib": targets * width * 4 / MIB,
            }
        )
    return rows


# Reporting -------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU, core count and library versions of this machine."""
    from importlib import metadata

    versions = {}
    packages = ("cav", "torch", "keras", "tensorflow-cpu", "captum", "scikit-learn", "numpy")
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "load_average_start": os.getloadavg(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_report(report: dict[str, Any]) -> None:
    """Print the tables of the suites that ran."""
    machine = report["machine"]
    cpu = f"{machine['nproc']} cores, {machine['cpu_model']}"
    print(f"\nmachine: {cpu}, Python {machine['python']}")
    start = _load(machine["load_average_start"])
    end = _load(machine.get("load_average_end"))
    print(f"load average (1, 5, 15 min): start {start}, end {end}")
    if "w1" in report:
        _print_w1(report["w1"], smoke=report["settings"].get("smoke", False))
    if "check" in report and report["check"] is not None:
        _print_check(report["check"])
    if "scaling" in report:
        _print_scaling(report["scaling"])
    if "memory" in report:
        _print_memory(report["memory"])
    for skipped in report.get("skipped", []):
        print(f"skipped: {skipped}")
    for failure in report["failures"]:
        reason = failure.get("error") or failure.get("stderr", "")[-500:]
        print(f"FAILED: {failure['variant']}: {reason}")


def _load(values: Any) -> str:
    return "-" if values is None else " ".join(f"{value:.2f}" for value in values)


def _print_w1(w1: dict[str, Any], smoke: bool = False) -> None:
    if smoke:
        print("\nsmoke sizes and random weights, not W1: the times and ratios mean nothing")
    print("\nW1: median wall time of one TCAV experiment, each run in a fresh process")
    header = (
        f"{'variant':<10} {'runs':>4} {'median s':>9} {'min s':>8} {'max s':>8} "
        f"{'CPU s':>7} {'RSS before MiB':>15} {'peak growth MiB':>16}"
    )
    print(header)
    print("-" * len(header))
    for variant, item in w1["summary"].items():
        if not item.get("runs"):
            print(f"{variant:<10} {0:>4} {'failed':>9}")
            continue
        print(
            f"{variant:<10} {item['runs']:>4} {item['median_s']:>9.2f} {item['min_s']:>8.2f} "
            f"{item['max_s']:>8.2f} {item['median_cpu_s']:>7.2f} "
            f"{item['rss_before_mib']:>15.0f} {item['rss_growth_mib']:>16.0f}"
        )
    for variant, item in w1["summary"].items():
        phases = item.get("phases_median_s")
        if phases:
            text = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in phases.items())
            print(f"  {variant} phases (medians): {text}")
    for name, value in w1["ratios"].items():
        print(
            f"  {name}: {value['median']:.2f} (medians), {value['min']:.2f} (fastest runs), "
            f"{value['median_cpu']:.2f} (median CPU times)"
        )
    agreement_info = w1["agreement"]
    gap = agreement_info.get("cav-torch vs cav-keras max abs score diff")
    if gap is not None:
        print(f"  cav-torch vs cav-keras: largest score difference {gap:.4f}")
    for variant, p_values in agreement_info.get("p_values", {}).items():
        formatted = ", ".join(f"{layer}: {value:.2e}" for layer, value in p_values.items())
        print(f"  t-test p-values, {variant}: {formatted}")


def _print_check(check: dict[str, Any]) -> None:
    print(f"\nidentical CAVs: {check['n_runs']} runs, score step 1/{check['n_targets']}")
    for key, label in (
        ("refit", "run_tcav vs the same CAVs refitted with fit_cavs"),
        ("captum", "cav vs captum's scoring of the same CAVs"),
    ):
        if f"{key}_max_abs_diff" not in check:
            continue
        print(
            f"  {label}: largest difference {check[f'{key}_max_abs_diff']:.3g} "
            f"({check[f'{key}_max_diff_targets']} targets); "
            f"{check[f'{key}_runs_differing']} runs differ by a target or more"
        )
    if "captum" in check:
        print(f"  captum: {check['captum']}")


def _print_scaling(rows: list[dict[str, Any]]) -> None:
    print("\nscaling: cav-torch and floor wall time; each row changes one setting of W1")
    header = (
        f"{'axis':<12} {'value':>10} {'targets':>8} {'R':>3} {'batch':>5} {'cav s':>8} "
        f"{'floor s':>8} {'cav/floor':>9} {'CPU ratio':>9}  "
        "cav phases: activations / fit CAVs / gradients s"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        phases = row.get("phases_s") or {}
        phase_text = " / ".join(_number(phases.get(name)) for name in PHASES)
        print(
            f"{row['axis']:<12} {row['value']:>10} {row['targets']:>8} {row['random_runs']:>3} "
            f"{row['batch_size']:>5} {_number(row.get('cav-torch_s')):>8} "
            f"{_number(row.get('floor_s')):>8} {_number(row.get('cav / floor')):>9} "
            f"{_number(row.get('cav / floor cpu')):>9}  {phase_text}"
        )


def _print_memory(rows: list[dict[str, Any]]) -> None:
    print("\nmemory: cav-torch peak RSS growth during run_tcav at one layer")
    header = (
        f"{'targets':>8} {'layer':>5} {'growth MiB':>11} {'activations MiB':>16} "
        f"{'growth - act. MiB':>18} {'time s':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['targets']:>8} {row['layer']:>5} {row['rss_growth_mib']:>11.0f} "
            f"{row['concept_activations_mib']:>16.0f} {row['growth_above_activations_mib']:>18.0f} "
            f"{row['seconds']:>7.1f}"
        )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


if __name__ == "__main__":
    sys.exit(main())

"""The ``cav`` command line.

``cav imbalance`` runs the class-imbalance study of the cav-keras notebook: it trains the
notebook's CNN on CIFAR-10 ships against birds (or on the synthetic dataset) at several
class ratios and tests the concept "sea" with TCAV at four layers. Run
``cav imbalance --help`` for the options.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from cav.errors import CAVError, InvalidArgumentError

logger = logging.getLogger("cav.cli")

DEFAULT_OUTPUT = "runs/imbalance"
LOG_FILE = "cav.log"


class _HelpFormatter(argparse.HelpFormatter):
    """Help formatter that appends each option's default unless its help names one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            default = action.default
            if isinstance(default, list):
                default = " ".join(str(v) for v in default)
            return f"{text} (default: {default})"
        return text


class _Parser(argparse.ArgumentParser):
    """Argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of the ``cav`` command and its subcommands."""
    parser = _Parser(
        prog="cav",
        description="Concept Activation Vectors and TCAV with calibrated statistics.",
    )
    parser.add_argument("--version", action="version", version=f"cav {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    _add_imbalance(commands)
    return parser


def _add_imbalance(commands: Any) -> None:
    command = commands.add_parser(
        "imbalance",
        help="TCAV scores of a CNN trained at several class ratios (the cav-keras study)",
        description=(
            "Train the cav-keras notebook's CNN on a positive and a negative class, keeping "
            "only a fraction of the positive training images, and test a concept with TCAV "
            "at several layers. Writes results.csv, results.json, summary.md, "
            "tcav_vs_imbalance.png and cav.log into --output."
        ),
        formatter_class=_HelpFormatter,
    )
    data = command.add_argument_group("data")
    data.add_argument(
        "--data",
        choices=("cifar", "synthetic"),
        default="cifar",
        help="CIFAR-10 classes with a CIFAR-100 concept, or the embedded synthetic dataset "
        "(classes 'positive'/'negative', concept 'texture')",
    )
    data.add_argument(
        "--data-dir",
        metavar="PATH",
        default=None,
        help="folder or archive holding CIFAR-10 and CIFAR-100 (python tarballs, their "
        "extracted folders or image-folder trees); default: $CAV_DATA_DIR, then the usual "
        "download locations",
    )
    data.add_argument(
        "--positive",
        metavar="CLASS",
        type=_class_name,
        default=None,
        help="positive class (label 1, subsampled), by name or CIFAR-10 index; "
        "default: ship (8), or 'positive' with --data synthetic",
    )
    data.add_argument(
        "--negative",
        metavar="CLASS",
        type=_class_name,
        default=None,
        help="negative class (label 0, kept whole), by name or CIFAR-10 index; "
        "default: bird (2), or 'negative' with --data synthetic",
    )
    data.add_argument(
        "--concept",
        metavar="CLASS",
        type=_class_name,
        default=None,
        help="concept, by CIFAR-100 fine-label name or index; default: sea (71), or "
        "'texture' with --data synthetic",
    )
    data.add_argument(
        "--cache-dir",
        metavar="PATH",
        default=None,
        help="folder for decoded CIFAR arrays and cached activations; default: no cache",
    )

    study = command.add_argument_group("study")
    study.add_argument(
        "--ratios",
        metavar="R",
        nargs="+",
        type=_ratio,
        default=[1.0, 0.25, 0.05, 0.01],
        help="fractions of the positive class's training images kept, each in (0, 1]",
    )
    study.add_argument(
        "--seeds",
        metavar="N",
        nargs="+",
        type=_non_negative_int,
        default=[0],
        help="study seeds; each (ratio, seed) pair trains its own network",
    )
    study.add_argument(
        "--protocol",
        choices=("tcav", "cav-keras"),
        default="tcav",
        help="'tcav': random natural images as negatives, R runs, logit gradients on the "
        "test images, statistical test; 'cav-keras': the notebook's exact procedure "
        "(noise negatives, unscaled concept images, loss gradients on the training images, "
        "one run, no test)",
    )
    study.add_argument(
        "--layers",
        metavar="LAYER",
        nargs="+",
        type=_layer,
        default=[1, 5, 7, 11],
        help="layers tested, by index into the CNN's 18 layers (1 relu1, 5 dropout1, "
        "7 relu3, 11 dropout2, as in the notebook) or by name",
    )
    study.add_argument(
        "--resume",
        action="store_true",
        help="reuse the finished (ratio, seed) cells in --output/cells made with the same settings",
    )

    training = command.add_argument_group("training")
    training.add_argument(
        "--epochs", metavar="N", type=_positive_int, default=3, help="training epochs"
    )
    training.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive_int,
        default=32,
        help="training batch size, in images",
    )

    tcav = command.add_argument_group("TCAV (--protocol tcav)")
    tcav.add_argument(
        "--random-runs",
        metavar="R",
        type=_at_least(2),
        default=None,
        help="number of random counterexample sets; default 20",
    )
    tcav.add_argument(
        "--random-set-size",
        metavar="N",
        type=_at_least(2),
        default=None,
        help="images per random set; default 100 (cifar), 40 (synthetic)",
    )
    tcav.add_argument(
        "--concept-set-size",
        metavar="N",
        type=_at_least(2),
        default=None,
        help="concept images per run; default: --random-set-size",
    )
    tcav.add_argument(
        "--max-test-images",
        metavar="N",
        type=_at_least(2),
        default=None,
        help="at most N test images per class are scored; default: all (1,000 per CIFAR class)",
    )
    tcav.add_argument(
        "--test",
        choices=("calibrated", "ttest"),
        default="calibrated",
        help="statistical test of the concept runs against random runs",
    )
    tcav.add_argument(
        "--alpha",
        metavar="A",
        type=_probability,
        default=0.05,
        help="significance level after Holm correction over the layers and classes of a cell",
    )
    tcav.add_argument(
        "--method",
        choices=("logistic", "sgd", "perceptron", "mean_difference"),
        default="logistic",
        help="linear classifier that gives the CAV",
    )
    tcav.add_argument(
        "--gradient-batch-size",
        metavar="N",
        type=_positive_int,
        default=64,
        help="images per forward/backward pass when computing activations and gradients",
    )

    output = command.add_argument_group("output")
    output.add_argument(
        "--output",
        metavar="DIR",
        default=DEFAULT_OUTPUT,
        help="folder for the results, the figure and cav.log (created if missing)",
    )
    output.add_argument(
        "--quiet", action="store_true", help="no progress bars and no summary on the terminal"
    )
    output.add_argument(
        "--debug",
        action="store_true",
        help="log debug messages to cav.log and show the traceback of an error",
    )
    command.set_defaults(handler=_run_imbalance)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cav`` command and return its exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    return int(arguments.handler(arguments, parser))


def _run_imbalance(arguments: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    prog = "cav imbalance"
    try:
        config = _config_from(arguments)
        _check_data_dir(arguments.data_dir)
        output = _writable_output(Path(arguments.output))
    except InvalidArgumentError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2

    log_path = output / LOG_FILE
    handler = _start_log(log_path, arguments.debug)
    try:
        return _study(config, arguments, output, prog)
    except CAVError as exc:
        logger.error("failed: %s", exc, exc_info=arguments.debug)
        if arguments.debug:
            raise
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2 if isinstance(exc, InvalidArgumentError) else 1
    except KeyboardInterrupt:
        logger.warning("interrupted; the finished cells are in %s", output / "cells")
        sys.stderr.write(
            f"{prog}: interrupted; the finished cells are kept, rerun the same command with "
            "--resume to continue\n"
        )
        return 130
    except Exception as exc:
        logger.exception("failed with an unexpected error")
        if arguments.debug:
            raise
        sys.stderr.write(
            f"{prog}: error: unexpected {type(exc).__name__}: {_one_line(exc)}; the traceback "
            f"is in {log_path} (rerun with --debug to show it here)\n"
        )
        return 1
    finally:
        _stop_log(handler)


def _check_data_dir(data_dir: str | None) -> None:
    """Reject a ``--data-dir`` that does not exist, before anything is loaded."""
    if data_dir is not None and not Path(data_dir).exists():
        raise InvalidArgumentError(
            f"argument --data-dir: {data_dir} does not exist; give the folder (or .tar.gz "
            "archive) that holds cifar-10-python.tar.gz and cifar-100-python.tar.gz, their "
            "extracted folders, or image-folder trees (see docs/imbalance.md)"
        )


def _writable_output(output: Path) -> Path:
    """Create ``output`` and its ``cells`` folder and check that files can be written there.

    Raises
    ------
    InvalidArgumentError
        Naming ``--output`` and the reason, so the run fails before any training.
    """
    try:
        (output / "cells").mkdir(parents=True, exist_ok=True)
        for folder in (output, output / "cells"):
            with tempfile.TemporaryFile(dir=folder):
                pass
    except OSError as exc:
        raise InvalidArgumentError(
            f"argument --output: cannot write to {output}: {exc.strerror or exc}; choose a "
            "folder you can write to"
        ) from exc
    return output


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _study(config: Any, arguments: argparse.Namespace, output: Path, prog: str) -> int:
    _choose_keras_backend()
    from cav.experiments.imbalance import run_study
    from cav.experiments.report import summary_markdown, write_outputs

    config = config.resolved()
    options = {k: v for k, v in vars(arguments).items() if k not in ("handler", "command")}
    versions = _versions()
    logger.info("cav imbalance started with options %s", options)
    logger.info("versions: %s", ", ".join(f"{k} {v}" for k, v in versions.items()))
    logger.info("settings: %s", config.to_dict())
    started = time.perf_counter()
    quiet = arguments.quiet

    def report_cell(cell: Any, reused: bool) -> None:
        if quiet:
            return
        state = "reused" if reused else f"done in {cell.seconds.get('total', 0.0):.0f} s"
        sys.stderr.write(
            f"ratio {cell.ratio:g}, seed {cell.seed}: {state}; test balanced accuracy "
            f"{cell.metrics['balanced_accuracy']:.3f}\n"
        )

    result = run_study(
        config, output, resume=arguments.resume, progress=not quiet, on_cell=report_cell
    )
    elapsed = time.perf_counter() - started
    # results.json contains only what the settings determine; timings go to cav.log.
    paths = write_outputs(result, output, extra={"versions": versions})
    logger.info("finished in %.1f s; wrote %s", elapsed, ", ".join(str(p) for p in paths.values()))
    if not quiet:
        sys.stdout.write(summary_markdown(result))
        sys.stdout.write(f"\nFinished in {elapsed:.0f} s. Results in {output}/\n")
    return 0


def _config_from(arguments: argparse.Namespace) -> Any:
    from cav.experiments.config import StudyConfig

    return StudyConfig(
        data=arguments.data,
        data_dir=arguments.data_dir,
        positive=arguments.positive,
        negative=arguments.negative,
        concept=arguments.concept,
        ratios=tuple(arguments.ratios),
        seeds=tuple(arguments.seeds),
        layers=tuple(arguments.layers),
        epochs=arguments.epochs,
        batch_size=arguments.batch_size,
        protocol=arguments.protocol,
        random_runs=arguments.random_runs,
        random_set_size=arguments.random_set_size,
        concept_set_size=arguments.concept_set_size,
        max_test_images=arguments.max_test_images,
        test=arguments.test,
        alpha=arguments.alpha,
        method=arguments.method,
        gradient_batch_size=arguments.gradient_batch_size,
        cache_dir=arguments.cache_dir,
    )


def _start_log(path: Path, debug: bool) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if debug else logging.INFO)
    root = logging.getLogger("cav")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addHandler(handler)
    return handler


def _stop_log(handler: logging.Handler) -> None:
    logging.getLogger("cav").removeHandler(handler)
    logging.getLogger("py.warnings").removeHandler(handler)
    logging.captureWarnings(False)
    handler.close()


def _choose_keras_backend() -> None:
    """Use Keras' torch backend when TensorFlow is missing and none was chosen.

    Also quiets TensorFlow's informational start-up messages unless the user set
    ``TF_CPP_MIN_LOG_LEVEL``.

    Keras reads ``KERAS_BACKEND`` once, at import; its default, TensorFlow, fails to
    import when only PyTorch is installed.
    """
    # TensorFlow's C++ start-up notices (oneDNN, CPU features) would bury the study's
    # progress; its warnings and errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "KERAS_BACKEND" in os.environ:
        return
    has_tensorflow = importlib.util.find_spec("tensorflow") is not None
    if not has_tensorflow and importlib.util.find_spec("torch") is not None:
        os.environ["KERAS_BACKEND"] = "torch"


def _versions() -> dict[str, str]:
    """Return the installed versions of Python and of the packages the study uses."""
    from importlib import metadata

    versions = {"cav": _version(), "python": platform.python_version()}
    packages = ("numpy", "scipy", "scikit-learn", "pandas", "keras", "torch", "tensorflow")
    for name in (*packages, "tensorflow-cpu"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    # Keras is imported even when every cell was reused, so that a resumed run records
    # the same versions as an uninterrupted one.
    if "keras" in versions:
        import keras

        versions["keras backend"] = str(keras.backend.backend())
    return versions


def _version() -> str:
    from cav import __version__

    return __version__


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid ratio {text!r}: use a number in (0, 1]"
        ) from None
    if not (0.0 < value <= 1.0):
        raise argparse.ArgumentTypeError(f"invalid ratio {text!r}: use a number in (0, 1]")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: use a number in (0, 1)"
        ) from None
    if not (0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: use a number in (0, 1)")
    return value


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"invalid value {value}: use an integer >= {minimum}")
    return value


def _at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        return _integer(text, minimum)

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _positive_int(text: str) -> int:
    return _integer(text, 1)


def _non_negative_int(text: str) -> int:
    return _integer(text, 0)


def _class_name(text: str) -> str | int:
    text = text.strip()
    if not text:
        raise argparse.ArgumentTypeError("empty class name")
    return int(text) if text.isdigit() else text


def _layer(text: str) -> str | int:
    text = text.strip()
    if text.startswith("-"):
        raise argparse.ArgumentTypeError(f"invalid layer {text!r}: indices start at 0")
    if not text:
        raise argparse.ArgumentTypeError("empty layer name")
    return int(text) if text.isdigit() else text


if __name__ == "__main__":
    raise SystemExit(main())

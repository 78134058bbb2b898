"""Every documented input error: its exception type, and a message naming the argument and value.

Library cases run on small PyTorch models built here; command-line cases run
``cav.cli.main`` and check exit status 2 (or 1) and a one-line message on stderr.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import cav
from cav.errors import (
    CAVError,
    InvalidArgumentError,
    InvalidTypeError,
    LayerNotFoundError,
    NonFiniteError,
    ValueRangeWarning,
    WeakCAVWarning,
)

torch = pytest.importorskip("torch")
nn = torch.nn

N_FEATURES = 6


def linear_model(n_classes: int = 3, seed: int = 0) -> Any:
    """Two linear layers with a ReLU between them: children "0", "1", "2"."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, 5), nn.ReLU(), nn.Linear(5, n_classes)).double()


def images(n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, scale, size=(n, N_FEATURES))


def run(model: Any = None, **changes: Any) -> Any:
    """Call run_tcav with small valid arguments, changed by ``changes``."""
    arguments: dict[str, Any] = {
        "inputs": images(8, seed=1),
        "target": 1,
        "concepts": {"stripes": images(6, seed=2)},
        "random_sets": [images(6, seed=3), images(6, seed=4), images(6, seed=5)],
        "layers": "1",
    }
    arguments.update(changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakCAVWarning)
        return cav.run_tcav(model if model is not None else linear_model(), **arguments)


class Trim(nn.Module):
    """Drop the trailing all-zero positions of a zero-padded (n, T, d) batch."""

    def forward(self, x: Any) -> Any:
        length = int((x.abs().sum(dim=-1) > 0).sum(dim=1).max())
        return x[:, :length]


class MeanOverPositions(nn.Module):
    def forward(self, x: Any) -> Any:
        return x.mean(dim=1)


def sequence_model() -> Any:
    """A sequence model whose layer "1" is (n, T, 4) with T the longest input of the batch."""
    torch.manual_seed(0)
    return nn.Sequential(Trim(), nn.Linear(3, 4), MeanOverPositions(), nn.Linear(4, 2)).double()


def sequences() -> np.ndarray:
    """Four sequences of length up to 5, zero-padded: the first batch of two has length 2."""
    values = np.random.default_rng(0).uniform(0.5, 1.0, size=(4, 5, 3))
    values[:2, 2:] = 0.0
    return values


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = linear_model()

    def forward(self, x: Any) -> Any:
        return self.body(x), x.sum(dim=1)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = linear_model()

    def forward(self, x: Any, mask: Any) -> Any:
        return self.body(x * mask)


def infinite_model() -> Any:
    model = linear_model()
    with torch.no_grad():
        model[0].bias[0] = float("inf")
    return model


def _activations(model: Any, x: np.ndarray, layers: Any, **options: Any) -> Any:
    return cav.wrap(model, **options).activations(x, layers, batch_size=2)


def _check_kept_images() -> None:
    from cav.experiments.sampling import check_kept_images

    check_kept_images(40, 0.025, "ship")


def _check_shapes() -> None:
    from cav.pipeline.toy import make_toy_mlp

    # Through run_tcav, so the check is known to run before any model pass.
    cav.run_tcav(
        make_toy_mlp(N_FEATURES),
        images(4),
        1,
        {"stripes": np.zeros((4, N_FEATURES + 1))},
        random_sets=[images(4), images(4), images(4)],
        layers="features",
    )


def _study_value_ranges() -> None:
    from cav.experiments.protocols import check_value_ranges

    check_value_ranges({1: images(4)}, {"sea": images(4, scale=255.0)})


def _study_data_one_concept_image() -> None:
    from cav.experiments.study_data import StudyData, check_study_data

    block = np.zeros((4, 8, 8, 3), np.uint8)
    data = StudyData("ship", "bird", "sea", block, block, block, block, block[:1], block, "test")
    check_study_data(data)


# (id, call, exception type, fragments the message must contain)
LIBRARY_CASES: list[tuple[str, Callable[[], Any], type[Exception], tuple[str, ...]]] = [
    (
        "unknown-layer-name",
        lambda: run(layers="relu"),
        LayerNotFoundError,
        ("'relu'", "valid names", "'1'"),
    ),
    (
        "negative-layer-index",
        lambda: run(layers=-1),
        LayerNotFoundError,
        ("-1", "0 to 2"),
    ),
    (
        "layer-index-out-of-range",
        lambda: run(layers=7),
        LayerNotFoundError,
        ("7", "0 to 2"),
    ),
    (
        "concept-one-image",
        lambda: run(concepts={"stripes": images(1)}),
        InvalidArgumentError,
        ("concepts['stripes']", "1 image", "at least 2"),
    ),
    (
        "random-set-one-image",
        lambda: run(random_sets={"noise": images(1), "other": images(4)}),
        InvalidArgumentError,
        ("random_sets['noise']", "1 image", "at least 2"),
    ),
    (
        "class-one-input",
        lambda: run(inputs={1: images(1)}),
        InvalidArgumentError,
        ("inputs[1]", "1 image", "at least 2"),
    ),
    (
        "ratio-leaves-one-image",
        _check_kept_images,
        InvalidArgumentError,
        ("ratio 0.025", "keeps 1", "'ship'", "at least 2"),
    ),
    (
        "study-concept-one-image",
        _study_data_one_concept_image,
        InvalidArgumentError,
        ("found 1 images of concept 'sea'", "at least 2"),
    ),
    (
        "set-shape-differs-from-inputs",
        _check_shapes,
        InvalidArgumentError,
        ("'stripes'", "(7,)", "(6,)"),
    ),
    (
        "batches-of-different-shapes",
        lambda: run(concepts={"stripes": [images(3), np.zeros((3, N_FEATURES + 1))]}),
        InvalidArgumentError,
        ("concepts['stripes'] batch 1", "(7,)", "(6,)"),
    ),
    (
        "nan-in-concept",
        lambda: run(concepts={"stripes": np.where(np.eye(6) == 1, np.nan, images(6))}),
        NonFiniteError,
        ("concepts['stripes']", "NaN", "index 0"),
    ),
    (
        "inf-in-inputs",
        lambda: run(inputs=np.full((4, N_FEATURES), np.inf)),
        NonFiniteError,
        ("inputs", "infinite", "4 of 4"),
    ),
    (
        "inf-in-activations",
        lambda: _activations(infinite_model(), images(4), "0"),
        NonFiniteError,
        ("activations of layer '0'", "infinite"),
    ),
    (
        "target-outside-outputs",
        lambda: run(target=5),
        InvalidArgumentError,
        ("target=5", "3 classes", "0 to 2"),
    ),
    (
        "study-value-range-mismatch",
        _study_value_ranges,
        InvalidArgumentError,
        ("--protocol tcav", "sea [", "--protocol cav-keras"),
    ),
    (
        "layer-size-varies",
        lambda: _activations(sequence_model(), sequences(), "1"),
        InvalidArgumentError,
        ("layer '1'", "8 values", "20 values", "pool='mean'"),
    ),
    (
        "unknown-pool",
        lambda: cav.wrap(linear_model(), pool="max"),
        InvalidArgumentError,
        ("pool='max'", "'mean'"),
    ),
    (
        "tuple-output-without-key",
        lambda: _activations(TwoOutputs(), images(4), "body.1"),
        InvalidTypeError,
        ("tuple", "output_key=0"),
    ),
    (
        "output-key-missing",
        lambda: _activations(TwoOutputs(), images(4), "body.1", output_key=2),
        InvalidArgumentError,
        ("output_key=2", "[0, 1]"),
    ),
    (
        "two-input-model",
        lambda: cav.wrap(TwoInputs()),
        InvalidTypeError,
        ("needs 2 inputs (x, mask)", "class OneInput", "def forward(self, x)"),
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "fragments"),
    [pytest.param(call, error, parts, id=name) for name, call, error, parts in LIBRARY_CASES],
)
def test_library_error(call, error, fragments):
    with pytest.raises(error) as raised:
        call()
    assert isinstance(raised.value, CAVError)
    for fragment in fragments:
        assert fragment in str(raised.value), f"{fragment!r} missing from: {raised.value}"


def test_value_range_warning_names_ranges():
    with pytest.warns(ValueRangeWarning) as caught:
        run(concepts={"stripes": images(6, scale=255.0)})
    message = str(caught[0].message)
    assert "stripes [" in message
    assert "inputs [" in message


def test_pool_mean_fixes_varying_layer():
    values = _activations(sequence_model(), sequences(), "1", pool="mean")["1"]
    assert values.shape == (4, 4)


def test_pool_mean_activation_is_mean():
    model = sequence_model()
    x = sequences()[2:]
    pooled = _activations(model, x, "1", pool="mean")["1"]
    full = model[1](torch.as_tensor(x)).detach().numpy().mean(axis=1)
    np.testing.assert_allclose(pooled, full, rtol=0, atol=1e-12)


def test_pool_mean_gradient_shifts_every_position():
    """The pooled gradient . v equals d/de of the logit when every position moves by e v."""
    model = sequence_model()
    x = sequences()[2:]
    direction = np.array([0.3, -0.5, 0.2, 0.7])
    adapter = cav.wrap(model, pool="mean")
    gradient = adapter.gradients(x, "1", target=1, batch_size=2)["1"]

    def logit(shift: float) -> np.ndarray:
        hidden = model[1](torch.as_tensor(x)) + shift * torch.as_tensor(direction)
        return model[3](model[2](hidden))[:, 1].detach().numpy()

    step = 1e-6
    finite_difference = (logit(step) - logit(-step)) / (2 * step)
    np.testing.assert_allclose(gradient @ direction, finite_difference, rtol=1e-6, atol=1e-9)


def test_output_key_selects_tensor():
    chosen = _activations(TwoOutputs(), images(4), "body.1", output_key=0)["body.1"]
    assert chosen.shape == (4, 5)


def test_identical_activations_degenerate_cav():
    """A layer that maps every image to one vector gives NaN scores and a warning."""
    torch.manual_seed(0)
    constant = nn.Linear(N_FEATURES, 4)
    with torch.no_grad():
        constant.weight.zero_()
    model = nn.Sequential(constant, nn.Linear(4, 2)).double()
    with pytest.warns(WeakCAVWarning, match="every activation of both sets is the same"):
        result = cav.run_tcav(
            model,
            images(8),
            1,
            {"stripes": images(6, seed=2)},
            random_sets=[images(6, seed=3), images(6, seed=4), images(6, seed=5)],
            layers="0",
        )
    assert result.runs["score"].isna().all()
    assert result.summary()["mean"].isna().all()


# ---------------------------------------------------------------------------------------
# Command line


def _cli(arguments: list[str], capsys: Any) -> tuple[int, str]:
    from cav.cli import main

    try:
        status = main(["imbalance", *arguments])
    except SystemExit as stop:
        status = int(stop.code or 0)
    return status, capsys.readouterr().err


def _mismatched_folder(tmp_path: Any) -> str:
    from cav.experiments.config import StudyConfig
    from cav.experiments.imbalance import prepare_output_folder

    folder = tmp_path / "made-with-epochs-1"
    prepare_output_folder(folder, StudyConfig(data="synthetic", epochs=1), resume=False)
    return str(folder)


# (id, arguments builder, status, fragments of the one-line message)
CLI_CASES: list[tuple[str, Callable[[Any], list[str]], int, tuple[str, ...]]] = [
    (
        "ratio-out-of-range",
        lambda tmp: ["--ratios", "1.5"],
        2,
        ("--ratios", "'1.5'", "(0, 1]"),
    ),
    (
        "layer-out-of-range",
        lambda tmp: ["--layers", "30", "--output", str(tmp / "out")],
        2,
        ("layers", "index 30", "0 to 17"),
    ),
    (
        "unknown-layer-name",
        lambda tmp: ["--layers", "relu9", "--output", str(tmp / "out")],
        2,
        ("layers", "'relu9'", "relu1"),
    ),
    (
        "missing-data-dir",
        lambda tmp: ["--data-dir", str(tmp / "nowhere"), "--output", str(tmp / "out")],
        2,
        ("--data-dir", "nowhere", "cifar-10-python.tar.gz"),
    ),
    (
        "output-not-writable",
        lambda tmp: ["--data", "synthetic", "--output", str(tmp / "file.txt" / "out")],
        2,
        ("--output", "file.txt", "cannot write"),
    ),
    (
        "resume-other-settings",
        lambda tmp: [
            "--data",
            "synthetic",
            "--epochs",
            "2",
            "--resume",
            "--quiet",
            "--output",
            _mismatched_folder(tmp),
        ],
        2,
        ("--resume", "epochs: 1 in the folder, 2 now"),
    ),
    (
        "ratio-leaves-one-image",
        lambda tmp: ["--data", "synthetic", "--ratios", "0.001", "--quiet", "--output", str(tmp)],
        2,
        ("ratio 0.001", "keeps 1", "'positive'"),
    ),
]


@pytest.mark.parametrize(
    ("build", "status", "fragments"),
    [pytest.param(build, status, parts, id=name) for name, build, status, parts in CLI_CASES],
)
def test_cli_error(build, status, fragments, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a folder")
    code, error = _cli(build(tmp_path), capsys)
    assert code == status
    assert error.count("\n") == 1, error
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} missing from: {error}"


def test_cli_resume_refusal_before_training(tmp_path, capsys):
    folder = _mismatched_folder(tmp_path)
    _cli(["--data", "synthetic", "--epochs", "2", "--resume", "--output", folder], capsys)
    assert not any((tmp_path / "made-with-epochs-1" / "cells").iterdir())


def _fail(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("boom in the study")


def test_cli_unexpected_error_one_line(tmp_path, capsys, monkeypatch):
    from cav.experiments import imbalance

    monkeypatch.setattr(imbalance, "run_study", _fail)
    code, error = _cli(["--data", "synthetic", "--quiet", "--output", str(tmp_path)], capsys)
    assert code == 1
    assert error.count("\n") == 1
    assert "unexpected RuntimeError: boom in the study" in error
    assert str(tmp_path / "cav.log") in error


def test_cli_unexpected_error_logs_traceback(tmp_path, capsys, monkeypatch):
    from cav.experiments import imbalance

    monkeypatch.setattr(imbalance, "run_study", _fail)
    _cli(["--data", "synthetic", "--quiet", "--output", str(tmp_path)], capsys)
    assert "Traceback" in (tmp_path / "cav.log").read_text()


def test_cli_debug_raises_unexpected(tmp_path, capsys, monkeypatch):
    from cav.experiments import imbalance

    monkeypatch.setattr(imbalance, "run_study", _fail)
    with pytest.raises(RuntimeError, match="boom"):
        _cli(["--data", "synthetic", "--debug", "--output", str(tmp_path)], capsys)

"""The ``cav imbalance`` command: help, argument errors, end-to-end runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cav.cli import main
from cav.experiments import config as study_config

FLAGS = (
    "--data",
    "--data-dir",
    "--positive",
    "--negative",
    "--concept",
    "--ratios",
    "--seeds",
    "--layers",
    "--epochs",
    "--batch-size",
    "--random-runs",
    "--random-set-size",
    "--concept-set-size",
    "--max-test-images",
    "--protocol",
    "--test",
    "--alpha",
    "--method",
    "--gradient-batch-size",
    "--cache-dir",
    "--resume",
    "--output",
    "--quiet",
    "--debug",
)


@pytest.fixture(scope="module")
def help_text() -> str:
    import contextlib
    import io

    stream = io.StringIO()
    with contextlib.redirect_stdout(stream), pytest.raises(SystemExit) as stop:
        main(["imbalance", "--help"])
    assert stop.value.code == 0
    return stream.getvalue()


@pytest.mark.parametrize("flag", FLAGS)
def test_help_lists_flag(help_text, flag):
    assert f"{flag} " in help_text or f"{flag}\n" in help_text


def test_help_states_defaults(help_text):
    assert "(default: 1.0 0.25 0.05 0.01)" in help_text


@pytest.mark.parametrize(
    ("arguments", "option"),
    [
        (["--ratios", "0"], "--ratios"),
        (["--ratios", "1.5"], "--ratios"),
        (["--ratios", "half"], "--ratios"),
        (["--seeds", "-1"], "--seeds"),
        (["--epochs", "0"], "--epochs"),
        (["--random-runs", "1"], "--random-runs"),
        (["--alpha", "1"], "--alpha"),
        (["--layers", "-1"], "--layers"),
        (["--protocol", "paper"], "--protocol"),
        (["--data", "mnist"], "--data"),
        (["--test", "z"], "--test"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_argument_exits_2(arguments, option, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["imbalance", *arguments])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert option in error


def test_duplicate_ratios_exit_2(tmp_path, capsys):
    status = main(["imbalance", "--ratios", "1", "1", "--output", str(tmp_path)])
    assert status == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "ratios" in error


@pytest.mark.parametrize("layer", ["18", "relu9"])
def test_unknown_layer_exits_2(layer, tmp_path, capsys):
    status = main(["imbalance", "--layers", "1", layer, "--output", str(tmp_path)])
    assert status == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert layer in error


def test_unknown_class_exits_2(tmp_path, capsys):
    status = main(["imbalance", "--positive", "shipp", "--output", str(tmp_path), "--quiet"])
    assert status == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "shipp" in error


def test_synthetic_rejects_cifar_concept(tmp_path, capsys):
    arguments = ["imbalance", "--data", "synthetic", "--concept", "sea", "--quiet"]
    status = main([*arguments, "--output", str(tmp_path)])
    assert status == 2
    assert "texture" in capsys.readouterr().err


def test_missing_data_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CAV_DATA_DIR", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    arguments = ["imbalance", "--data-dir", str(empty), "--quiet"]
    status = main([*arguments, "--output", str(tmp_path / "out")])
    assert status == 1
    error = capsys.readouterr().err
    assert error.startswith("cav imbalance: error:")
    assert "CIFAR" in error


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A small synthetic study: two ratios, two layers, the two-sample t-test of TCAV."""
    pytest.importorskip("keras")
    output = tmp_path_factory.mktemp("synthetic")
    patch = pytest.MonkeyPatch()
    # fewer images than the synthetic defaults, so the test takes seconds
    sizes = dict(study_config.DATASET_DEFAULTS["synthetic"])
    sizes.update(train_per_class=300, test_per_class=100, random_images=400)
    patch.setitem(study_config.DATASET_DEFAULTS, "synthetic", sizes)
    try:
        status = main(
            [
                "imbalance",
                "--data",
                "synthetic",
                "--ratios",
                "1",
                "0.05",
                "--layers",
                "7",
                "11",
                "--epochs",
                "3",
                "--random-runs",
                "16",
                "--random-set-size",
                "20",
                "--test",
                "ttest",
                "--output",
                str(output),
                "--quiet",
            ]
        )
    finally:
        patch.undo()
    return status, output


@pytest.mark.keras
def test_synthetic_run_succeeds(synthetic_run):
    status, _ = synthetic_run
    assert status == 0


@pytest.mark.keras
@pytest.mark.parametrize(
    "name", ["results.csv", "results.json", "summary.md", "tcav_vs_imbalance.png", "cav.log"]
)
def test_synthetic_run_writes_file(synthetic_run, name):
    _, output = synthetic_run
    assert (output / name).stat().st_size > 0


@pytest.mark.keras
def test_synthetic_run_positive_sensitive(synthetic_run):
    _, output = synthetic_run
    tests = pd.DataFrame(json.loads((output / "results.json").read_text())["tests"])
    balanced = tests[(tests["ratio"] == 1.0) & (tests["target"] == 1)]
    assert (balanced["mean"] >= 0.9).all()
    assert balanced["significant"].any()


@pytest.mark.keras
def test_synthetic_run_negative_not_sensitive(synthetic_run):
    _, output = synthetic_run
    tests = pd.DataFrame(json.loads((output / "results.json").read_text())["tests"])
    balanced = tests[(tests["ratio"] == 1.0) & (tests["target"] == 0)]
    assert (balanced["mean"] <= 0.1).all()


@pytest.mark.keras
def test_synthetic_run_logs_versions(synthetic_run):
    _, output = synthetic_run
    log = (output / "cav.log").read_text()
    assert "versions: cav" in log
    assert "done in" in log


@pytest.mark.keras
def test_resume_reuses_cells(synthetic_run, tmp_path):
    import shutil

    _, output = synthetic_run
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    patch = pytest.MonkeyPatch()
    sizes = dict(study_config.DATASET_DEFAULTS["synthetic"])
    sizes.update(train_per_class=300, test_per_class=100, random_images=400)
    patch.setitem(study_config.DATASET_DEFAULTS, "synthetic", sizes)
    try:
        arguments = ["imbalance", "--data", "synthetic", "--ratios", "1", "0.05"]
        arguments += ["--layers", "7", "11", "--random-runs", "16", "--random-set-size", "20"]
        arguments += ["--test", "ttest", "--resume", "--quiet", "--output", str(copy)]
        status = main(arguments)
    finally:
        patch.undo()
    assert status == 0
    assert (copy / "cav.log").read_text().count("reusing the finished cell") == 2


@pytest.mark.slow
@pytest.mark.keras
def test_cifar_reduced_run(shared_data_dir, tmp_path):
    """The real study, reduced: 1 epoch, two ratios, 3 random runs."""
    output = tmp_path / "cifar"
    arguments = ["imbalance", "--data-dir", str(shared_data_dir), "--epochs", "1"]
    arguments += ["--ratios", "1", "0.05", "--random-runs", "3", "--quiet"]
    arguments += ["--cache-dir", str(tmp_path / "cache"), "--output", str(output)]
    assert main(arguments) == 0
    document = json.loads((output / "results.json").read_text())
    metrics = pd.DataFrame(document["metrics"])
    assert list(metrics["n_positive"]) == [5000, 250]
    assert (metrics["n_negative"] == 5000).all()
    assert metrics.loc[metrics["ratio"] == 1.0, "balanced_accuracy"].iloc[0] >= 0.75
    tests = pd.DataFrame(document["tests"])
    assert len(tests) == 2 * 4 * 2

"""End-to-end tests of run_tcav on a small PyTorch convolutional network through cav.wrap."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import cav  # noqa: E402
from cav.errors import WeakCAVWarning, ZeroGradientWarning  # noqa: E402
from cav.report.result import TCAVResult  # noqa: E402

IMAGE_SHAPE = (3, 8, 8)


def small_cnn(seed: int = 0, conv_bias: float | None = None) -> torch.nn.Module:
    """Conv(3->4, 3x3) -> ReLU -> Flatten -> Linear(144 -> 2), float64, seeded."""
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 2),
    ).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(
                torch.randn(parameter.shape, generator=generator, dtype=torch.float64) * 0.3
            )
        if conv_bias is not None:
            model[0].bias.fill_(conv_bias)
    return model.eval()


def planted_images(model: torch.nn.Module, seed: int = 0, shift: float = 4.0):
    """Inputs, a concept moved along the mean input gradient of class 1, and a pool."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(100, *IMAGE_SHAPE))
    x = torch.tensor(inputs, requires_grad=True)
    model(x)[:, 1].sum().backward()
    direction = x.grad.mean(dim=0).numpy()
    direction /= np.linalg.norm(direction)
    concept = rng.normal(size=(40, *IMAGE_SHAPE)) + shift * direction
    pool = rng.normal(size=(1000, *IMAGE_SHAPE))
    return inputs, concept, pool


def quiet_run(*args, **kwargs) -> TCAVResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakCAVWarning)
        return cav.run_tcav(*args, **kwargs)


@pytest.fixture(scope="module")
def setting():
    model = small_cnn()
    inputs, concept, pool = planted_images(model)
    noise = np.random.default_rng(11).normal(size=(40, *IMAGE_SHAPE))
    return model, inputs, {"planted": concept, "noise": noise}, pool


@pytest.fixture(scope="module")
def result(setting):
    model, inputs, concepts, pool = setting
    # The scores of random CAVs in this shallow network sit near 0 or 1, so telling even a
    # perfect concept from random sets takes about 20 of them.
    return quiet_run(model, inputs, 1, concepts, random_pool=pool, layers="0", n_random=20)


def summary_row(result: TCAVResult, concept: str, layer: str, target: int) -> pd.Series:
    summary = result.summary()
    mask = (summary["concept"] == concept) & (summary["layer"] == layer)
    return summary[mask & (summary["target"] == target)].iloc[0]


def test_torch_planted_significant(result):
    row = summary_row(result, "planted", "0", 1)
    assert row["mean"] > 0.9
    assert row["significant"]


def test_torch_noise_concept_not_significant(result):
    summary = result.summary()
    assert not summary[summary["concept"] == "noise"]["significant"].any()


def test_torch_framework_recorded(result):
    assert result.params["framework"] == "torch"
    assert result.params["layers"] == ["0"]


def test_torch_tensor_inputs_same(setting, result):
    model, inputs, concepts, pool = setting
    tensors = {name: torch.tensor(images) for name, images in concepts.items()}
    again = quiet_run(
        model,
        torch.tensor(inputs),
        1,
        tensors,
        random_pool=torch.tensor(pool),
        layers="0",
        n_random=20,
    )
    pd.testing.assert_frame_equal(again.runs, result.runs, check_exact=True)


def test_torch_adapter_accepted(setting):
    model, inputs, concepts, pool = setting
    options = {"random_pool": pool, "layers": "1", "n_random": 3}
    direct = quiet_run(model, inputs, 1, concepts, **options)
    wrapped = quiet_run(cav.wrap(model), inputs, 1, concepts, **options)
    pd.testing.assert_frame_equal(direct.runs, wrapped.runs, check_exact=True)


def test_torch_dead_relu_undefined(setting):
    _, inputs, concepts, pool = setting
    dead = small_cnn(conv_bias=-1e3)
    with pytest.warns(ZeroGradientWarning):
        result = quiet_run(dead, inputs, 1, concepts, random_pool=pool, layers="0", n_random=3)
    row = summary_row(result, "planted", "0", 1)
    assert row["undefined"]
    assert row["zero_share"] == 1.0
    assert math.isnan(row["p_value"])
    assert "exactly zero" in row["note"]


def test_torch_dead_relu_output_degenerate(setting):
    _, inputs, concepts, pool = setting
    dead = small_cnn(conv_bias=-1e3)
    # The ReLU output is 0 for every image, so no CAV can separate the sets.
    with pytest.warns(WeakCAVWarning, match="9 of 9 CAVs at layer '1' are undefined"):
        result = cav.run_tcav(dead, inputs, 1, concepts, random_pool=pool, layers="1", n_random=3)
    row = summary_row(result, "planted", "1", 1)
    assert row["undefined"]
    assert "identical" in row["note"]


def test_torch_loss_output_runs(setting):
    model, inputs, concepts, pool = setting
    result = quiet_run(
        model, inputs, 1, concepts, random_pool=pool, layers="1", n_random=3, output="loss"
    )
    assert result.runs["score"].between(0, 1).all()

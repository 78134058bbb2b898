"""cav.tcav.TCAV, called as the cav-keras class-imbalance notebook calls it."""

from __future__ import annotations

import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import cav  # noqa: E402
from cav.errors import InvalidArgumentError, LayerNotFoundError  # noqa: E402
from cav.tcav import TCAV  # noqa: E402

pytestmark = pytest.mark.keras

SIDE = 8
LINE = re.compile(r"^The sensitivity of class (\d) is  (\S+)$")


def sea_images(generator: np.random.Generator, n: int) -> np.ndarray:
    """Images in [0, 1] with a blue lower half (the planted "sea")."""
    images = 0.3 * generator.random((n, SIDE, SIDE, 3))
    images[:, SIDE // 2 :, :, 2] += 0.6
    return images


def other_images(generator: np.random.Generator, n: int) -> np.ndarray:
    """Images in [0, 1] with a red upper half."""
    images = 0.3 * generator.random((n, SIDE, SIDE, 3))
    images[:, : SIDE // 2, :, 0] += 0.6
    return images


def notebook_like_model() -> keras.Sequential:
    """A small version of the notebook's CNN: index 1 is the first ReLU, as there."""
    return keras.Sequential(
        [
            keras.Input((SIDE, SIDE, 3)),
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.Activation("relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Dropout(0.25),
            keras.layers.Flatten(),
            keras.layers.Dense(16),
            keras.layers.Activation("relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1),
            keras.layers.Activation("sigmoid"),
        ]
    )


@pytest.fixture(scope="module")
def study() -> dict:
    """A model trained (seeded, 3 epochs) on 100 sea and 100 other images, and the data."""
    keras.utils.set_random_seed(2019)
    generator = np.random.default_rng(2019)
    x_train = np.concatenate([sea_images(generator, 100), other_images(generator, 100)])
    y_train = [1] * 100 + [0] * 100
    model = notebook_like_model()
    model.compile(loss="binary_crossentropy", optimizer=keras.optimizers.Adam(0.01))
    model.fit(x_train.astype("float32"), np.array(y_train), batch_size=32, epochs=3, verbose=0)
    # Concept images on the 0-255 scale, unscaled, as the notebook passes them.
    x_concept = np.round(sea_images(generator, 40) * 255).astype(np.uint8)
    return {"model": model, "x_train": x_train, "y_train": y_train, "x_concept": x_concept}


def run_notebook_steps(study: dict, bottleneck: int, **seeds: int) -> TCAV:
    tcav_obj = TCAV(seed=seeds.get("seed"))
    tcav_obj.set_model(study["model"])
    tcav_obj.split_model(bottleneck=bottleneck, conv_layer=True)
    tcav_obj.train_cav(study["x_concept"], seed=seeds.get("cav_seed"))
    tcav_obj.calculate_sensitivity(study["x_train"], study["y_train"])
    return tcav_obj


def test_print_format(study: dict, capsys: pytest.CaptureFixture[str]) -> None:
    tcav_obj = run_notebook_steps(study, bottleneck=1, seed=3)
    tcav_obj.print_sensitivity()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0] == f"The sensitivity of class 1 is  {tcav_obj.tcav_score[1]}"
    assert lines[1] == f"The sensitivity of class 0 is  {tcav_obj.tcav_score[0]}"
    for line in lines:
        assert LINE.match(line), line


def test_scores_are_positive_fractions(study: dict) -> None:
    tcav_obj = run_notebook_steps(study, bottleneck=5, seed=3)
    labels = np.asarray(study["y_train"])
    for label in (0, 1):
        expected = float(np.mean(tcav_obj.sensitivity[labels == label] > 0))
        assert tcav_obj.tcav_score[label] == expected
        assert tcav_obj.zero_fraction[label] == float(
            np.mean(tcav_obj.sensitivity[labels == label] == 0)
        )
    assert tcav_obj.sensitivity.shape == (200,)


def test_constructor_seed_repeats(study: dict) -> None:
    first = run_notebook_steps(study, bottleneck=1, seed=11)
    second = run_notebook_steps(study, bottleneck=1, seed=11)
    other = run_notebook_steps(study, bottleneck=1, seed=12)
    assert np.array_equal(first.sensitivity, second.sensitivity)
    assert np.array_equal(first.cav.direction, second.cav.direction)
    assert not np.array_equal(first.counterexamples, other.counterexamples)


def test_call_seed_repeats(study: dict) -> None:
    tcav_obj = run_notebook_steps(study, bottleneck=5, cav_seed=4)
    direction = tcav_obj.cav.direction.copy()
    tcav_obj.train_cav(study["x_concept"], seed=4)
    assert np.array_equal(tcav_obj.cav.direction, direction)


def test_global_seed_repeats(study: dict) -> None:
    np.random.seed(2019)  # the notebook's first cell  # noqa: NPY002
    first = run_notebook_steps(study, bottleneck=1)
    np.random.seed(2019)  # noqa: NPY002
    second = run_notebook_steps(study, bottleneck=1)
    assert np.array_equal(first.sensitivity, second.sensitivity)


def test_matches_hand_computation(study: dict) -> None:
    tcav_obj = run_notebook_steps(study, bottleneck=5, cav_seed=21)

    rng = np.random.default_rng(21)
    noise = np.rint(rng.random(study["x_concept"].shape) * 255)
    fit_seed = int(rng.integers(2**31 - 1))
    adapter = cav.wrap(study["model"])
    layer = adapter.resolve_layer(5)
    concept_acts = adapter.activations(study["x_concept"], layer)[layer]
    noise_acts = adapter.activations(noise, layer)[layer]
    vector = cav.fit_cav(
        concept_acts,
        noise_acts,
        method="perceptron",
        seed=fit_seed,
        holdout=0.0,
        concept="concept",
        negative="uniform noise",
        layer=layer,
    )
    labels = np.asarray(study["y_train"])
    grads = adapter.gradients(study["x_train"], layer, 0, output="loss", labels=labels)[layer]
    sensitivity = grads @ vector.direction

    assert np.array_equal(tcav_obj.counterexamples, noise)
    assert np.allclose(tcav_obj.cav.direction, vector.direction, rtol=0, atol=1e-12)
    assert np.allclose(tcav_obj.sensitivity, sensitivity, rtol=1e-9, atol=1e-12)


def test_sensitivity_streams_gradients(study: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    tcav_obj = run_notebook_steps(study, bottleneck=5, cav_seed=21)
    whole = tcav_obj.sensitivity.copy()

    def whole_array(*args: object, **kwargs: object) -> None:
        raise AssertionError("calculate_sensitivity asked for every gradient at once")

    monkeypatch.setattr(tcav_obj.adapter, "gradients", whole_array)
    streamed = tcav_obj.calculate_sensitivity(study["x_train"], study["y_train"])
    assert streamed.shape == (len(study["y_train"]),)
    assert np.allclose(streamed, whole, rtol=1e-12, atol=0)


def test_sign_matches_keras_loss(study: dict) -> None:
    """Positive sensitivity: moving toward the concept lowers Keras' own BCE loss.

    The model is untrained (seeded), so its probabilities sit away from 0 and 1 and
    finite differences of the float32 loss are accurate.
    """
    keras.utils.set_random_seed(5)
    model = notebook_like_model()
    tcav_obj = TCAV(model, seed=5)
    tcav_obj.split_model(6)
    tcav_obj.train_cav(study["x_concept"])
    tcav_obj.calculate_sensitivity(study["x_train"], study["y_train"])
    direction = tcav_obj.cav.direction
    acts = cav.wrap(model).activations(study["x_train"], 6)[tcav_obj.layer]
    labels = np.asarray(study["y_train"], dtype="float32")[:, None]

    def loss_after(shift: float) -> np.ndarray:
        h = keras.ops.convert_to_tensor((acts + shift * direction).astype("float32"))
        for layer in model.layers[7:]:
            h = layer(h, training=False)
        loss = keras.losses.binary_crossentropy(labels, h)
        return np.asarray(keras.ops.convert_to_numpy(keras.ops.stop_gradient(loss)), float)

    step = 1e-2
    central = -(loss_after(step) - loss_after(-step)) / (2 * step)
    clear = np.abs(tcav_obj.sensitivity) > 1e-2 * np.abs(tcav_obj.sensitivity).max()
    assert clear.sum() >= 50
    assert np.array_equal(np.sign(central[clear]), np.sign(tcav_obj.sensitivity[clear]))
    assert np.allclose(central, tcav_obj.sensitivity, rtol=1e-2, atol=1e-3 * np.abs(central).max())


def test_saturated_model_prints_nan(capsys: pytest.CaptureFixture[str]) -> None:
    model = notebook_like_model()
    head = model.layers[-2]
    kernel, _ = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.array([80.0], dtype="float32")])
    generator = np.random.default_rng(1)
    x_train = np.concatenate([sea_images(generator, 10), other_images(generator, 10)])
    tcav_obj = TCAV(model, seed=0)
    tcav_obj.split_model(1)
    tcav_obj.train_cav(np.round(sea_images(generator, 10) * 255))
    tcav_obj.calculate_sensitivity(x_train, [1] * 10 + [0] * 10)
    tcav_obj.print_sensitivity()
    lines = capsys.readouterr().out.splitlines()
    assert np.all(tcav_obj.sensitivity == 0.0)
    assert np.isnan(tcav_obj.tcav_score[1])
    assert tcav_obj.zero_fraction[0] == 1.0
    assert lines[0] == "The sensitivity of class 1 is  nan"
    assert "exactly 0" in lines[1]
    assert lines[2] == "The sensitivity of class 0 is  nan"


def test_missing_class_scored_nan(study: dict) -> None:
    tcav_obj = run_notebook_steps(study, bottleneck=1, seed=3)
    tcav_obj.calculate_sensitivity(study["x_train"][:100], study["y_train"][:100])
    assert np.isnan(tcav_obj.tcav_score[0])
    assert not np.isnan(tcav_obj.tcav_score[1])


def test_steps_out_of_order(study: dict) -> None:
    tcav_obj = TCAV()
    with pytest.raises(InvalidArgumentError, match="set_model"):
        tcav_obj.split_model(1)
    tcav_obj.set_model(study["model"])
    with pytest.raises(InvalidArgumentError, match="split_model"):
        tcav_obj.train_cav(study["x_concept"])
    tcav_obj.split_model(1)
    with pytest.raises(InvalidArgumentError, match="train_cav"):
        tcav_obj.calculate_sensitivity(study["x_train"], study["y_train"])
    with pytest.raises(InvalidArgumentError, match="calculate_sensitivity"):
        tcav_obj.print_sensitivity()


def test_bottleneck_out_of_range(study: dict) -> None:
    tcav_obj = TCAV(study["model"])
    with pytest.raises(LayerNotFoundError, match="0 to 9"):
        tcav_obj.split_model(bottleneck=10)
    with pytest.raises(ValueError, match="negative"):
        tcav_obj.split_model(bottleneck=-1)


def test_torch_model_accepted() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 1),
        torch.nn.Sigmoid(),
    )
    generator = np.random.default_rng(2)
    x_train = np.concatenate([sea_images(generator, 6), other_images(generator, 6)])
    tcav_obj = TCAV(model, seed=1)
    tcav_obj.split_model(1)
    tcav_obj.train_cav(np.round(sea_images(generator, 8) * 255).transpose(0, 3, 1, 2))
    tcav_obj.calculate_sensitivity(x_train.transpose(0, 3, 1, 2), [1] * 6 + [0] * 6)
    assert tcav_obj.sensitivity.shape == (12,)
    assert set(tcav_obj.tcav_score) == {0, 1}

"""Known-answer tests of the Keras adapter (cav.models.keras_adapter).

They run under the backend of KERAS_BACKEND (torch unless set); CI runs them under the
torch and the TensorFlow backend.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import cav  # noqa: E402
from cav.errors import (  # noqa: E402
    InvalidArgumentError,
    InvalidTypeError,
    LayerNotFoundError,
    NonFiniteError,
    OutputNotFoundError,
)
from cav.models.keras_adapter import KerasAdapter  # noqa: E402

pytestmark = pytest.mark.keras

EXACT = 1e-12  # float64 round-off bound for a handful of products
F64 = "float64"
# Keras 3.15 type promotion turns float64 into float32 under every backend but TensorFlow
# (BIT64_TO_BIT32_DTYPE in keras.src.backend.common.dtypes), so under the torch backend
# Dense layers (ops.matmul) and BatchNormalization compute in float32 even in a float64
# model. Convolutions and element-wise layers stay float64 under both backends.
DENSE_ATOL = EXACT if keras.backend.backend() == "tensorflow" else 2e-6


def randomize(model: keras.Model, seed: int, scale: float = 0.5) -> keras.Model:
    """Replace every weight by seeded normal values."""
    generator = np.random.default_rng(seed)
    model.set_weights([scale * generator.normal(size=w.shape) for w in model.get_weights()])
    return model


def to_numpy(tensor: object) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.stop_gradient(tensor)))


def dense_model(units: int, activation: str | None, seed: int = 0) -> keras.Sequential:
    layers = [
        keras.Input((6,), dtype=F64),
        keras.layers.Dense(8, activation="tanh", dtype=F64, name="features"),
        keras.layers.Dense(units, activation=activation, dtype=F64, name="head"),
    ]
    return randomize(keras.Sequential(layers), seed)


def softmax_functional(seed: int = 0) -> keras.Model:
    inputs = keras.Input((6,), dtype=F64, name="pixels")
    features = keras.layers.Dense(8, activation="tanh", dtype=F64, name="features")(inputs)
    scores = keras.layers.Dense(3, dtype=F64, name="scores")(features)
    probabilities = keras.layers.Activation("softmax", dtype=F64, name="probs")(scores)
    return randomize(keras.Model(inputs, probabilities), seed)


def conv_model(seed: int = 0) -> keras.Sequential:
    """Conv, tanh, dropout, a dense head written as a conv, then a sigmoid: all float64."""
    layers = [
        keras.Input((8, 8, 3), dtype=F64),
        keras.layers.Conv2D(4, 3, dtype=F64, name="conv"),
        keras.layers.Activation("tanh", dtype=F64, name="tanh"),
        keras.layers.Dropout(0.5, dtype=F64, name="drop"),
        # A 6x6 convolution over the 6x6 map is a dense layer that stays float64.
        keras.layers.Conv2D(1, 6, dtype=F64, name="head"),
        keras.layers.Flatten(dtype=F64, name="flat"),
        keras.layers.Activation("sigmoid", dtype=F64, name="out"),
    ]
    return randomize(keras.Sequential(layers), seed)


def norm_model(seed: int = 0) -> keras.Sequential:
    """Conv, tanh and batch normalization with set moving statistics."""
    layers = [
        keras.Input((8, 8, 3), dtype=F64),
        keras.layers.Conv2D(4, 3, dtype=F64, name="conv"),
        keras.layers.Activation("tanh", dtype=F64, name="tanh"),
        keras.layers.BatchNormalization(dtype=F64, name="norm"),
        keras.layers.Flatten(dtype=F64, name="flat"),
        keras.layers.Dense(1, activation="sigmoid", dtype=F64, name="head"),
    ]
    model = randomize(keras.Sequential(layers), seed)
    norm = model.get_layer("norm")
    generator = np.random.default_rng(seed + 1)
    gamma, beta, _, _ = norm.get_weights()
    norm.set_weights([gamma, beta, generator.normal(size=4), generator.uniform(0.5, 2, size=4)])
    return model


@pytest.fixture
def inputs(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(7, 6))


@pytest.fixture
def images(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(5, 8, 8, 3))


# Linear heads: the gradient at the features is the head's kernel column, exactly.


def test_dense_sigmoid_logit_is_kernel(inputs: np.ndarray) -> None:
    model = dense_model(1, "sigmoid")
    kernel = model.get_layer("head").get_weights()[0][:, 0]
    adapter = cav.wrap(model)
    class_one = adapter.gradients(inputs, "features", target=1)["features"]
    class_zero = adapter.gradients(inputs, "features", target=0)["features"]
    assert class_one.dtype == np.float64
    assert np.allclose(class_one, np.tile(kernel, (7, 1)), rtol=0, atol=DENSE_ATOL)
    assert np.allclose(class_zero, np.tile(-kernel, (7, 1)), rtol=0, atol=DENSE_ATOL)


def test_softmax_logit_is_kernel(inputs: np.ndarray, rng: np.random.Generator) -> None:
    model = softmax_functional()
    kernel = model.get_layer("scores").get_weights()[0]
    adapter = cav.wrap(model)
    direction = rng.normal(size=8)
    direction /= np.linalg.norm(direction)
    for target in range(3):
        grads = adapter.gradients(inputs, "features", target=target)["features"]
        assert np.allclose(grads, np.tile(kernel[:, target], (7, 1)), rtol=0, atol=DENSE_ATOL)
        derivatives = cav.directional_derivatives(grads, direction)
        expected_score = 1.0 if kernel[:, target] @ direction > 0 else 0.0
        assert cav.tcav_score(derivatives) == expected_score


def test_dense_probability_gradient(inputs: np.ndarray) -> None:
    model = dense_model(1, "sigmoid")
    kernel = model.get_layer("head").get_weights()[0][:, 0]
    adapter = cav.wrap(model)
    p = adapter.predict(inputs)[:, 1]
    grads = adapter.gradients(inputs, "features", 1, output="probability")["features"]
    assert np.allclose(grads, (p * (1 - p))[:, None] * kernel, rtol=0, atol=DENSE_ATOL)


def test_softmax_loss_gradient(inputs: np.ndarray) -> None:
    model = softmax_functional()
    kernel = model.get_layer("scores").get_weights()[0]
    adapter = cav.wrap(model)
    labels = np.array([2, 1, 0, 0, 1, 2, 2])
    p = adapter.predict(inputs)
    grads = adapter.gradients(inputs, "features", 0, output="loss", labels=labels)["features"]
    expected = kernel.T[labels] - p @ kernel.T
    assert np.allclose(grads, expected, rtol=0, atol=DENSE_ATOL)


def test_sigmoid_loss_gradient(inputs: np.ndarray) -> None:
    model = dense_model(1, "sigmoid")
    kernel = model.get_layer("head").get_weights()[0][:, 0]
    adapter = cav.wrap(model)
    labels = np.array([1, 1, 0, 1, 0, 0, 1])
    p = adapter.predict(inputs)[:, 1]
    grads = adapter.gradients(inputs, "features", 1, output="loss", labels=labels)["features"]
    assert np.allclose(grads, (labels - p)[:, None] * kernel, rtol=0, atol=DENSE_ATOL)


def test_saturated_sigmoid_loss_zero(inputs: np.ndarray) -> None:
    model = dense_model(1, "sigmoid")
    head = model.get_layer("head")
    kernel, _ = head.get_weights()
    head.set_weights([kernel, np.array([60.0])])
    labels = np.array([1, 0, 1, 0, 1, 0, 1])
    grads = cav.wrap(model).gradients(inputs, "features", 1, output="loss", labels=labels)
    assert np.all(grads["features"] == 0.0)


def test_linear_dense_is_raw_logits(inputs: np.ndarray) -> None:
    model = dense_model(1, None)
    kernel = model.get_layer("head").get_weights()[0][:, 0]
    adapter = cav.wrap(model)
    logits = adapter.activations(inputs, "head")["head"][:, 0]
    grads = adapter.gradients(inputs, "features", 1, output="loss")["features"]
    expected = (1.0 / (1.0 + np.exp(logits)))[:, None] * kernel
    assert np.allclose(grads, expected, rtol=0, atol=DENSE_ATOL)
    assert np.allclose(adapter.predict(inputs)[:, 1], 1 / (1 + np.exp(-logits)), rtol=1e-12)


def test_ops_sigmoid_head_found(inputs: np.ndarray) -> None:
    x = keras.Input((6,), dtype=F64)
    features = keras.layers.Dense(8, activation="tanh", dtype=F64, name="features")(x)
    scores = keras.layers.Dense(1, dtype=F64, name="scores")(features)
    model = randomize(keras.Model(x, keras.ops.sigmoid(scores)), 1)
    kernel = model.get_layer("scores").get_weights()[0][:, 0]
    grads = cav.wrap(model).gradients(inputs, "features", target=1)["features"]
    assert np.allclose(grads, np.tile(kernel, (7, 1)), rtol=0, atol=DENSE_ATOL)


# Finite differences at an intermediate layer.


def downstream(model: keras.Sequential, layer: str, activations: np.ndarray) -> np.ndarray:
    """Run the layers after ``layer`` on its (flattened) output, in inference mode."""
    names = [each.name for each in model.layers]
    start = names.index(layer)
    shape = model.layers[start].output.shape[1:]
    h = keras.ops.convert_to_tensor(activations.reshape((-1, *shape)))
    for each in model.layers[start + 1 :]:
        h = each(h, training=False)
    return to_numpy(h)[:, 0]


@pytest.mark.parametrize(
    ("output", "objective"),
    [
        ("logit", lambda p: np.log(p / (1 - p))),
        ("probability", lambda p: p),
        ("loss", lambda p: np.log(p)),
    ],
)
def test_gradient_matches_differences(images: np.ndarray, output: str, objective) -> None:
    model = conv_model()
    adapter = cav.wrap(model)
    grads = adapter.gradients(images, "conv", target=1, output=output)["conv"]
    acts = adapter.activations(images, "conv")["conv"]
    step = 1e-6
    for column in (0, 45, 143):
        delta = np.zeros_like(acts)
        delta[:, column] = step
        up = objective(downstream(model, "conv", acts + delta))
        down = objective(downstream(model, "conv", acts - delta))
        central = (up - down) / (2 * step)
        assert np.allclose(grads[:, column], central, rtol=1e-6, atol=1e-9), column


def test_branches_share_gradient(inputs: np.ndarray) -> None:
    x = keras.Input((6,), dtype=F64)
    trunk = keras.layers.Dense(5, activation="tanh", dtype=F64, name="trunk")(x)
    left = keras.layers.Dense(4, dtype=F64, name="left")(trunk)
    right = keras.layers.Dense(4, dtype=F64, name="right")(trunk)
    joined = keras.layers.Add(dtype=F64, name="join")([left, right])
    hidden = keras.layers.Activation("tanh", dtype=F64, name="act")(joined)
    out = keras.layers.Dense(2, activation="softmax", dtype=F64, name="out")(hidden)
    model = randomize(keras.Model(x, out), 2)
    grads = cav.wrap(model).gradients(inputs, ["left", "right", "join", "trunk"], target=1)
    assert np.allclose(grads["left"], grads["join"], rtol=0, atol=EXACT)
    assert np.allclose(grads["right"], grads["join"], rtol=0, atol=EXACT)
    left_kernel = model.get_layer("left").get_weights()[0]
    right_kernel = model.get_layer("right").get_weights()[0]
    trunk_expected = grads["join"] @ (left_kernel + right_kernel).T
    assert np.allclose(grads["trunk"], trunk_expected, rtol=0, atol=DENSE_ATOL)


def test_input_layer_gradient(inputs: np.ndarray) -> None:
    model = softmax_functional()
    adapter = cav.wrap(model)
    assert adapter.resolve_layer(0) == "pixels"
    grads = adapter.gradients(inputs, ["pixels", "features"], target=2)
    first_kernel, first_bias = model.get_layer("features").get_weights()
    slope = 1 - np.tanh(inputs @ first_kernel + first_bias) ** 2
    expected = (grads["features"] * slope) @ first_kernel.T
    assert np.allclose(grads["pixels"], expected, rtol=0, atol=DENSE_ATOL)
    assert np.array_equal(adapter.activations(inputs, 0)["pixels"], inputs)


# Inference mode and model state.


def test_batchnorm_uses_moving_stats(images: np.ndarray) -> None:
    model = norm_model()
    adapter = cav.wrap(model)
    acts = adapter.activations(images, ["tanh", "norm"])
    gamma, beta, mean, variance = model.get_layer("norm").get_weights()
    epsilon = model.get_layer("norm").epsilon
    tanh = acts["tanh"].reshape(5, 6, 6, 4)
    expected = gamma * (tanh - mean) / np.sqrt(variance + epsilon) + beta
    assert np.allclose(acts["norm"], expected.reshape(5, -1), rtol=0, atol=DENSE_ATOL)


def test_dropout_inactive_in_passes(images: np.ndarray) -> None:
    model = conv_model()
    adapter = cav.wrap(model)
    first = adapter.gradients(images, "conv", target=1)["conv"]
    second = adapter.gradients(images, "conv", target=1)["conv"]
    assert np.array_equal(first, second)
    expected = to_numpy(model(images, training=False))[:, 0]
    assert np.allclose(adapter.predict(images)[:, 1], expected, rtol=1e-12)


def test_model_state_untouched(images: np.ndarray) -> None:
    model = conv_model()
    model.get_layer("conv").trainable = False
    trainable = {layer.name: layer.trainable for layer in model.layers}
    weights = [w.copy() for w in model.get_weights()]
    adapter = cav.wrap(model)
    before = adapter.fingerprint()
    adapter.gradients(images, ["conv", "tanh"], target=0, output="loss")
    adapter.activations(images, "flat")
    assert {layer.name: layer.trainable for layer in model.layers} == trainable
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))
    assert adapter.fingerprint() == before


def test_batches_match_one_pass(images: np.ndarray) -> None:
    adapter = cav.wrap(conv_model())
    whole = adapter.gradients(images, ["conv", "head"], target=1)
    pieces = list(adapter.iter_gradients(images, ["conv", "head"], target=1, batch_size=2))
    assert [len(piece["conv"]) for piece in pieces] == [2, 2, 1]
    for name in whole:
        joined = np.concatenate([piece[name] for piece in pieces])
        assert np.allclose(joined, whole[name], rtol=1e-12, atol=0), name


def test_float32_model_returns_float32(images: np.ndarray) -> None:
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(2, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    grads = cav.wrap(model).gradients(images, "conv", target=1)["conv"]
    assert grads.dtype == np.float32
    assert grads.shape == (5, 6 * 6 * 2)


def test_integer_inputs_cast(images: np.ndarray) -> None:
    adapter = cav.wrap(conv_model())
    pixels = np.round(np.abs(images) * 50).astype(np.uint8)
    cast = adapter.activations(pixels, "conv")["conv"]
    assert np.allclose(cast, adapter.activations(pixels.astype(F64), "conv")["conv"])


def test_nonfinite_input_rejected(images: np.ndarray) -> None:
    images[1, 2, 3, 0] = np.inf
    with pytest.raises(NonFiniteError, match="input x"):
        cav.wrap(conv_model()).gradients(images, "conv", target=1)


# Layers.


def test_layer_names_and_indices() -> None:
    adapter = cav.wrap(conv_model())
    assert adapter.layer_names == ["conv", "tanh", "drop", "head", "flat", "out"]
    assert adapter.resolve_layer(1) == "tanh"


def test_unknown_layer_lists_closest() -> None:
    with pytest.raises(LayerNotFoundError, match=r"valid names: 'conv'") as info:
        cav.wrap(conv_model()).resolve_layer("cnov")
    assert "'head'" in str(info.value)


def test_layer_index_out_of_range() -> None:
    with pytest.raises(LayerNotFoundError, match="0 to 5"):
        cav.wrap(conv_model()).resolve_layer(6)


def test_negative_layer_index_rejected() -> None:
    with pytest.raises(LayerNotFoundError, match="negative"):
        cav.wrap(conv_model()).resolve_layer(-2)


def test_shared_layer_rejected(inputs: np.ndarray) -> None:
    x = keras.Input((6,), dtype=F64)
    shared = keras.layers.Dense(6, activation="tanh", dtype=F64, name="shared")
    out = keras.layers.Dense(1, activation="sigmoid", dtype=F64, name="out")(shared(shared(x)))
    adapter = cav.wrap(keras.Model(x, out))
    with pytest.raises(InvalidArgumentError, match="more than once"):
        adapter.activations(inputs, "shared")


# Outputs, targets and model kinds.


def test_logit_not_found_error(inputs: np.ndarray) -> None:
    model = dense_model(1, "tanh")
    adapter = cav.wrap(model)
    with pytest.raises(OutputNotFoundError, match="output='probability'"):
        adapter.gradients(inputs, "features", target=1)


def test_unknown_output_range_checked(inputs: np.ndarray) -> None:
    adapter = cav.wrap(dense_model(1, "tanh"))
    with pytest.raises(OutputNotFoundError, match="not a probability"):
        adapter.gradients(inputs, "features", target=1, output="probability")


def test_target_out_of_range(inputs: np.ndarray) -> None:
    adapter = cav.wrap(softmax_functional())
    with pytest.raises(InvalidArgumentError, match=r"target=5 .* 0 to 2"):
        adapter.gradients(inputs, "features", target=5)


def test_predict_and_n_classes(inputs: np.ndarray) -> None:
    sigmoid = cav.wrap(dense_model(1, "sigmoid"))
    softmax = cav.wrap(softmax_functional())
    assert sigmoid.n_classes == 2
    assert softmax.n_classes == 3
    assert np.allclose(sigmoid.predict(inputs).sum(axis=1), 1.0, rtol=1e-12)
    assert softmax.predict(inputs).shape == (7, 3)


class Subclassed(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.dense = keras.layers.Dense(1, activation="sigmoid")

    def call(self, x):
        return self.dense(x)


def test_subclassed_model_rejected() -> None:
    model = Subclassed()
    model(np.zeros((1, 3), dtype="float32"))
    with pytest.raises(InvalidTypeError, match="subclassed"):
        cav.wrap(model)


def test_unbuilt_model_rejected() -> None:
    model = keras.Sequential([keras.layers.Dense(1)])
    with pytest.raises(InvalidArgumentError, match="not built"):
        cav.wrap(model)


def test_two_output_model_rejected() -> None:
    x = keras.Input((3,))
    model = keras.Model(x, [keras.layers.Dense(1)(x), keras.layers.Dense(2)(x)])
    with pytest.raises(InvalidTypeError, match="one input and one output"):
        cav.wrap(model)


def test_wrap_returns_keras_adapter() -> None:
    adapter = cav.wrap(conv_model())
    assert isinstance(adapter, KerasAdapter)
    assert adapter.framework == "keras"


def test_fingerprint_tracks_weights() -> None:
    model = dense_model(1, "sigmoid")
    adapter = cav.wrap(model)
    before = adapter.fingerprint()
    assert adapter.fingerprint() == before
    kernel, bias = model.get_layer("head").get_weights()
    model.get_layer("head").set_weights([kernel, bias + 1e-9])
    assert adapter.fingerprint() != before


def test_fingerprint_tracks_settings() -> None:
    # Same weights, one setting changed: the features' activation, or the head's. The
    # models share a name because it enters the weights' paths.
    def named(features: str, head: str) -> keras.Sequential:
        layers = [
            keras.Input((6,), dtype=F64),
            keras.layers.Dense(8, activation=features, dtype=F64, name="features"),
            keras.layers.Dense(1, activation=head, dtype=F64, name="head"),
        ]
        return randomize(keras.Sequential(layers, name="net"), 0)

    base = cav.wrap(named("tanh", "sigmoid")).fingerprint()
    assert cav.wrap(named("tanh", "sigmoid")).fingerprint() == base
    assert cav.wrap(named("relu", "sigmoid")).fingerprint() != base
    assert cav.wrap(named("tanh", "tanh")).fingerprint() != base


def test_fingerprint_tracks_lambda_code() -> None:
    # A Lambda layer is described by get_config(), which stores the code of a lambda.
    def with_lambda(function: Callable[[object], object]) -> keras.Sequential:
        layers = [
            keras.Input((6,), dtype=F64),
            keras.layers.Lambda(function, dtype=F64, name="scale"),
            keras.layers.Dense(1, activation="sigmoid", dtype=F64, name="head"),
        ]
        return randomize(keras.Sequential(layers), 0)

    double = cav.wrap(with_lambda(lambda t: t * 2.0)).fingerprint()
    triple = cav.wrap(with_lambda(lambda t: t * 3.0)).fingerprint()
    assert double != triple


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or keras.backend.backend() == "tensorflow",
    reason="needs TensorFlow installed and another Keras backend",
)
def test_fingerprint_leaves_tensorflow_unimported() -> None:
    # get_config() would import TensorFlow, which took 1.5 s on the test machine.
    script = (
        "import sys, keras, cav\n"
        "from cav.experiments.networks import build_keras_cnn\n"
        "cav.wrap(build_keras_cnn((32, 32, 3))).fingerprint()\n"
        "print('tensorflow' in sys.modules)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert completed.stdout.strip().splitlines()[-1] == "False"


def test_activations_stop_at_deepest_layer(inputs: np.ndarray) -> None:
    calls = []

    def spy(tensor: object) -> object:
        calls.append(1)
        return tensor

    model = keras.Sequential(
        [
            keras.Input((6,), dtype=F64),
            keras.layers.Dense(8, activation="tanh", dtype=F64, name="features"),
            keras.layers.Lambda(spy, dtype=F64, name="spy"),
            keras.layers.Dense(1, activation="sigmoid", dtype=F64, name="head"),
        ]
    )
    randomize(model, 0)
    calls.clear()
    adapter = cav.wrap(model)
    acts = adapter.activations(inputs, "features", batch_size=7)["features"]
    assert calls == []
    expected = to_numpy(model.get_layer("features")(keras.ops.convert_to_tensor(inputs)))
    assert np.allclose(acts, expected, rtol=0, atol=DENSE_ATOL)
    adapter.predict(inputs, batch_size=7)
    assert len(calls) == 1
    adapter.gradients(inputs, "features", target=1, batch_size=7)
    assert len(calls) == 2

"""The same conv net in PyTorch (NCHW) and Keras (NHWC) gives the same activations and gradients."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

import cav  # noqa: E402

pytestmark = pytest.mark.keras

nn = torch.nn
F64 = "float64"
CHANNELS, SIDE, CLASSES = 5, 4, 3  # second conv output: 5 channels on a 4x4 map

# Tolerances. Both models compute in float64, except that Keras 3.15 runs Dense layers
# (ops.matmul) in float32 under the torch backend (BIT64_TO_BIT32_DTYPE in
# keras.src.backend.common.dtypes), so heads built on Dense match to float32 precision
# there. The "conv" head, a 4x4 convolution over the 4x4 map, stays float64 everywhere.
FLOAT64_RTOL = 1e-10
DENSE_RTOL = FLOAT64_RTOL if keras.backend.backend() == "tensorflow" else 1e-5
ATOL_SCALE = 1e-12


def torch_pair_model(head: str, generator: np.random.Generator) -> tuple[nn.Module, dict]:
    units = CLASSES if head == "dense_softmax" else 1
    final = nn.Softmax(dim=1) if head == "dense_softmax" else nn.Sigmoid()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.Tanh(),
        nn.Conv2d(4, CHANNELS, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(CHANNELS * SIDE * SIDE, units),
        final,
    ).double()
    weights = {
        "conv1": 0.4 * generator.normal(size=(4, 3, 3, 3)),
        "bias1": 0.1 * generator.normal(size=4),
        "conv2": 0.4 * generator.normal(size=(CHANNELS, 4, 3, 3)),
        "bias2": 0.1 * generator.normal(size=CHANNELS),
        "dense": 0.3 * generator.normal(size=(units, CHANNELS * SIDE * SIDE)),
        "bias3": 0.1 * generator.normal(size=units),
    }
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(weights["conv1"]))
        model[0].bias.copy_(torch.as_tensor(weights["bias1"]))
        model[2].weight.copy_(torch.as_tensor(weights["conv2"]))
        model[2].bias.copy_(torch.as_tensor(weights["bias2"]))
        model[5].weight.copy_(torch.as_tensor(weights["dense"]))
        model[5].bias.copy_(torch.as_tensor(weights["bias3"]))
    return model, weights


def keras_pair_model(head: str, weights: dict) -> keras.Model:
    units = weights["bias3"].size
    # torch flattens (C, H, W), Keras (H, W, C): reorder the dense weight's input axis.
    dense = weights["dense"].reshape(units, CHANNELS, SIDE, SIDE).transpose(2, 3, 1, 0)
    layers = [
        keras.Input((8, 8, 3), dtype=F64),
        keras.layers.Conv2D(4, 3, dtype=F64, name="conv1"),
        keras.layers.Activation("tanh", dtype=F64, name="tanh"),
        keras.layers.Conv2D(CHANNELS, 3, dtype=F64, name="conv2"),
        keras.layers.Activation("relu", dtype=F64, name="relu"),
    ]
    if head == "conv_sigmoid":
        layers += [
            keras.layers.Conv2D(1, SIDE, dtype=F64, name="head"),
            keras.layers.Flatten(dtype=F64, name="flat"),
            keras.layers.Activation("sigmoid", dtype=F64, name="out"),
        ]
        head_weights = [dense, weights["bias3"]]
    else:
        activation = "softmax" if head == "dense_softmax" else "sigmoid"
        layers += [
            keras.layers.Flatten(dtype=F64, name="flat"),
            keras.layers.Dense(units, activation=activation, dtype=F64, name="head"),
        ]
        head_weights = [dense.reshape(-1, units), weights["bias3"]]
    model = keras.Sequential(layers)
    model.get_layer("conv1").set_weights([weights["conv1"].transpose(2, 3, 1, 0), weights["bias1"]])
    model.get_layer("conv2").set_weights([weights["conv2"].transpose(2, 3, 1, 0), weights["bias2"]])
    model.get_layer("head").set_weights(head_weights)
    return model


def nchw_to_nhwc(flat: np.ndarray, channels: int) -> np.ndarray:
    """Reorder flattened (C, H, W) rows to flattened (H, W, C) rows."""
    n = flat.shape[0]
    side = round(np.sqrt(flat.shape[1] / channels))
    return flat.reshape(n, channels, side, side).transpose(0, 2, 3, 1).reshape(n, -1)


# torch layer name, Keras layer name, channels of the layer's output
LAYERS = [("0", "conv1", 4), ("1", "tanh", 4), ("2", "conv2", CHANNELS), ("3", "relu", CHANNELS)]
HEADS = ["conv_sigmoid", "dense_sigmoid", "dense_softmax"]


def build_pair(head: str) -> tuple[cav.ModelAdapter, cav.ModelAdapter, np.ndarray]:
    generator = np.random.default_rng(7)
    torch_model, weights = torch_pair_model(head, generator)
    keras_model = keras_pair_model(head, weights)
    images = generator.uniform(0, 1, size=(6, 8, 8, 3))
    return cav.wrap(torch_model), cav.wrap(keras_model), images


def tolerance(head: str) -> float:
    return FLOAT64_RTOL if head == "conv_sigmoid" else DENSE_RTOL


def assert_same(torch_values: np.ndarray, keras_values: np.ndarray, rtol: float) -> None:
    scale = float(np.abs(keras_values).max())
    assert torch_values.shape == keras_values.shape
    assert np.allclose(torch_values, keras_values, rtol=rtol, atol=ATOL_SCALE + rtol * scale)


@pytest.mark.parametrize("head", HEADS)
def test_same_activations(head: str) -> None:
    torch_adapter, keras_adapter, images = build_pair(head)
    torch_acts = torch_adapter.activations(images.transpose(0, 3, 1, 2), [t for t, _, _ in LAYERS])
    keras_acts = keras_adapter.activations(images, [k for _, k, _ in LAYERS])
    for torch_name, keras_name, channels in LAYERS:
        reordered = nchw_to_nhwc(torch_acts[torch_name], channels)
        assert_same(reordered, keras_acts[keras_name], FLOAT64_RTOL)


@pytest.mark.parametrize("head", HEADS)
def test_same_probabilities(head: str) -> None:
    torch_adapter, keras_adapter, images = build_pair(head)
    torch_probabilities = torch_adapter.predict(images.transpose(0, 3, 1, 2))
    keras_probabilities = keras_adapter.predict(images)
    assert_same(torch_probabilities, keras_probabilities, tolerance(head))


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("output", ["logit", "probability", "loss"])
def test_same_gradients(head: str, output: str) -> None:
    torch_adapter, keras_adapter, images = build_pair(head)
    n_classes = keras_adapter.n_classes
    labels = np.arange(len(images)) % n_classes if output == "loss" else None
    for target in range(n_classes):
        torch_grads = torch_adapter.gradients(
            images.transpose(0, 3, 1, 2),
            [t for t, _, _ in LAYERS],
            target=target,
            output=output,
            labels=labels,
        )
        keras_grads = keras_adapter.gradients(
            images, [k for _, k, _ in LAYERS], target=target, output=output, labels=labels
        )
        for torch_name, keras_name, channels in LAYERS:
            reordered = nchw_to_nhwc(torch_grads[torch_name], channels)
            assert np.abs(reordered).max() > 0, (torch_name, target)
            assert_same(reordered, keras_grads[keras_name], tolerance(head))

"""The notebook's CNN in Keras and PyTorch: layer layout, weight copy, seeded training."""

from __future__ import annotations

import numpy as np
import pytest

from cav.errors import InvalidArgumentError, InvalidTypeError
from cav.experiments.networks import (
    LAYER_NAMES,
    NOTEBOOK_LAYERS,
    build_keras_cnn,
    build_torch_cnn,
    copy_keras_weights_to_torch,
    flat_size,
    train_keras_cnn,
)

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.keras


def _keras_logits(model, x: np.ndarray) -> np.ndarray:
    """Run the Keras layers up to the logit (index 16) in inference mode."""
    value = keras.ops.convert_to_tensor(x)
    for layer in model.layers[:17]:
        value = layer(value, training=False)
    return keras.ops.convert_to_numpy(value)


def test_keras_cnn_has_18_named_layers():
    model = build_keras_cnn()
    assert [layer.name for layer in model.layers] == list(LAYER_NAMES)


@pytest.mark.parametrize(
    ("index", "kind"),
    [(1, "relu"), (5, "dropout"), (7, "relu"), (11, "dropout")],
)
def test_keras_notebook_layer_kinds(index, kind):
    layer = build_keras_cnn().layers[index]
    if kind == "relu":
        assert isinstance(layer, keras.layers.Activation)
        assert layer.activation.__name__ == "relu"
    else:
        assert isinstance(layer, keras.layers.Dropout)


def test_notebook_layers_are_1_5_7_11():
    assert NOTEBOOK_LAYERS == (1, 5, 7, 11)


def test_keras_cnn_output_is_sigmoid_unit():
    model = build_keras_cnn()
    assert model.output_shape == (None, 1)
    assert model.layers[17].activation.__name__ == "sigmoid"


def test_keras_cnn_same_seed_same_weights():
    first = build_keras_cnn(seed=3).get_weights()
    second = build_keras_cnn(seed=3).get_weights()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_keras_cnn_other_seed_other_weights():
    first = build_keras_cnn(seed=3).get_weights()[0]
    second = build_keras_cnn(seed=4).get_weights()[0]
    assert not np.array_equal(first, second)


def test_torch_cnn_layer_types():
    model = build_torch_cnn()
    nn = torch.nn
    expected = {0: nn.Conv2d, 1: nn.ReLU, 5: nn.Dropout, 7: nn.ReLU, 11: nn.Dropout}
    expected |= {12: nn.Flatten, 16: nn.Linear, 17: nn.Sigmoid}
    assert len(model) == 18
    for index, kind in expected.items():
        assert isinstance(model[index], kind), index


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((32, 32, 3), (6, 6, 64)), ((28, 28, 1), (5, 5, 64)), ((33, 40, 3), (6, 8, 64))],
)
def test_flat_size_formula(shape, expected):
    assert flat_size(shape) == expected


def test_flat_size_rejects_tiny_images():
    with pytest.raises(InvalidArgumentError, match="input_shape"):
        flat_size((8, 8, 3))


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 30, 1)])
def test_weight_copy_same_logits(shape):
    keras_model = build_keras_cnn(shape, seed=1)
    torch_model = build_torch_cnn(shape)
    copy_keras_weights_to_torch(keras_model, torch_model)
    torch_model.eval()
    x = np.random.default_rng(0).random((5, *shape), dtype=np.float32)

    expected = _keras_logits(keras_model, x)
    with torch.no_grad():
        nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
        logits = torch_model[:17](nchw).numpy()
        probability = torch_model(nchw).numpy()

    # float32 sums of up to 2,304 terms in a different order: agree to about 1e-6 relative
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probability, keras_model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_weight_copy_same_layer7_activations():
    keras_model = build_keras_cnn(seed=2)
    torch_model = build_torch_cnn()
    copy_keras_weights_to_torch(keras_model, torch_model)
    x = np.random.default_rng(1).random((3, 32, 32, 3), dtype=np.float32)
    value = keras.ops.convert_to_tensor(x)
    for layer in keras_model.layers[:8]:
        value = layer(value, training=False)
    with torch.no_grad():
        nchw = torch_model.eval()[:8](torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(
        nchw.permute(0, 2, 3, 1).numpy(), keras.ops.convert_to_numpy(value), rtol=1e-4, atol=1e-5
    )


def test_weight_copy_rejects_other_shapes():
    keras_model = build_keras_cnn((32, 32, 3))
    torch_model = build_torch_cnn((28, 28, 3))
    with pytest.raises(InvalidArgumentError, match="same input_shape"):
        copy_keras_weights_to_torch(keras_model, torch_model)


def test_weight_copy_rejects_other_models():
    with pytest.raises(InvalidTypeError, match="build_keras_cnn"):
        copy_keras_weights_to_torch(object(), build_torch_cnn())


def _bright_dark_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat([1, 0], n // 2)
    x = rng.random((n, 16, 16, 3), dtype=np.float32) * 0.3
    x[y == 1] += 0.6
    return x, y


def test_training_learns_bright_vs_dark():
    x, y = _bright_dark_images(256, seed=0)
    model = build_keras_cnn((16, 16, 3), seed=0)
    log = train_keras_cnn(model, x, y, epochs=3, batch_size=16, seed=0)
    predicted = model.predict(x, verbose=0)[:, 0] > 0.5
    assert np.mean(predicted == y) == 1.0
    assert len(log.loss) == 3


def test_training_same_seed_same_weights():
    x, y = _bright_dark_images(64, seed=1)
    weights = []
    for _ in range(2):
        model = build_keras_cnn((16, 16, 3), seed=5)
        train_keras_cnn(model, x, y, epochs=1, batch_size=16, seed=7)
        weights.append(model.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_training_reports_every_image():
    x, y = _bright_dark_images(40, seed=2)
    seen: list[tuple[int, int]] = []
    model = build_keras_cnn((16, 16, 3), seed=0)
    train_keras_cnn(model, x, y, epochs=2, batch_size=16, on_batch=lambda e, n: seen.append((e, n)))
    assert [n for e, n in seen if e == 0] == [16, 16, 8]
    assert sum(n for _, n in seen) == 80


@pytest.mark.parametrize(("name", "value"), [("epochs", 0), ("batch_size", -1)])
def test_training_rejects_bad_counts(name, value):
    x, y = _bright_dark_images(8, seed=0)
    with pytest.raises(InvalidArgumentError, match=name):
        train_keras_cnn(build_keras_cnn((16, 16, 3)), x, y, **{name: value})

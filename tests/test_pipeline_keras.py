"""run_tcav on a Keras model agrees with the same weights in the numpy ToyMLP."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import cav  # noqa: E402
from cav.errors import WeakCAVWarning  # noqa: E402
from cav.pipeline.toy import make_toy_mlp  # noqa: E402

pytestmark = pytest.mark.keras

WIDTH = 12


def keras_copy(toy) -> keras.Model:
    """A Keras MLP with the weights of ``toy``: Dense(relu) then Dense (logits)."""
    inputs = keras.Input(shape=(WIDTH,))
    hidden = keras.layers.Dense(toy.first_weights.shape[0], activation="relu", name="hidden")
    logits = keras.layers.Dense(toy.n_classes, name="logits")
    model = keras.Model(inputs, logits(hidden(inputs)))
    hidden.set_weights([toy.first_weights.T, toy.first_bias])
    logits.set_weights([toy.second_weights.T, toy.second_bias])
    return model


def test_keras_matches_numpy_model():
    toy = make_toy_mlp(WIDTH, hidden=10, seed=6)
    rng = np.random.default_rng(6)
    inputs = rng.normal(size=(80, WIDTH)).astype(np.float32)
    gradient = toy.gradients(inputs, ["features"], 1)["features"].mean(axis=0)
    concepts = {
        "planted": (rng.normal(size=(30, WIDTH)) + 2.0 * gradient / np.linalg.norm(gradient)),
        "random": rng.normal(size=(30, WIDTH)),
    }
    concepts = {name: images.astype(np.float32) for name, images in concepts.items()}
    pool = rng.normal(size=(150, WIDTH)).astype(np.float32)
    options = {"random_pool": pool, "n_random": 5, "seed": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakCAVWarning)
        from_keras = cav.run_tcav(
            keras_copy(toy), inputs, [0, 1], concepts, layers="hidden", **options
        )
        from_numpy = cav.run_tcav(toy, inputs, [0, 1], concepts, layers="hidden", **options)
    keras_runs = from_keras.runs
    numpy_runs = from_numpy.runs
    assert from_keras.params["framework"] == "keras"
    assert keras_runs["concept"].tolist() == numpy_runs["concept"].tolist()
    # float32 rounding in Keras can move a derivative near zero across the sign boundary,
    # so scores may differ by a few inputs out of 80.
    np.testing.assert_allclose(keras_runs["score"], numpy_runs["score"], atol=3 / 80)
    np.testing.assert_allclose(keras_runs["cav_accuracy"], numpy_runs["cav_accuracy"], atol=0.05)

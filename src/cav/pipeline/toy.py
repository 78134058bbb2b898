"""A numpy MLP with the model-adapter API, for calibration studies and tests.

:class:`ToyMLP` needs no deep-learning framework and computes exact gradients, so
:func:`cav.run_tcav` can be run on it thousands of times to measure how often a test
rejects a concept that is just another random set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np

from cav.errors import InvalidArgumentError, LayerNotFoundError


class ToyMLP:
    """Logits ``z = W2 relu(W1 x + b1) + b2`` of vector inputs ``x``, as a model adapter.

    Layers: ``"features"`` is the input itself, of width ``d``, and ``"hidden"`` the ReLU
    output, of width ``h``. With ``dz = d o_k / d z`` the derivative of the class-``k``
    output ``o_k`` with respect to the logits, the gradients are ``g_h = W2^T dz`` at the
    hidden layer and ``g_x = W1^T (g_h * 1[W1 x + b1 > 0])`` at the features. ``dz`` is
    ``e_k`` for ``"logit"`` and ``p_k (e_k - p)`` for ``"probability"``, where
    ``p = softmax(z)``. For ``"loss"``, the negated cross-entropy against label ``y``, it
    is ``onehot(y) - p``.

    Parameters
    ----------
    first_weights : numpy.ndarray of shape (h, d)
    first_bias : numpy.ndarray of shape (h,)
    second_weights : numpy.ndarray of shape (n_classes, h)
    second_bias : numpy.ndarray of shape (n_classes,)
    """

    framework = "numpy"
    layer_names: ClassVar[list[str]] = ["features", "hidden"]

    def __init__(
        self,
        first_weights: np.ndarray,
        first_bias: np.ndarray,
        second_weights: np.ndarray,
        second_bias: np.ndarray,
    ) -> None:
        self.first_weights = np.asarray(first_weights, dtype=np.float64)
        self.first_bias = np.asarray(first_bias, dtype=np.float64)
        self.second_weights = np.asarray(second_weights, dtype=np.float64)
        self.second_bias = np.asarray(second_bias, dtype=np.float64)
        hidden = self.first_weights.shape[0]
        if self.first_bias.shape != (hidden,) or self.second_weights.shape[1] != hidden:
            raise InvalidArgumentError(
                f"weight shapes do not match: W1 {self.first_weights.shape}, b1 "
                f"{self.first_bias.shape}, W2 {self.second_weights.shape}"
            )
        if self.second_bias.shape != (self.second_weights.shape[0],):
            raise InvalidArgumentError(
                f"b2 has shape {self.second_bias.shape}; expected ({self.second_weights.shape[0]},)"
            )

    @property
    def n_classes(self) -> int:
        """Number of output classes."""
        return int(self.second_weights.shape[0])

    def resolve_layer(self, layer: str | int) -> str:
        """Return the layer's name: ``"features"`` (index 0) or ``"hidden"`` (index 1)."""
        if isinstance(layer, str) and layer in self.layer_names:
            return layer
        if isinstance(layer, (int, np.integer)) and 0 <= layer < len(self.layer_names):
            return self.layer_names[int(layer)]
        raise LayerNotFoundError(f"layer {layer!r} not found; valid layers: {self.layer_names}")

    def activations(
        self, x: np.ndarray, layers: Sequence[str], batch_size: int = 64
    ) -> dict[str, np.ndarray]:
        """Return the activations of ``layers``, each of shape (n, width), float32."""
        inputs = np.asarray(x, dtype=np.float64)
        hidden = np.maximum(inputs @ self.first_weights.T + self.first_bias, 0.0)
        values = {"features": inputs, "hidden": hidden}
        return {layer: values[self.resolve_layer(layer)].astype(np.float32) for layer in layers}

    def gradients(
        self,
        x: np.ndarray,
        layers: Sequence[str],
        target: int,
        output: str = "logit",
        labels: np.ndarray | None = None,
        batch_size: int = 64,
    ) -> dict[str, np.ndarray]:
        """Return the gradients of the output at ``layers``, each of shape (n, width)."""
        batches = list(self.iter_gradients(x, layers, target, output, labels, batch_size))
        return {layer: np.concatenate([batch[layer] for batch in batches]) for layer in layers}

    def iter_gradients(
        self,
        x: np.ndarray,
        layers: Sequence[str],
        target: int,
        output: str = "logit",
        labels: np.ndarray | None = None,
        batch_size: int = 64,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield the gradients of one batch of ``batch_size`` inputs at a time."""
        if not 0 <= target < self.n_classes:
            raise InvalidArgumentError(f"target={target} is outside 0..{self.n_classes - 1}")
        inputs = np.asarray(x, dtype=np.float64)
        label_array = np.full(len(inputs), target) if labels is None else np.asarray(labels)
        for start in range(0, len(inputs), batch_size):
            stop = start + batch_size
            yield self._batch_gradients(
                inputs[start:stop], layers, target, output, label_array[start:stop]
            )

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Return class probabilities (softmax of the logits), shape (n, n_classes)."""
        return _softmax(self._logits(np.asarray(x, dtype=np.float64))[1])

    def fingerprint(self) -> str:
        """Return the sha256 hex digest of the weights."""
        digest = hashlib.sha256(b"ToyMLP")
        for array in (self.first_weights, self.first_bias, self.second_weights, self.second_bias):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def _logits(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pre_activation = inputs @ self.first_weights.T + self.first_bias
        logits = np.maximum(pre_activation, 0.0) @ self.second_weights.T + self.second_bias
        return pre_activation, logits

    def _batch_gradients(
        self,
        inputs: np.ndarray,
        layers: Sequence[str],
        target: int,
        output: str,
        labels: np.ndarray,
    ) -> dict[str, np.ndarray]:
        pre_activation, logits = self._logits(inputs)
        output_gradient = np.zeros_like(logits)
        if output == "logit":
            output_gradient[:, target] = 1.0
        elif output == "probability":
            probabilities = _softmax(logits)
            output_gradient = -probabilities[:, [target]] * probabilities
            output_gradient[:, target] += probabilities[:, target]
        elif output == "loss":
            output_gradient = -_softmax(logits)
            output_gradient[np.arange(len(inputs)), labels.astype(np.int64)] += 1.0
        else:
            raise InvalidArgumentError(
                f"output={output!r} is not supported; use 'logit', 'probability' or 'loss'"
            )
        hidden_gradient = output_gradient @ self.second_weights
        feature_gradient = (hidden_gradient * (pre_activation > 0.0)) @ self.first_weights
        values = {"features": feature_gradient, "hidden": hidden_gradient}
        return {layer: values[self.resolve_layer(layer)].astype(np.float32) for layer in layers}


def make_toy_mlp(width: int, hidden: int = 32, n_classes: int = 2, seed: int = 0) -> ToyMLP:
    """Return a :class:`ToyMLP` with seeded Gaussian weights scaled by ``1 / sqrt(fan_in)``."""
    rng = np.random.default_rng(seed)
    return ToyMLP(
        rng.normal(0.0, 1.0 / np.sqrt(width), (hidden, width)),
        rng.normal(0.0, 0.1, hidden),
        rng.normal(0.0, 1.0 / np.sqrt(hidden), (n_classes, hidden)),
        np.zeros(n_classes),
    )


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)

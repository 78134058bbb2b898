"""The small CIFAR CNN of the cav-keras notebook, in Keras 3 and in PyTorch.

Both builds keep every operation as its own layer, so an integer layer index means the
same thing as in the notebook (``model.layers[i]`` in Keras, ``model[i]`` in PyTorch):

===== ========== =====================================
index name       layer
===== ========== =====================================
0     conv1      Conv2D 32, 3x3, padding "same"
1     relu1      ReLU
2     conv2      Conv2D 32, 3x3, padding "valid"
3     relu2      ReLU
4     pool1      MaxPooling 2x2
5     dropout1   Dropout 0.25
6     conv3      Conv2D 64, 3x3, padding "same"
7     relu3      ReLU
8     conv4      Conv2D 64, 3x3, padding "valid"
9     relu4      ReLU
10    pool2      MaxPooling 2x2
11    dropout2   Dropout 0.25
12    flatten    Flatten
13    dense1     Dense 512
14    relu5      ReLU
15    dropout3   Dropout 0.5
16    dense2     Dense 1 (the logit)
17    sigmoid    Sigmoid
===== ========== =====================================

The Keras model takes NHWC images and the PyTorch model NCHW images. Keras flattens in
(height, width, channel) order and PyTorch in (channel, height, width) order, so
:func:`copy_keras_weights_to_torch` permutes the rows of the first dense kernel.

Training (:func:`train_keras_cnn`) repeats by seed without global switches: the
initializers and the dropout layers take seeds, and the batches are shuffled by a
``numpy.random.Generator``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cav.errors import InvalidArgumentError, InvalidTypeError, MissingDependencyError

if TYPE_CHECKING:
    import keras
    import torch

logger = logging.getLogger(__name__)

LAYER_NAMES: tuple[str, ...] = (
    "conv1",
    "relu1",
    "conv2",
    "relu2",
    "pool1",
    "dropout1",
    "conv3",
    "relu3",
    "conv4",
    "relu4",
    "pool2",
    "dropout2",
    "flatten",
    "dense1",
    "relu5",
    "dropout3",
    "dense2",
    "sigmoid",
)
"""Names of the 18 layers, in order; the position of a name is its notebook index."""

NOTEBOOK_LAYERS: tuple[int, ...] = (1, 5, 7, 11)
"""Layer indices (bottlenecks) the cav-keras notebook tests: ReLU, Dropout, ReLU, Dropout."""

_CONV_SPECS: tuple[tuple[int, int, str], ...] = (
    # (layer index, output channels, padding) of the four convolutions
    (0, 32, "same"),
    (2, 32, "valid"),
    (6, 64, "same"),
    (8, 64, "valid"),
)


def _import_keras() -> Any:
    try:
        import keras
    except ImportError as exc:
        raise MissingDependencyError(
            'the study CNN needs Keras 3; install it with: pip install "cav[keras]"'
        ) from exc
    return keras


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(
            "the PyTorch copy of the study CNN needs torch; "
            'install it with: pip install "cav[torch]"'
        ) from exc
    return torch


def _check_image_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidArgumentError(
            f"input_shape must be (height, width, channels) of positive ints, got {input_shape!r}"
        )
    height, width, _ = shape
    if height < 10 or width < 10:
        # two valid 3x3 convolutions and two 2x2 poolings need at least 10 pixels
        raise InvalidArgumentError(
            f"input_shape {input_shape!r} is too small: the CNN needs height and width >= 10"
        )
    return height, width, shape[2]


def flat_size(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Compute the (height, width, channels) shape that reaches the flatten layer.

    Parameters
    ----------
    input_shape : tuple of int
        Image shape (height, width, channels).

    Returns
    -------
    tuple of int
        ``(h, w, 64)`` with ``h = ((height - 2) // 2 - 2) // 2``, and the same for ``w``:
        each valid convolution removes 2 pixels and each pooling halves, rounding down.
    """
    height, width, _ = _check_image_shape(input_shape)
    return ((height - 2) // 2 - 2) // 2, ((width - 2) // 2 - 2) // 2, 64


def build_keras_cnn(input_shape: tuple[int, int, int] = (32, 32, 3), seed: int = 0) -> keras.Model:
    """Build the notebook's CNN as a Keras 3 ``Sequential`` model (not compiled).

    Parameters
    ----------
    input_shape : tuple of int, default (32, 32, 3)
        Image shape (height, width, channels), NHWC without the batch axis.
    seed : int, default 0
        Seed of the Glorot-uniform kernel initializers and of the dropout layers. Each
        layer derives its own seed from it, so two builds with one seed are identical.

    Returns
    -------
    keras.Sequential
        18 layers named as in :data:`LAYER_NAMES`, with output shape (n, 1): the
        sigmoid probability of class 1.
    """
    keras = _import_keras()
    shape = _check_image_shape(input_shape)
    # Keras seeds must fit a signed 32-bit int, so the 32-bit states lose their top bit.
    states = np.random.SeedSequence(_check_seed(seed)).generate_state(len(LAYER_NAMES)) >> 1
    seeds = iter(states.tolist())

    def init() -> Any:
        return keras.initializers.GlorotUniform(seed=int(next(seeds)))

    def conv(index: int, filters: int, padding: str) -> Any:
        return keras.layers.Conv2D(
            filters, (3, 3), padding=padding, kernel_initializer=init(), name=LAYER_NAMES[index]
        )

    def dropout(index: int, rate: float) -> Any:
        return keras.layers.Dropout(rate, seed=int(next(seeds)), name=LAYER_NAMES[index])

    def relu(index: int) -> Any:
        return keras.layers.Activation("relu", name=LAYER_NAMES[index])

    layers = [
        conv(0, 32, "same"),
        relu(1),
        conv(2, 32, "valid"),
        relu(3),
        keras.layers.MaxPooling2D((2, 2), name=LAYER_NAMES[4]),
        dropout(5, 0.25),
        conv(6, 64, "same"),
        relu(7),
        conv(8, 64, "valid"),
        relu(9),
        keras.layers.MaxPooling2D((2, 2), name=LAYER_NAMES[10]),
        dropout(11, 0.25),
        keras.layers.Flatten(name=LAYER_NAMES[12]),
        keras.layers.Dense(512, kernel_initializer=init(), name=LAYER_NAMES[13]),
        relu(14),
        dropout(15, 0.5),
        keras.layers.Dense(1, kernel_initializer=init(), name=LAYER_NAMES[16]),
        keras.layers.Activation("sigmoid", name=LAYER_NAMES[17]),
    ]
    model = keras.Sequential([keras.Input(shape=shape), *layers], name="imbalance_cnn")
    return model


def build_torch_cnn(input_shape: tuple[int, int, int] = (32, 32, 3)) -> torch.nn.Sequential:
    """Build the same CNN as a PyTorch ``nn.Sequential`` taking NCHW images.

    Parameters
    ----------
    input_shape : tuple of int, default (32, 32, 3)
        Image shape (height, width, channels); only its sizes matter here.

    Returns
    -------
    torch.nn.Sequential
        18 children at the indices of :data:`LAYER_NAMES`, float32, randomly initialised
        by PyTorch's defaults. Use :func:`copy_keras_weights_to_torch` to give it the
        weights of a Keras model.
    """
    torch = _import_torch()
    nn = torch.nn
    height, width, channels = flat_size(input_shape)
    in_channels = _check_image_shape(input_shape)[2]
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(height * width * channels, 512),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(512, 1),
        nn.Sigmoid(),
    )


def copy_keras_weights_to_torch(keras_model: Any, torch_model: Any) -> None:
    """Copy the weights of :func:`build_keras_cnn` into :func:`build_torch_cnn`, in place.

    Conv kernels go from Keras (kh, kw, in, out) to PyTorch (out, in, kh, kw). The first
    dense kernel's rows are reordered because Keras flattens an (h, w, c) map at index
    ``(i * w + j) * c + k`` and PyTorch a (c, h, w) map at ``(k * h + i) * w + j``. After the
    copy, ``torch_model(x.permute(0, 3, 1, 2))`` equals ``keras_model(x)`` up to float
    rounding.

    Parameters
    ----------
    keras_model : keras.Sequential
        A model built by :func:`build_keras_cnn`.
    torch_model : torch.nn.Sequential
        A model built by :func:`build_torch_cnn` for the same input shape.

    Raises
    ------
    InvalidTypeError
        If either model does not have the 18-layer structure.
    """
    torch = _import_torch()
    if len(getattr(keras_model, "layers", ())) != len(LAYER_NAMES):
        raise InvalidTypeError(
            f"keras_model must be built by build_keras_cnn (18 layers), got {type(keras_model)!r}"
        )
    if not isinstance(torch_model, torch.nn.Sequential) or len(torch_model) != len(LAYER_NAMES):
        raise InvalidTypeError(
            f"torch_model must be built by build_torch_cnn (18 layers), got {type(torch_model)!r}"
        )
    with torch.no_grad():
        for index, _, _ in _CONV_SPECS:
            kernel, bias = (np.asarray(w) for w in keras_model.layers[index].get_weights())
            _assign(torch_model[index].weight, kernel.transpose(3, 2, 0, 1), index)
            _assign(torch_model[index].bias, bias, index)

        kernel, bias = (np.asarray(w) for w in keras_model.layers[13].get_weights())
        height, width, channels = keras_model.layers[12].input.shape[1:]
        # Keras rows run over (h, w, c); PyTorch columns over (c, h, w).
        kernel = kernel.reshape(height, width, channels, -1).transpose(2, 0, 1, 3)
        _assign(torch_model[13].weight, kernel.reshape(height * width * channels, -1).T, 13)
        _assign(torch_model[13].bias, bias, 13)

        kernel, bias = (np.asarray(w) for w in keras_model.layers[16].get_weights())
        _assign(torch_model[16].weight, kernel.T, 16)
        _assign(torch_model[16].bias, bias, 16)


def _assign(parameter: Any, value: np.ndarray, index: int) -> None:
    if tuple(parameter.shape) != value.shape:
        raise InvalidArgumentError(
            f"layer {index} ({LAYER_NAMES[index]}): Keras weight of shape {value.shape} does "
            f"not fit the PyTorch parameter of shape {tuple(parameter.shape)}; build both "
            "models for the same input_shape"
        )
    parameter.copy_(parameter.new_tensor(np.ascontiguousarray(value)))


@dataclass(frozen=True)
class TrainingLog:
    """Training record returned by :func:`train_keras_cnn`.

    Attributes
    ----------
    loss : tuple of float
        Mean training binary cross-entropy of each epoch.
    accuracy : tuple of float
        Training accuracy of each epoch (threshold 0.5).
    seconds : float
        Wall-clock time of the training.
    """

    loss: tuple[float, ...]
    accuracy: tuple[float, ...]
    seconds: float


def train_keras_cnn(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 3,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int | np.random.Generator = 0,
    on_batch: Callable[[int, int], None] | None = None,
) -> TrainingLog:
    """Compile and train the CNN as the notebook does: Adam, binary cross-entropy.

    Each epoch visits every image once in an order drawn from ``seed``; Keras' own
    shuffling is off, so the run repeats without ``keras.utils.set_random_seed``.

    Parameters
    ----------
    model : keras.Model
        A model with one sigmoid output, e.g. from :func:`build_keras_cnn`.
    x : np.ndarray, shape (n, height, width, channels)
        Training images, float32 in [0, 1].
    y : np.ndarray, shape (n,)
        Labels, 1 for the positive class and 0 for the negative class.
    epochs : int, default 3
        Passes over the training set.
    batch_size : int, default 32
        Images per gradient step.
    learning_rate : float, default 1e-3
        Adam learning rate.
    seed : int or numpy.random.Generator, default 0
        Source of the per-epoch shuffling.
    on_batch : callable, optional
        Called after every batch with ``(epoch, images_in_batch)``, e.g. to advance a
        progress bar.

    Returns
    -------
    TrainingLog
        Loss and accuracy per epoch, and the time taken.
    """
    keras = _import_keras()
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if x.ndim != 4 or x.shape[0] != y.shape[0]:
        raise InvalidArgumentError(
            f"x must be (n, height, width, channels) with one label per image, got x of shape "
            f"{x.shape} and y of shape {y.shape}"
        )
    if x.shape[0] == 0:
        raise InvalidArgumentError("x is empty: the training set needs at least one image")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    rng = (
        seed if isinstance(seed, np.random.Generator) else np.random.default_rng(_check_seed(seed))
    )

    model.compile(
        loss="binary_crossentropy",
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        metrics=["accuracy"],
    )
    callbacks = [] if on_batch is None else [_batch_callback(keras, on_batch, batch_size, len(x))]
    losses: list[float] = []
    accuracies: list[float] = []
    start = time.perf_counter()
    for epoch in range(int(epochs)):
        order = rng.permutation(len(x))
        for callback in callbacks:
            callback.epoch_index = epoch
        history = model.fit(
            x[order],
            y[order],
            batch_size=int(batch_size),
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
        losses.append(float(history.history["loss"][-1]))
        accuracies.append(float(history.history["accuracy"][-1]))
        logger.info(
            "epoch %d/%d: loss %.4f, accuracy %.4f", epoch + 1, epochs, losses[-1], accuracies[-1]
        )
    return TrainingLog(tuple(losses), tuple(accuracies), time.perf_counter() - start)


def _batch_callback(
    keras: Any, on_batch: Callable[[int, int], None], batch_size: int, n: int
) -> Any:
    """Build a Keras callback that reports each finished batch to ``on_batch``."""

    class BatchCallback(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epoch_index = 0
            self._seen = 0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._seen = 0

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            step = min(batch_size, n - self._seen)
            self._seen += step
            on_batch(self.epoch_index, step)

    return BatchCallback()


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidArgumentError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)

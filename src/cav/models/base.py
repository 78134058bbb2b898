"""Framework-neutral part of the model adapters.

:class:`ModelAdapter` contains what PyTorch and Keras share: layer resolution, argument
checks, batching, finiteness checks, and the definitions of the three outputs whose
gradients TCAV uses (``"logit"``, ``"probability"`` and ``"loss"``). A subclass supplies
one forward (and optionally backward) pass over a batch, in :meth:`ModelAdapter._forward`.

The output head of a model is described by a :class:`Head`, whose ``kind`` is one of:

``"sigmoid"``
    the output of a final sigmoid, with the pre-activation values as ``logits``;
``"softmax"``
    the output of a final softmax, with the pre-activation values as ``logits``;
``"logits"``
    raw scores of a final linear layer with no activation, so the probabilities are
    their sigmoid (one unit) or softmax (several units);
``"probabilities"``
    an output of unknown origin, taken as probabilities, with no logits available.

A single-unit head is a binary classifier with two classes: class 1 is the unit (logit
``z``, probability ``p``) and class 0 its negation (logit ``-z``, probability ``1 - p``).
"""

from __future__ import annotations

import abc
import difflib
import logging
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from cav.errors import (
    InvalidArgumentError,
    InvalidTypeError,
    LayerNotFoundError,
    NonFiniteError,
    OutputNotFoundError,
)

logger = logging.getLogger(__name__)

OUTPUTS = ("logit", "probability", "loss")
"""Values accepted by the ``output`` argument of the gradient methods."""

POOLS = ("mean",)
"""Values accepted by the ``pool`` argument of :func:`cav.wrap`, besides ``None``."""

KERAS_EPSILON = 1e-7
"""Clipping bound of probabilities in the loss, ``keras.config.epsilon()``'s default."""

HeadKind = Literal["sigmoid", "softmax", "logits", "probabilities"]

LayerSpec = str | int | Sequence[str | int]

_MAX_LISTED_NAMES = 30


@dataclass(frozen=True)
class Head:
    """Output head of one forward pass, as framework tensors.

    Attributes
    ----------
    kind : {"sigmoid", "softmax", "logits", "probabilities"}
        What ``output`` is (see the module docstring).
    output : tensor, shape (n, units)
        The model's output.
    logits : tensor, shape (n, units), or None
        Pre-activation values; the output itself when ``kind == "logits"``; None when
        ``kind == "probabilities"``.
    """

    kind: HeadKind
    output: Any
    logits: Any | None

    @property
    def units(self) -> int:
        """Number of output units."""
        return int(self.output.shape[-1])

    @property
    def n_classes(self) -> int:
        """Number of classes: 2 for a single unit, else the number of units."""
        return 2 if self.units == 1 else self.units


class TensorOps(Protocol):
    """Element-wise tensor functions of one framework, used by the output definitions."""

    def sigmoid(self, t: Any) -> Any: ...

    def log_sigmoid(self, t: Any) -> Any: ...

    def softmax(self, t: Any) -> Any: ...

    def log_softmax(self, t: Any) -> Any: ...

    def log(self, t: Any) -> Any: ...

    def clip(self, t: Any, low: float, high: float) -> Any: ...

    def sum_last(self, t: Any) -> Any: ...

    def concat_last(self, tensors: Sequence[Any]) -> Any: ...

    def constant(self, values: np.ndarray, like: Any) -> Any: ...

    def to_numpy(self, t: Any) -> np.ndarray: ...


Objective = Callable[[Head, TensorOps], Any]
"""Map from a batch's head to the per-example objective, shape (n,)."""


@dataclass
class BatchResult:
    """Numpy arrays produced by one pass over a batch.

    Attributes
    ----------
    activations : dict of str to ndarray, shape (b, d)
        Layer outputs, flattened.
    gradients : dict of str to ndarray, shape (b, d), or None
        Gradients of the summed objective at each layer's output; None without an
        objective.
    probabilities : ndarray, shape (b, n_classes), or None
        Class probabilities of the batch; None when a pass without an objective stopped
        after the deepest requested layer.
    """

    activations: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray] | None
    probabilities: np.ndarray | None


def class_probabilities(head: Head, ops: TensorOps) -> Any:
    """Return the class probabilities of a head, shape (n, n_classes).

    A single unit with probability ``p`` gives the two columns ``[1 - p, p]``. For
    ``kind="logits"`` the probabilities are ``sigmoid(z)`` (one unit) or
    ``softmax(z)`` (several units).
    """
    if head.kind == "logits":
        values = ops.sigmoid(head.output) if head.units == 1 else ops.softmax(head.output)
    else:
        values = head.output
    if head.units == 1:
        return ops.concat_last([1.0 - values, values])
    return values


def output_objective(
    head: Head,
    ops: TensorOps,
    output: str,
    target: int,
    labels: np.ndarray,
) -> Any:
    """Compute the per-example objective whose gradient the adapters return.

    Below, ``z`` are the model's logits and ``p`` its probabilities: ``p = sigmoid(z)``
    for one unit and ``p = softmax(z)`` for several. For a single unit, class 1 is the
    unit and class 0 its negation.

    - ``"logit"``: ``z_target``; for a single unit ``z`` (target 1) or ``-z`` (target 0).
    - ``"probability"``: ``p_target``; for a single unit ``p`` (target 1) or ``1 - p``
      (target 0).
    - ``"loss"``: the negated cross-entropy against each example's label ``y``, so that
      a positive derivative means "more of that label":

      - single unit: ``y log(q) + (1 - y) log(1 - q)``;
      - several softmax units: ``log(q_y)``;
      - several sigmoid units: ``sum_k [t_k log(q_k) + (1 - t_k) log(1 - q_k)]`` with
        ``t`` the one-hot encoding of ``y``.

      When the model itself outputs probabilities (a final sigmoid or softmax, or an
      output of unknown origin), ``q = clip(p, 1e-7, 1 - 1e-7)``, the clipping of Keras'
      ``binary_crossentropy``/``categorical_crossentropy``, so a saturated sigmoid gives
      an exactly zero gradient as it does in Keras. When the model outputs raw logits,
      ``log(q)`` is computed from ``z`` without clipping (``log_sigmoid``,
      ``log_softmax``).

    Parameters
    ----------
    head : Head
        The batch's output head.
    ops : TensorOps
        Tensor functions of the head's framework.
    output : {"logit", "probability", "loss"}
        Which objective.
    target : int
        Class of ``"logit"`` and ``"probability"``; checked against the head here.
    labels : ndarray of int, shape (n,)
        Labels of ``"loss"``; checked against the head here.

    Returns
    -------
    tensor, shape (n,)
        The objective of each example.

    Raises
    ------
    InvalidArgumentError
        If ``target`` or a label is not a class of the model.
    OutputNotFoundError
        If ``output="logit"`` and the model's logits cannot be located, or the model's
        output is taken as probabilities but lies outside [0, 1].
    """
    check_class_index(target, head.n_classes, "target")
    if output == "logit":
        return _logit_objective(head, target)
    if head.kind == "probabilities":
        check_probability_range(ops.to_numpy(head.output))
    if output == "probability":
        return _probability_objective(head, ops, target)
    check_labels_range(labels, head.n_classes)
    return _loss_objective(head, ops, labels)


def _logit_objective(head: Head, target: int) -> Any:
    if head.logits is None:
        raise OutputNotFoundError(
            "output='logit' needs the model's logits, but the model does not end in a "
            "sigmoid or softmax and its last operation is not a linear layer, so its output "
            "cannot be told apart from probabilities; use output='probability' or "
            "output='loss', or pass a model that returns logits (a final linear layer)"
        )
    if head.units == 1:
        return head.logits[:, 0] if target == 1 else -head.logits[:, 0]
    return head.logits[:, target]


def _probability_objective(head: Head, ops: TensorOps, target: int) -> Any:
    probabilities = class_probabilities(head, ops)
    return probabilities[:, target]


def _loss_objective(head: Head, ops: TensorOps, labels: np.ndarray) -> Any:
    from_logits = head.kind == "logits"
    if head.units == 1:
        y = ops.constant(labels.astype(np.float64), like=head.output)
        if from_logits:
            z = head.output[:, 0]
            return y * ops.log_sigmoid(z) + (1.0 - y) * ops.log_sigmoid(-z)
        q = ops.clip(head.output[:, 0], KERAS_EPSILON, 1.0 - KERAS_EPSILON)
        return y * ops.log(q) + (1.0 - y) * ops.log(1.0 - q)

    one_hot = np.eye(head.units)[labels]
    t = ops.constant(one_hot, like=head.output)
    if from_logits:
        return ops.sum_last(t * ops.log_softmax(head.output))
    q = ops.clip(head.output, KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    if head.kind == "sigmoid":
        return ops.sum_last(t * ops.log(q) + (1.0 - t) * ops.log(1.0 - q))
    return ops.sum_last(t * ops.log(q))


def check_class_index(value: int, n_classes: int, name: str) -> None:
    """Raise InvalidArgumentError unless ``0 <= value < n_classes``."""
    if not 0 <= value < n_classes:
        raise InvalidArgumentError(
            f"{name}={value} is not a class of the model, which has {n_classes} classes; "
            f"use an integer from 0 to {n_classes - 1}"
        )


def check_labels_range(labels: np.ndarray, n_classes: int) -> None:
    """Raise InvalidArgumentError unless every label lies in ``[0, n_classes)``."""
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise InvalidArgumentError(
            f"labels[{index}]={int(labels[index])} is not a class of the model, which has "
            f"{n_classes} classes; labels must be integers from 0 to {n_classes - 1}"
        )


def check_probability_range(values: np.ndarray, tolerance: float = 1e-6) -> None:
    """Raise OutputNotFoundError if an output taken as probabilities leaves [0, 1]."""
    low, high = float(np.min(values)), float(np.max(values))
    if low < -tolerance or high > 1.0 + tolerance:
        raise OutputNotFoundError(
            f"the model's output lies in [{low:.4g}, {high:.4g}], so it is not a "
            "probability, and no final sigmoid, softmax or linear layer was found to say "
            "what it is; pass a model that ends in a linear layer (logits) or in a "
            "sigmoid or softmax"
        )


def check_finite(values: np.ndarray, what: str, first_index: int = 0) -> None:
    """Raise NonFiniteError if ``values`` (first axis: examples) has NaN or inf entries.

    ``what`` names the array in the message, e.g. ``"input x"``; ``first_index`` is the
    index of row 0 among all inputs, so the message gives the example's own index.
    """
    finite = np.isfinite(values)
    if finite.all():
        return
    bad_rows = np.flatnonzero(~finite.reshape(finite.shape[0], -1).all(axis=1))
    raise NonFiniteError(
        f"{what} contains {int((~finite).sum())} NaN or infinite values in "
        f"{bad_rows.size} examples (first at input index {first_index + int(bad_rows[0])})"
    )


def as_index(value: Any, name: str) -> int:
    """Return ``value`` as an int, raising InvalidTypeError for bools and non-integers."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise InvalidTypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def format_names(names: Sequence[str], query: str | None = None) -> str:
    """List valid layer names, those closest to ``query`` first, at most 30 of them."""
    closest = difflib.get_close_matches(query, names, n=5, cutoff=0.5) if query else []
    ordered = closest + [name for name in names if name not in closest]
    listed = ", ".join(repr(name) for name in ordered[:_MAX_LISTED_NAMES])
    if len(ordered) > _MAX_LISTED_NAMES:
        listed += f", ... ({len(ordered)} in all)"
    return listed


class ModelAdapter(abc.ABC):
    """Activations and gradients of a model at named layers, as numpy arrays.

    Build one with :func:`cav.wrap`. Every method runs the model in inference mode
    (dropout off, batch normalization on its running statistics) and leaves the model
    as it found it. One forward pass, and for gradients one backward pass, per batch
    serves all requested layers.

    Arrays come back as float32, or float64 when the model computes in float64, with
    each layer's output flattened to shape (n, d) in the layer's own memory order
    (channels first for a typical PyTorch CNN, channels last for Keras).
    """

    framework: str
    """``"torch"`` or ``"keras"``."""

    def __init__(self, model: Any, pool: str | None = None, pool_axis: int = 1) -> None:
        if pool is not None and pool not in POOLS:
            raise InvalidArgumentError(f"pool={pool!r} is not valid; use None or one of {POOLS}")
        pool_axis = as_index(pool_axis, "pool_axis")
        if pool_axis < 1:
            raise InvalidArgumentError(
                f"pool_axis={pool_axis} is not valid; axis 0 holds the examples, so use 1 or more"
            )
        self._model = model
        self._n_classes: int | None = None
        self._pool = pool
        self._pool_axis = pool_axis

    @property
    def pool(self) -> str | None:
        """How layer outputs are pooled before flattening: ``None`` or ``"mean"``."""
        return self._pool

    def _layer_values(self, values: np.ndarray, gradient: bool = False) -> np.ndarray:
        """Pool (when asked) and flatten one layer's output or gradient to shape (b, d).

        With ``pool="mean"`` over axis ``t`` of size ``T``, activations become their mean
        ``mean_t a_t`` and gradients their sum ``sum_t g_t``. That sum is the derivative of
        the output when every position's activation moves by the same vector ``v``:
        ``d/de h(a_1 + e v, ..., a_T + e v) = sum_t g_t . v``.
        """
        if self._pool is not None:
            if values.ndim <= self._pool_axis:
                raise InvalidArgumentError(
                    f"pool_axis={self._pool_axis} does not exist in a layer output of shape "
                    f"{values.shape}; choose an axis from 1 to {values.ndim - 1}"
                )
            reduce = np.sum if gradient else np.mean
            values = reduce(values, axis=self._pool_axis).astype(values.dtype, copy=False)
        return values.reshape(values.shape[0], -1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self._model).__name__}, {len(self.layer_names)} layers)"
        )

    @property
    def model(self) -> Any:
        """The wrapped model."""
        return self._model

    # Layers ------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def layer_names(self) -> list[str]:
        """Names that :meth:`resolve_layer` accepts, in the model's order."""

    @abc.abstractmethod
    def _indexed_layer_names(self) -> list[str]:
        """Names of the layers that integer indices select, in index order.

        Raises LayerNotFoundError when the model has no such order.
        """

    def resolve_layer(self, layer: str | int) -> str:
        """Return the canonical name of a layer given by name or by index.

        Parameters
        ----------
        layer : str or int
            A name from :attr:`layer_names`, or a non-negative index (Keras:
            ``model.layers[i]``; PyTorch: ``list(model.children())[i]`` of an
            ``nn.Sequential``).

        Returns
        -------
        str
            The layer's name.

        Raises
        ------
        LayerNotFoundError
            If no layer has that name (the message lists the valid names, closest first)
            or the index is negative or out of range (the message gives the range).
        InvalidTypeError
            If ``layer`` is neither a string nor an integer.
        """
        if isinstance(layer, str):
            names = self.layer_names
            if layer in names:
                return layer
            raise LayerNotFoundError(
                f"layer {layer!r} not found in the {type(self._model).__name__} model; "
                f"valid names: {format_names(names, layer)}"
            )
        index = as_index(layer, "layer")
        indexed = self._indexed_layer_names()
        if not 0 <= index < len(indexed):
            raise LayerNotFoundError(
                f"layer index {index} is out of range; valid indices are 0 to "
                f"{len(indexed) - 1} ({len(indexed)} layers; negative indices are not accepted)"
            )
        return indexed[index]

    def _resolve_layers(self, layers: LayerSpec) -> list[str]:
        items: Sequence[str | int] = [layers] if isinstance(layers, str | int) else layers
        if isinstance(items, np.ndarray):
            items = items.tolist()
        if not isinstance(items, Sequence) or isinstance(items, bytes):
            raise InvalidTypeError(
                f"layers must be a layer name, an index, or a sequence of them, "
                f"got {type(layers).__name__}"
            )
        if len(items) == 0:
            raise InvalidArgumentError("layers is empty; name at least one layer")
        names: list[str] = []
        for item in items:
            name = self.resolve_layer(item)
            if name not in names:
                names.append(name)
        return names

    # Classes -------------------------------------------------------------------------

    @property
    def n_classes(self) -> int:
        """Number of classes; 2 for a single-unit (sigmoid) output."""
        if self._n_classes is None:
            self._n_classes = self._static_n_classes()
        return self._n_classes

    @abc.abstractmethod
    def _static_n_classes(self) -> int:
        """Number of classes read from the architecture, before any forward pass."""

    # Framework part --------------------------------------------------------------------

    @abc.abstractmethod
    def _prepare_inputs(self, x: Any) -> Any:
        """Convert ``x`` to what :meth:`_forward` slices into batches, after checks.

        The returned object supports ``len()`` and slicing along the first axis.
        """

    @abc.abstractmethod
    def _forward(
        self, batch: Any, layers: Sequence[str], objective: Objective | None
    ) -> BatchResult:
        """Run one batch forward, and backward when ``objective`` is given."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Return a sha256 hex digest of the model's architecture and weights.

        Two models with the same class, architecture and weight values share it; it is
        meant for cache keys.
        """

    # Public passes -------------------------------------------------------------------

    def activations(self, x: Any, layers: LayerSpec, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Compute the outputs of the given layers for every input.

        Parameters
        ----------
        x : array, shape (n, ...)
            Inputs in the model's own layout, any numeric dtype (cast to the model's).
        layers : str, int or sequence of them
            Layers by name or index (see :meth:`resolve_layer`).
        batch_size : int, default 64
            Inputs per forward pass.

        Returns
        -------
        dict of str to ndarray, shape (n, d)
            Flattened layer outputs, keyed by canonical layer name in request order.

        Raises
        ------
        NonFiniteError
            If the inputs or an activation contain NaN or infinite values.
        """
        names = self._resolve_layers(layers)
        batch_size = _check_batch_size(batch_size)
        data = self._prepare_inputs(x)
        results = self._run_batches(data, names, batch_size, None, None)
        return _collect((result.activations for result in results), names, len(data))

    def gradients(
        self,
        x: Any,
        layers: LayerSpec,
        target: int,
        output: str = "logit",
        labels: Any = None,
        batch_size: int = 64,
    ) -> dict[str, np.ndarray]:
        """Compute the gradient of an output at the given layers, for every input.

        Row ``i`` of each array is the gradient of example ``i``'s objective with
        respect to that layer's output for example ``i`` (in inference mode, an
        example's objective depends only on its own activations).

        Parameters
        ----------
        x : array, shape (n, ...)
            Inputs in the model's own layout, any numeric dtype (cast to the model's).
        layers : str, int or sequence of them
            Layers by name or index (see :meth:`resolve_layer`).
        target : int
            Class whose logit or probability is differentiated, and the default label
            of ``output="loss"``.
        output : {"logit", "probability", "loss"}, default "logit"
            The objective, defined in :func:`output_objective`.
        labels : array of int, shape (n,), optional
            Each example's label for ``output="loss"``; defaults to ``target``.
        batch_size : int, default 64
            Inputs per forward and backward pass.

        Returns
        -------
        dict of str to ndarray, shape (n, d)
            Flattened gradients, keyed by canonical layer name in request order.

        Raises
        ------
        InvalidArgumentError
            If ``target`` or a label is not a class of the model, or ``output`` is not
            one of the three.
        OutputNotFoundError
            If ``output="logit"`` and the model's logits cannot be located.
        NonFiniteError
            If the inputs, activations or gradients contain NaN or infinite values.
        """
        names = self._resolve_layers(layers)
        n, batches = self._gradient_batches(x, names, target, output, labels, batch_size)
        return _collect(batches, names, n)

    def iter_gradients(
        self,
        x: Any,
        layers: LayerSpec,
        target: int,
        output: str = "logit",
        labels: Any = None,
        batch_size: int = 64,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield the gradients of :meth:`gradients` one batch at a time.

        Takes the same arguments as :meth:`gradients`. Memory is bounded by one batch.
        Every check that needs no forward pass (layers, output, batch_size, the inputs,
        the labels' shape) runs before this returns. ``target`` and the labels are checked
        against the model's classes on the first batch. Each yielded dict maps layer names to arrays
        of shape (b, d), the batches following the order of ``x``.
        """
        names = self._resolve_layers(layers)
        return self._gradient_batches(x, names, target, output, labels, batch_size)[1]

    def predict(self, x: Any, batch_size: int = 64) -> np.ndarray:
        """Compute class probabilities, shape (n, n_classes).

        A single-unit sigmoid model gives two columns, ``[1 - p, p]``; a model that
        returns logits gives their sigmoid or softmax (see :func:`class_probabilities`).
        """
        batches = []
        for result in self._passes(x, [], batch_size):
            # A pass with no layers always runs to the model's output.
            assert result.probabilities is not None
            batches.append(result.probabilities)
        probabilities = np.concatenate(batches, axis=0)
        check_probability_range(probabilities)
        return probabilities

    # Shared machinery ------------------------------------------------------------------

    def _gradient_batches(
        self,
        x: Any,
        names: list[str],
        target: int,
        output: str,
        labels: Any,
        batch_size: int,
    ) -> tuple[int, Iterator[dict[str, np.ndarray]]]:
        """Check the arguments now, then return the number of inputs and the batch iterator."""
        if output not in OUTPUTS:
            raise InvalidArgumentError(f"output={output!r} is not valid; use one of {OUTPUTS}")
        target = as_index(target, "target")
        if target < 0:
            raise InvalidArgumentError(f"target={target} is negative; classes start at 0")
        batch_size = _check_batch_size(batch_size)
        data = self._prepare_inputs(x)
        label_array = _check_labels(labels, output, target, len(data))

        def batch_objective(start: int, stop: int) -> Objective:
            batch_labels = label_array[start:stop]

            def objective(head: Head, ops: TensorOps) -> Any:
                return output_objective(head, ops, output, target, batch_labels)

            return objective

        def generate() -> Iterator[dict[str, np.ndarray]]:
            for result in self._run_batches(data, names, batch_size, batch_objective, output):
                yield result.gradients if result.gradients is not None else {}

        return len(data), generate()

    def _passes(self, x: Any, names: list[str], batch_size: int) -> Iterator[BatchResult]:
        batch_size = _check_batch_size(batch_size)
        data = self._prepare_inputs(x)
        return self._run_batches(data, names, batch_size, None, None)

    def _run_batches(
        self,
        data: Any,
        names: list[str],
        batch_size: int,
        make_objective: Callable[[int, int], Objective] | None,
        output: str | None,
    ) -> Iterator[BatchResult]:
        n = len(data)
        logger.debug("%s pass over %d inputs at layers %s", self.framework, n, names)
        raise_malloc_thresholds()
        sizes: dict[str, int] = {}
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            objective = make_objective(start, stop) if make_objective is not None else None
            result = self._forward(data[start:stop], names, objective)
            for name in names:
                what = f"activations of layer {name!r}"
                check_finite(result.activations[name], what, start)
                self._check_layer_size(name, result.activations[name].shape[1], sizes, start)
            if result.gradients is not None:
                for name in names:
                    what = f"gradients of output={output!r} at layer {name!r}"
                    check_finite(result.gradients[name], what, start)
            if self._n_classes is None and result.probabilities is not None:
                self._n_classes = int(result.probabilities.shape[1])
            yield result

    def _check_layer_size(self, name: str, size: int, sizes: dict[str, int], start: int) -> None:
        """Raise when a layer's flattened output size differs between batches of one call."""
        first = sizes.setdefault(name, size)
        if size == first:
            return
        advice = (
            f"pool_axis={self._pool_axis} does not remove the varying axis; choose it"
            if self._pool is not None
            else "average it out with cav.wrap(model, pool='mean', pool_axis=AXIS)"
        )
        raise InvalidArgumentError(
            f"layer {name!r} gives outputs of {first} values for the first inputs and of "
            f"{size} values from input index {start} on, so its size varies between examples "
            f"(variable-length sequences); {advice}, or pad every input to one length"
        )


_MALLOC_BLOCK_BYTES = 31 * 1024 * 1024
"""Size of the block that :func:`raise_malloc_thresholds` frees. glibc raises its thresholds
only for a freed block of at most 32 MiB on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX`` in
glibc's malloc.c), header and page rounding included. A request of 32 MiB less one page
came out larger than that under glibc 2.36, so the block is 31 MiB."""

_malloc_thresholds_raised = False


def raise_malloc_thresholds() -> None:
    """Let glibc's malloc reuse the freed memory of a model's large tensors.

    glibc serves a request above its mmap threshold with a fresh mapping, and it returns
    free memory at the top of its heap to the system above its trim threshold. Both start
    at 128 KiB. When a mapped block is freed, glibc raises the mmap threshold to that
    block's size (up to 32 MiB) and the trim threshold to twice that. A model's pass
    allocates and frees tens of MiB of intermediate tensors per batch. With the thresholds
    that its own blocks set (8 and 16 MiB for a 32x32x32 float layer at 64 images), glibc
    unmapped and faulted that memory in again on every batch. On the 2-core benchmark
    machine the first activation pass over 4,200 CIFAR images took 1.8 to 2.3 s in a
    fresh process, and 1.1 to 1.3 s with raised thresholds.

    Freeing one mapped block of 31 MiB raises the thresholds to 31 and 62 MiB, as any
    program that frees such a block does, and leaves glibc's adaptive rule on, which a
    call to ``mallopt`` would turn off. The process then keeps up to 62 MiB of free heap
    for reuse. This runs once per process, and only under glibc.
    """
    global _malloc_thresholds_raised
    if _malloc_thresholds_raised:
        return
    _malloc_thresholds_raised = True
    if platform.libc_ver()[0] != "glibc":
        return
    # np.empty touches no page, so the block costs one mmap and one munmap.
    block = np.empty(_MALLOC_BLOCK_BYTES, dtype=np.uint8)
    del block


def _check_batch_size(batch_size: Any) -> int:
    value = as_index(batch_size, "batch_size")
    if value < 1:
        raise InvalidArgumentError(f"batch_size={value} is not valid; use 1 or more")
    return value


def _check_labels(labels: Any, output: str, target: int, n: int) -> np.ndarray:
    """Return the labels of ``output="loss"`` as int64, shape (n,)."""
    if labels is None:
        return np.full(n, target, dtype=np.int64)
    if output != "loss":
        raise InvalidArgumentError(
            f"labels are used only with output='loss', not output={output!r}; drop them"
        )
    values = np.asarray(labels)
    if values.shape != (n,):
        raise InvalidArgumentError(
            f"labels must have shape ({n},), one per input, got shape {values.shape}"
        )
    if values.dtype.kind == "f":
        if not np.all(values == np.round(values)):
            raise InvalidArgumentError("labels must be integer class indices, got fractions")
    elif values.dtype.kind not in "iub":
        raise InvalidTypeError(f"labels must be integer class indices, got dtype {values.dtype}")
    return values.astype(np.int64)


def _collect(
    batches: Iterable[Mapping[str, np.ndarray]], names: list[str], n: int
) -> dict[str, np.ndarray]:
    """Copy per-batch arrays of shape (b, d) into one (n, d) array per layer.

    Each batch is written into arrays allocated on the first batch, so the batches need
    not be kept. On this project's test machine, ``np.concatenate`` of 66 batches of
    64 x 32,768 floats took 1.3 s; this loop took 0.05 s.
    """
    collected: dict[str, np.ndarray] = {}
    offset = 0
    for batch in batches:
        size = len(batch[names[0]]) if names else 0
        for name in names:
            values = batch[name]
            if name not in collected:
                collected[name] = np.empty((n, *values.shape[1:]), dtype=values.dtype)
            collected[name][offset : offset + size] = values
        offset += size
    return collected


def to_result_dtype(values: np.ndarray) -> np.ndarray:
    """Return ``values`` as float64 if it already is, else as float32."""
    if values.dtype == np.float64:
        return values
    return values.astype(np.float32, copy=False)


def numpy_inputs(x: Any) -> np.ndarray:
    """Convert inputs to a numpy array, checking type, shape and finiteness."""
    try:
        values = np.asarray(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidTypeError(
            f"x must be an array of inputs, got {type(x).__name__} that numpy cannot convert"
        ) from exc
    check_input_array(values)
    return values


def check_input_array(values: np.ndarray) -> None:
    """Check a numpy batch of inputs: numeric, at least 1-D, not empty, finite."""
    if values.dtype.kind not in "biuf":
        raise InvalidTypeError(
            f"x must hold real numbers (bool, int or float), got dtype {values.dtype}"
        )
    if values.ndim == 0:
        raise InvalidArgumentError("x must have a first axis of examples, got a scalar")
    if values.shape[0] == 0:
        raise InvalidArgumentError(f"x has no examples (shape {values.shape})")
    if values.dtype.kind == "f":
        check_finite(values, "input x")

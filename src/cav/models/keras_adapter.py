"""Adapter for Keras 3 ``Sequential`` and Functional models.

A sub-model ``keras.Model(model.inputs, [layer outputs..., output])`` returns the
activations but cannot differentiate the output with respect to them, so the adapter
runs the model's layers itself and keeps the intermediate tensors of the requested
layers. Under the torch backend those tensors are differentiated with
``torch.autograd.grad``; under the TensorFlow backend they are watched by a
``tf.GradientTape``. Every layer is called with ``training=False``; no layer, variable
or ``keras.config`` setting is changed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from cav.errors import InvalidArgumentError, InvalidTypeError
from cav.models.base import (
    BatchResult,
    Head,
    HeadKind,
    ModelAdapter,
    Objective,
    class_probabilities,
    numpy_inputs,
    to_result_dtype,
)

logger = logging.getLogger(__name__)

SUPPORTED_BACKENDS = ("torch", "tensorflow")


class KerasOps:
    """:class:`cav.models.base.TensorOps` on ``keras.ops``, for any Keras backend."""

    def sigmoid(self, t: Any) -> Any:
        return keras.ops.sigmoid(t)

    def log_sigmoid(self, t: Any) -> Any:
        return keras.ops.log_sigmoid(t)

    def softmax(self, t: Any) -> Any:
        return keras.ops.softmax(t, axis=-1)

    def log_softmax(self, t: Any) -> Any:
        return keras.ops.log_softmax(t, axis=-1)

    def log(self, t: Any) -> Any:
        return keras.ops.log(t)

    def clip(self, t: Any, low: float, high: float) -> Any:
        return keras.ops.clip(t, low, high)

    def sum_last(self, t: Any) -> Any:
        return keras.ops.sum(t, axis=-1)

    def concat_last(self, tensors: Sequence[Any]) -> Any:
        return keras.ops.concatenate(list(tensors), axis=-1)

    def constant(self, values: np.ndarray, like: Any) -> Any:
        dtype = keras.backend.standardize_dtype(like.dtype)
        return keras.ops.convert_to_tensor(values, dtype=dtype)

    def to_numpy(self, t: Any) -> np.ndarray:
        values = np.asarray(keras.ops.convert_to_numpy(keras.ops.stop_gradient(t)))
        if values.dtype != np.float64:
            values = values.astype(np.float32)
        return to_result_dtype(values)


KERAS_OPS = KerasOps()


def _activation_name(function: Any) -> str:
    return str(getattr(function, "__name__", ""))


@dataclass(frozen=True)
class _HeadSpec:
    """Source of the logits of the model's final operation.

    ``source`` is ``"input"`` (the final operation's input, for an Activation or Softmax
    layer or a sigmoid/softmax op), ``"dense"`` (the linear part of a final Dense layer
    with a sigmoid or softmax activation) or None (no separate logits).
    """

    kind: HeadKind
    source: str | None


class KerasAdapter(ModelAdapter):
    """:class:`~cav.models.base.ModelAdapter` for a built Keras 3 model.

    Layers are named by ``layer.name`` and indexed as ``model.layers[i]`` (for a
    Functional model the input layer is ``model.layers[0]``). Only ``Sequential`` and
    Functional models with one input and one output are supported, because a subclassed
    model's ``call`` hides its intermediate tensors.

    The output head is read from the final operation. For an ``Activation`` or ``Softmax``
    layer (or a ``keras.ops`` sigmoid/softmax), the logits are its input. For a ``Dense``
    layer with a sigmoid or softmax activation, they are its linear part
    ``x @ kernel + bias``. A ``Dense`` layer with a linear activation returns raw logits.
    After any other final operation the output is taken as probabilities.
    """

    framework = "keras"

    def __init__(
        self,
        model: Any,
        pool: str | None = None,
        pool_axis: int = 1,
        output_key: int | str | None = None,
    ) -> None:
        if output_key is not None:
            raise InvalidArgumentError(
                f"output_key={output_key!r} is for PyTorch models; for a Keras model with "
                "several outputs, wrap keras.Model(model.inputs, model.outputs[i]) instead"
            )
        if not isinstance(model, keras.Model):
            raise InvalidTypeError(
                "model must be a keras.Model (Sequential or Functional), "
                f"got {type(model).__name__}"
            )
        backend = keras.backend.backend()
        if backend not in SUPPORTED_BACKENDS:
            raise InvalidTypeError(
                f"Keras backend {backend!r} is not supported; set KERAS_BACKEND to one of "
                f"{SUPPORTED_BACKENDS} before importing keras"
            )
        if not model.built:
            raise InvalidArgumentError(
                f"the Keras model {model.name!r} is not built; give it a keras.Input or call "
                "it on a batch once before wrapping it"
            )
        self._sequential = isinstance(model, keras.Sequential)
        if not self._sequential and not _is_functional(model):
            raise InvalidTypeError(
                f"{type(model).__name__} is a subclassed Keras model, whose call() hides its "
                "layer outputs; build it as a keras.Sequential or a Functional "
                "keras.Model(inputs, outputs)"
            )
        if not self._sequential and (len(model.inputs) != 1 or len(model.outputs) != 1):
            raise InvalidTypeError(
                f"the Keras model has {len(model.inputs)} inputs and {len(model.outputs)} "
                "outputs; the adapter supports models with one input and one output. Build "
                "keras.Model(model.inputs, model.outputs[i]) to choose the output of class "
                "scores; for several inputs, build a one-input Functional model that feeds "
                "the other inputs as constants (keras.layers.Lambda), or wrap a PyTorch model"
            )
        super().__init__(model, pool=pool, pool_axis=pool_axis)
        self._backend = backend
        self._final = self._final_operation()
        self._head_spec = _head_spec(self._final)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self._model.layers]

    def _indexed_layer_names(self) -> list[str]:
        return self.layer_names

    def _static_n_classes(self) -> int:
        units = self._model.outputs[0].shape[-1] if self._model.outputs else None
        if units is None:
            raise InvalidArgumentError(
                "the number of classes cannot be read from this model's output shape; call "
                "predict(x) or gradients(...) once, which record it"
            )
        return 2 if int(units) == 1 else int(units)

    def _final_operation(self) -> Any:
        if self._sequential:
            return self._model.layers[-1]
        history = getattr(self._model.outputs[0], "_keras_history", None)
        if history is not None:
            return history.operation
        return self._model.layers[-1]

    def _input_dtype(self) -> str:
        inputs = _sequential_inputs(self._model) if self._sequential else self._model.inputs
        if inputs:
            return str(inputs[0].dtype)
        return str(self._model.layers[0].compute_dtype)

    # Passes --------------------------------------------------------------------------

    def _prepare_inputs(self, x: Any) -> np.ndarray:
        values = numpy_inputs(_to_host(x))
        dtype = self._input_dtype()
        if np.dtype(dtype).kind == "f" or values.dtype.kind == "b":
            values = values.astype(dtype, copy=False)
        return values

    def _forward(
        self, batch: np.ndarray, layers: Sequence[str], objective: Objective | None
    ) -> BatchResult:
        x = keras.ops.convert_to_tensor(batch)
        tracker = _GradientTracker(self._backend, enabled=objective is not None)
        with tracker:
            output, logits, captured = self._run(x, layers, tracker.watch, objective is not None)
            gradients = None
            probabilities = None
            if output is not None:
                head = self._head(output, logits)
                if objective is not None:
                    values = objective(head, KERAS_OPS)
                    grads = tracker.gradients(values, captured, layers)
                    gradients = {
                        name: self._layer_values(KERAS_OPS.to_numpy(grad), gradient=True)
                        for name, grad in grads.items()
                    }
                probabilities = KERAS_OPS.to_numpy(class_probabilities(head, KERAS_OPS))
        activations = {
            name: self._layer_values(KERAS_OPS.to_numpy(captured[name])) for name in layers
        }
        return BatchResult(activations, gradients, probabilities)

    def _run(
        self, x: Any, layers: Sequence[str], watch: Callable[[Any], Any], to_output: bool
    ) -> tuple[Any, Any, dict[str, Any]]:
        """Run the model on ``x``; return its output, its logits and the layer outputs.

        Without ``to_output``, a Sequential model stops after the deepest requested layer
        when :meth:`_last_needed_layer` allows it, and the output and logits are None.
        """
        wanted = set(layers)
        captured: dict[str, Any] = {}
        logits: list[Any] = []

        def call(operation: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
            if operation is self._final and self._head_spec.source is not None:
                logits.append(_final_logits(operation, self._head_spec.source, args[0]))
            if "training" in getattr(operation, "_call_context_args", ()):
                kwargs = {**kwargs, "training": False}
            result = operation(*args, **kwargs)
            name = getattr(operation, "name", None)
            if name in wanted:
                if name in captured:
                    raise InvalidArgumentError(
                        f"layer {name!r} runs more than once in one forward pass, so its "
                        "activations are ambiguous; choose a layer that runs once"
                    )
                if not keras.ops.is_tensor(result):
                    raise InvalidArgumentError(
                        f"layer {name!r} returns a {type(result).__name__}, not a tensor; "
                        "choose a layer whose output is one tensor"
                    )
                result = watch(result)
                captured[name] = result
            return result

        if self._sequential:
            stop = None if to_output else self._last_needed_layer(layers)
            output = x
            for index, layer in enumerate(self._model.layers):
                output = call(layer, [output], {})
                if index == stop:
                    output = None
                    break
        else:
            output = self._run_functional(x, wanted, captured, watch, call)

        missing = [name for name in layers if name not in captured]
        if missing:
            raise InvalidArgumentError(
                f"layers {missing} did not run between the model's input and output, so "
                "they have no activations"
            )
        return output, (logits[-1] if logits else None), captured

    def _last_needed_layer(self, layers: Sequence[str]) -> int | None:
        """Return the index in ``model.layers`` of the deepest requested layer of a pass.

        A Sequential model calls each entry of ``model.layers`` once, in order. So when
        every requested layer is one of those entries, and none is listed twice, the
        layers after the deepest one cannot change the requested outputs. Returns None
        otherwise, and for a pass with no layers (``predict``), which needs the output.
        """
        if not layers:
            return None
        names = [layer.name for layer in self._model.layers]
        if any(names.count(name) != 1 for name in layers):
            return None
        return max(names.index(name) for name in layers)

    def _run_functional(
        self,
        x: Any,
        wanted: set[str],
        captured: dict[str, Any],
        watch: Callable[[Any], Any],
        call: Callable[[Any, Sequence[Any], dict[str, Any]], Any],
    ) -> Any:
        input_name = self._model.inputs[0]._keras_history.operation.name
        if input_name in wanted:
            x = watch(x)
            captured[input_name] = x

        def operation_fn(operation: Any) -> Callable[..., Any]:
            return lambda *args, **kwargs: call(operation, args, kwargs)

        # Functional._run_through_graph walks the model's nodes in order, calling
        # operation_fn(operation)(*args, **kwargs) on each; Keras' own Functional.call
        # runs through it in the same way.
        outputs = self._model._run_through_graph([x], operation_fn=operation_fn)
        return keras.tree.flatten(outputs)[0]

    def _head(self, output: Any, logits: Any) -> Head:
        kind = self._head_spec.kind
        if kind == "logits":
            logits = output
        if len(output.shape) != 2:
            raise InvalidArgumentError(
                f"the model's output has shape {tuple(output.shape)}; the adapter needs "
                "shape (n, n_classes)"
            )
        return Head(kind, output, logits)

    def fingerprint(self) -> str:
        model = self._model
        digest = hashlib.sha256()
        digest.update(f"{type(model).__module__}.{type(model).__qualname__}\n".encode())
        for layer in model.layers:
            digest.update(f"{layer.name} {type(layer).__name__}\n".encode())
        digest.update(self._architecture().encode())
        for variable in model.weights:
            values = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
            digest.update(f"\n{variable.path} {values.shape} {values.dtype}\n".encode())
            digest.update(values.tobytes())
        # Options that change the returned arrays enter the digest, so cached
        # activations of one setting are never served for another.
        if self._pool is not None:
            digest.update(f"\npool {self._pool} axis {self._pool_axis}".encode())
        return digest.hexdigest()

    def _architecture(self) -> str:
        """Describe the model's layers and their settings, for :meth:`fingerprint`.

        Keras's ``get_config()`` imports TensorFlow when it is installed, even under
        another backend: 1.5 to 1.6 s on the first call of a process on the 2-core test
        machine. A Sequential model of Keras's own layers is described without it, by its
        input and, per layer, the public attributes of plain types (filters, strides,
        activation function, rate, ...) and the dtype policy. Other models, and models
        with a ``Lambda`` layer or a lambda setting, use ``get_config()``.
        """
        model = self._model
        if self._sequential:
            described = [_describe_layer(layer) for layer in model.layers]
            if all(text is not None for text in described):
                inputs = [f"{tuple(t.shape)} {t.dtype}" for t in _sequential_inputs(model)]
                return "\n".join(["sequential", *inputs, *(str(text) for text in described)])
        try:
            return json.dumps(model.get_config(), sort_keys=True, default=str)
        except (NotImplementedError, TypeError, ValueError):
            return ""


# Instance attributes of every Keras layer that do not change what it computes.
_UNDESCRIBED_ATTRIBUTES = frozenset(
    {"build", "built", "quantize", "training", "autocast", "supports_jit", "name"}
)


def _describe_layer(layer: Any) -> str | None:
    """Describe a built-in Keras layer by its class, name, dtype policy and plain settings.

    Returns None for a layer whose settings this cannot see: a layer class from outside
    Keras, a nested model, a ``Lambda`` layer, a setting that is a lambda or a local
    function, or an activation that is an object.
    """
    layer_type = type(layer)
    if not layer_type.__module__.startswith("keras.") or isinstance(layer, keras.Model):
        return None
    if isinstance(layer, keras.layers.Lambda):
        # Its function's name would not change when its code does. get_config() stores
        # the code of a lambda.
        return None
    parts = [f"{layer_type.__module__}.{layer_type.__qualname__} {layer.name}"]
    parts.append(f"dtype_policy={layer.dtype_policy.name}")
    for key, value in sorted(vars(layer).items()):
        if key.startswith("_") or key in _UNDESCRIBED_ATTRIBUTES:
            continue
        if inspect.isfunction(value) or inspect.isbuiltin(value):
            # Activation functions. A lambda or a local function has no name to record.
            if "<" in value.__qualname__:
                return None
            parts.append(f"{key}={value.__module__}.{value.__qualname__}")
            continue
        if key == "activation" and value is not None:
            # An activation that is an object, not a function.
            return None
        # Other objects (initializers, regularizers, constraints, seed generators) shape
        # training, not what a built layer computes.
        text = _plain_text(value)
        if text is not None:
            parts.append(f"{key}={text}")
    return " ".join(parts)


def _plain_text(value: Any) -> str | None:
    """Return the repr of a None, bool, int, float or str value, or of a tuple or list of
    them. Any other value gives None."""
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    if isinstance(value, tuple | list):
        items = [_plain_text(item) for item in value]
        if all(item is not None for item in items):
            return "(" + ", ".join(str(item) for item in items) + ")"
    return None


class _GradientTracker(AbstractContextManager["_GradientTracker"]):
    """Records the gradient graph of one pass, for the torch or TensorFlow backend."""

    def __init__(self, backend: str, enabled: bool) -> None:
        self.backend = backend
        self.enabled = enabled
        self._context: Any = nullcontext()
        if backend == "torch":
            import torch

            self._context = torch.enable_grad() if enabled else torch.no_grad()
        elif enabled:
            import tensorflow as tf

            self._context = tf.GradientTape(watch_accessed_variables=False, persistent=False)

    def __enter__(self) -> _GradientTracker:
        self._tape = self._context.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> bool | None:
        return self._context.__exit__(*exc_info)

    def watch(self, tensor: Any) -> Any:
        """Mark a layer output as a gradient source; return the tensor to pass on."""
        if not self.enabled:
            return tensor
        if self.backend == "torch":
            if not tensor.requires_grad:
                tensor = tensor.detach().requires_grad_(True)
            return tensor
        self._tape.watch(tensor)
        return tensor

    def gradients(
        self, objective: Any, captured: dict[str, Any], layers: Sequence[str]
    ) -> dict[str, Any]:
        """Differentiate the summed objective with respect to each captured layer output.

        Returns the gradients as backend tensors, in the shape of each layer's output.
        """
        sources = [captured[name] for name in layers]
        total = keras.ops.sum(objective)
        if self.backend == "torch":
            import torch

            if not total.requires_grad:
                grads: Sequence[Any] = [None] * len(sources)
            else:
                grads = torch.autograd.grad(total, sources, allow_unused=True)
        else:
            grads = self._tape.gradient(total, sources)
        result = {}
        for name, grad in zip(layers, grads, strict=True):
            if grad is None:
                raise InvalidArgumentError(
                    f"the model's output does not depend on layer {name!r}, "
                    "so there is no gradient at it"
                )
            result[name] = grad
        return result


def _is_functional(model: Any) -> bool:
    return hasattr(model, "_run_through_graph") and bool(getattr(model, "outputs", None))


def _sequential_inputs(model: Any) -> list[Any]:
    try:
        return list(model.inputs or [])
    except (AttributeError, ValueError):
        return []


def _to_host(x: Any) -> Any:
    """Return a numpy-convertible view of ``x``, detaching a torch tensor if need be."""
    detach = getattr(x, "detach", None)
    if callable(detach) and type(x).__module__.startswith("torch"):
        return detach().cpu().numpy()
    return x


def _head_spec(final: Any) -> _HeadSpec:
    """Classify the model's final operation (see :class:`KerasAdapter`)."""
    if isinstance(final, keras.layers.Activation):
        name = _activation_name(final.activation)
        if name == "sigmoid":
            return _HeadSpec("sigmoid", "input")
        if name == "softmax":
            return _HeadSpec("softmax", "input")
        return _HeadSpec("probabilities", None)
    if isinstance(final, keras.layers.Softmax):
        if final.axis in (-1, [-1]):
            return _HeadSpec("softmax", "input")
        return _HeadSpec("probabilities", None)
    if isinstance(final, keras.layers.Dense):
        name = _activation_name(final.activation)
        if name == "sigmoid":
            return _HeadSpec("sigmoid", "dense")
        if name == "softmax":
            return _HeadSpec("softmax", "dense")
        if name == "linear":
            return _HeadSpec("logits", None)
        return _HeadSpec("probabilities", None)
    # keras.ops.sigmoid / keras.ops.softmax applied to a symbolic tensor create an
    # operation of class Sigmoid / Softmax.
    op_name = type(final).__name__
    if type(final).__module__.startswith("keras") and op_name in ("Sigmoid", "Softmax"):
        axis = getattr(final, "axis", -1)
        if op_name == "Sigmoid" or axis in (-1, None):
            return _HeadSpec("sigmoid" if op_name == "Sigmoid" else "softmax", "input")
    return _HeadSpec("probabilities", None)


def _final_logits(operation: Any, source: str, inputs: Any) -> Any:
    """Compute the logits of the final operation from its input tensor.

    For a Dense layer this is ``inputs @ kernel + bias``, computed with ``keras.ops`` as
    the layer computes it. Under the torch backend Keras 3 computes ``ops.matmul`` of
    two float64 tensors in float32 (``BIT64_TO_BIT32_DTYPE`` in
    ``keras.src.backend.common.dtypes``), here as in the layer. The result is cast back
    to the input's dtype.
    """
    if source == "input":
        return inputs
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    logits = keras.ops.matmul(inputs, keras.ops.cast(operation.kernel, dtype))
    if operation.bias is not None:
        logits = keras.ops.cast(logits, dtype) + keras.ops.cast(operation.bias, dtype)
    return keras.ops.cast(logits, dtype)

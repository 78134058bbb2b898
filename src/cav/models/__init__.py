"""Model adapters: activations and gradients of PyTorch and Keras 3 models as numpy.

:func:`wrap` picks the adapter for a model. The frameworks are imported only when a
model of theirs is wrapped, so this package imports without PyTorch or Keras.
"""

from __future__ import annotations

import importlib
from typing import Any

from cav.errors import InvalidArgumentError, InvalidTypeError, MissingDependencyError
from cav.models.base import OUTPUTS, Head, ModelAdapter

__all__ = ["OUTPUTS", "Head", "ModelAdapter", "wrap"]

# Framework -> (adapter module, adapter class, module to import, pip extra).
_ADAPTERS = {
    "keras": ("cav.models.keras_adapter", "KerasAdapter", "keras", "keras"),
    "torch": ("cav.models.torch_adapter", "TorchAdapter", "torch", "torch"),
}


def wrap(
    model: Any,
    *,
    pool: str | None = None,
    pool_axis: int = 1,
    output_key: int | str | None = None,
) -> ModelAdapter:
    """Return the adapter for a ``torch.nn.Module`` or a Keras 3 model.

    The framework is read from the module names of the model's classes, so no framework
    is imported to recognize a model of another. Keras is checked first, because under
    the torch backend a Keras model is also a ``torch.nn.Module``. An adapter passed in
    is returned unchanged.

    Parameters
    ----------
    model : torch.nn.Module, keras.Model or ModelAdapter
        The model to wrap. It must take one input tensor. A PyTorch model that needs
        more inputs is rejected; wrap it in a module whose ``forward(x)`` passes the other
        inputs itself (the error message shows one).
    pool : {None, "mean"}, default None
        ``"mean"`` averages each layer's output over ``pool_axis`` before flattening, and
        sums its gradient over that axis (see :meth:`ModelAdapter._layer_values`). Use it
        for layers whose size varies between examples, such as the ``(n, T, d)`` outputs
        of a sequence model on inputs of different lengths T.
    pool_axis : int, default 1
        Axis of the layer output that ``pool`` removes; 1 is the position axis of a
        batch-first ``(n, T, d)`` output.
    output_key : int or str, optional
        For a PyTorch model that returns a tuple, list or dict: the position or key of
        the tensor of class scores. Keras models with several outputs are rejected; wrap
        ``keras.Model(model.inputs, model.outputs[i])`` instead.

    Returns
    -------
    ModelAdapter
        A :class:`~cav.models.torch_adapter.TorchAdapter` or
        :class:`~cav.models.keras_adapter.KerasAdapter`.

    Raises
    ------
    MissingDependencyError
        If the model's framework cannot be imported; the message gives the pip extra.
    InvalidTypeError
        If the model is of no supported framework (including Keras 2 ``tf_keras`` models).
    """
    if isinstance(model, ModelAdapter):
        if pool is not None or output_key is not None:
            raise InvalidArgumentError(
                "pool and output_key apply when a model is wrapped; pass them with the "
                "model, not with an adapter"
            )
        return model
    framework = _framework_of(model)
    module_name, class_name, package, extra = _ADAPTERS[framework]
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise MissingDependencyError(
            f"wrapping a {type(model).__name__} needs {package}, which cannot be imported "
            f'({exc}); install it with: pip install "cav[{extra}]"'
        ) from exc
    adapter_class = getattr(importlib.import_module(module_name), class_name)
    adapter: ModelAdapter = adapter_class(
        model, pool=pool, pool_axis=pool_axis, output_key=output_key
    )
    return adapter


def _framework_of(model: Any) -> str:
    """Return ``"keras"`` or ``"torch"`` from the modules that define the model's classes."""
    modules = [cls.__module__ or "" for cls in type(model).__mro__]
    roots = {name.split(".")[0] for name in modules}
    if "tf_keras" in roots or any(name.startswith("tensorflow.python.keras") for name in modules):
        raise InvalidTypeError(
            f"{type(model).__name__} is a Keras 2 (tf_keras) model; cav supports Keras 3 "
            "models (keras>=3) and torch.nn.Module models"
        )
    if "keras" in roots:
        return "keras"
    if "torch" in roots:
        return "torch"
    raise InvalidTypeError(
        f"cannot wrap a {type(model).__module__}.{type(model).__qualname__}; pass a "
        "torch.nn.Module or a Keras 3 model (keras.Sequential or a Functional keras.Model)"
    )

"""Adapter for PyTorch ``nn.Module`` models.

Layer outputs are captured with forward hooks, which are always removed afterwards.
Gradients come from one ``torch.autograd.grad`` call on the objective summed over the
batch. In eval mode each example's objective depends only on its own activations, so
row ``i`` of the result is example ``i``'s gradient.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from cav.errors import InvalidArgumentError, InvalidTypeError, LayerNotFoundError
from cav.models.base import (
    BatchResult,
    Head,
    HeadKind,
    ModelAdapter,
    Objective,
    check_finite,
    class_probabilities,
    format_names,
    numpy_inputs,
    to_result_dtype,
)

logger = logging.getLogger(__name__)


class TorchOps:
    """:class:`cav.models.base.TensorOps` for torch tensors."""

    def sigmoid(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(t)

    def log_sigmoid(self, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.logsigmoid(t)

    def softmax(self, t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(t, dim=-1)

    def log_softmax(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(t, dim=-1)

    def log(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log(t)

    def clip(self, t: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return torch.clamp(t, low, high)

    def sum_last(self, t: torch.Tensor) -> torch.Tensor:
        return t.sum(dim=-1)

    def concat_last(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(tensors), dim=-1)

    def constant(self, values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(values, dtype=like.dtype, device=like.device)

    def to_numpy(self, t: torch.Tensor) -> np.ndarray:
        return tensor_to_numpy(t)


TORCH_OPS = TorchOps()


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    """Copy a tensor to a numpy array: float64 stays float64, other floats become float32."""
    t = t.detach()
    if t.dtype != torch.float64:
        t = t.float()
    return to_result_dtype(t.cpu().contiguous().numpy())


def _check_input_tensor(x: torch.Tensor) -> None:
    """Check a tensor of inputs: real numbers, at least 1-D, not empty, finite."""
    if x.is_complex():
        raise InvalidTypeError(
            f"x must hold real numbers (bool, int or float), got dtype {x.dtype}"
        )
    if x.ndim == 0:
        raise InvalidArgumentError("x must have a first axis of examples, got a scalar")
    if x.shape[0] == 0:
        raise InvalidArgumentError(f"x has no examples (shape {tuple(x.shape)})")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        check_finite(tensor_to_numpy(x), "input x")


WRAPPER_EXAMPLE = (
    "class OneInput(torch.nn.Module):\n"
    "    def __init__(self, model, mask):\n"
    "        super().__init__()\n"
    "        self.model, self.mask = model, mask\n"
    "    def forward(self, x):\n"
    "        return self.model(x, self.mask)[0]\n"
)
"""A wrapper that fixes the extra inputs and picks one output, for error messages."""


def _check_single_input(model: nn.Module) -> None:
    """Reject a model whose ``forward`` needs more than one positional argument."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [
        p.name for p in parameters if p.kind in positional and p.default is inspect.Parameter.empty
    ]
    if len(required) > 1:
        raise InvalidTypeError(
            f"{type(model).__name__}.forward needs {len(required)} inputs ({', '.join(required)}); "
            "the adapter feeds one tensor x, so wrap the model in a module whose forward takes "
            f"x alone, for example:\n{WRAPPER_EXAMPLE}"
        )


def select_output(output: Any, key: int | str | None) -> Any:
    """Return the class-score tensor of a model's output.

    ``key`` picks it from a tuple or list (by position) or a dict (by key), including
    dict-like model outputs such as those of Hugging Face transformers.

    Raises
    ------
    InvalidTypeError
        If the output is a tuple, list or dict and ``key`` is None.
    InvalidArgumentError
        If ``key`` is not in the output.
    """
    if key is None:
        if isinstance(output, tuple | list | Mapping):
            kind = type(output).__name__
            keys = list(output) if isinstance(output, Mapping) else list(range(len(output)))
            example = repr(keys[0]) if keys else "KEY"
            raise InvalidTypeError(
                f"the model returns a {kind} with entries {keys}; pass output_key= to "
                "cav.wrap to choose the tensor of class scores, for example "
                f"cav.wrap(model, output_key={example})"
            )
        return output
    try:
        return output[key]
    except (KeyError, IndexError, TypeError) as exc:
        available = list(output) if isinstance(output, Mapping) else None
        if available is None and isinstance(output, tuple | list):
            available = list(range(len(output)))
        raise InvalidArgumentError(
            f"output_key={key!r} is not in the model's {type(output).__name__} output; "
            f"valid keys: {available}"
        ) from exc


@contextmanager
def inference_state(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode with frozen parameters, then restore both.

    Every module's ``training`` flag and every parameter's ``requires_grad`` flag are
    put back as they were, even when the body raises.
    """
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for module, training in modes:
            module.training = training
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)


class TorchAdapter(ModelAdapter):
    """:class:`~cav.models.base.ModelAdapter` for a ``torch.nn.Module``.

    Layers are named by their dotted path in ``model.named_modules()``; integer indices
    select the children of an ``nn.Sequential`` model. Each batch of inputs is moved to
    the device of the model's first floating-point parameter (or buffer) and cast to its
    dtype, integer inputs included.

    The output head is read from the last leaf module that runs, when the model returns
    that module's output unchanged. For an ``nn.Sigmoid`` or ``nn.Softmax`` (over the class
    axis) the logits are its input, and an ``nn.Linear`` returns raw logits. After any
    other module, or when the model changes the output further, the output is taken as
    probabilities.
    """

    framework = "torch"

    def __init__(
        self,
        model: nn.Module,
        pool: str | None = None,
        pool_axis: int = 1,
        output_key: int | str | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        _check_single_input(model)
        if output_key is not None and not isinstance(output_key, int | str):
            raise InvalidTypeError(
                f"output_key must be an int (tuple or list position) or a str (dict key), "
                f"got {type(output_key).__name__}"
            )
        super().__init__(model, pool=pool, pool_axis=pool_axis)
        self._output_key = output_key
        # Set once an in-place operation changed a captured output in a pass without
        # gradients: later passes copy the outputs as gradient passes do.
        self._copy_outputs = False

    @property
    def layer_names(self) -> list[str]:
        return [name for name, _ in self._model.named_modules() if name]

    def _indexed_layer_names(self) -> list[str]:
        if not isinstance(self._model, nn.Sequential):
            raise LayerNotFoundError(
                f"integer layer indices select children of an nn.Sequential, but the model "
                f"is a {type(self._model).__name__}; name the layer by its dotted path, "
                f"one of: {format_names(self.layer_names)}"
            )
        return [name for name, _ in self._model.named_children()]

    def _static_n_classes(self) -> int:
        leaves = [module for module in self._model.modules() if not list(module.children())]
        if leaves and isinstance(leaves[-1], nn.Sigmoid | nn.Softmax):
            leaves = leaves[:-1]
        if leaves and isinstance(leaves[-1], nn.Linear):
            units = int(leaves[-1].out_features)
            return 2 if units == 1 else units
        raise InvalidArgumentError(
            "the number of classes cannot be read from this model's modules (its last module "
            "is not a linear layer); call predict(x) or gradients(...) once, which record it"
        )

    def _device_and_dtype(self) -> tuple[torch.device, torch.dtype]:
        for tensor in [*self._model.parameters(), *self._model.buffers()]:
            if tensor.is_floating_point():
                return tensor.device, tensor.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    def _prepare_inputs(self, x: Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            _check_input_tensor(x)
            return x.detach()
        values = numpy_inputs(x)
        if values.dtype.kind == "u" and values.dtype != np.uint8:
            values = values.astype(np.int64)  # torch has no general uint16-64 support
        return torch.from_numpy(np.ascontiguousarray(values))

    def _forward(
        self, batch: torch.Tensor, layers: Sequence[str], objective: Objective | None
    ) -> BatchResult:
        device, dtype = self._device_and_dtype()
        batch = batch.to(device=device, dtype=dtype)
        if _runs_channels_last(self._model, batch):
            batch = batch.contiguous(memory_format=torch.channels_last)
        copy = objective is not None or self._copy_outputs
        result, recorder = self._forward_once(batch, layers, objective, copy)
        if not copy and recorder.changed_in_place():
            logger.debug("an in-place operation changed a captured output, so outputs are copied")
            self._copy_outputs = True
            result, recorder = self._forward_once(batch, layers, objective, copy=True)
        return result

    def _forward_once(
        self,
        batch: torch.Tensor,
        layers: Sequence[str],
        objective: Objective | None,
        copy: bool,
    ) -> tuple[BatchResult, _Recorder]:
        model = self._model
        modules = dict(model.named_modules())
        recorder = _Recorder(layers, track_grad=objective is not None, copy=copy)
        stop = self._last_needed_child(layers, modules) if objective is None else None
        handles = []
        with inference_state(model):
            try:
                # Layer hooks go first, so the leaf hook receives the outputs they return.
                for name in layers:
                    handles.append(modules[name].register_forward_hook(recorder.layer_hook(name)))
                for module in model.modules():
                    if not list(module.children()):
                        handles.append(module.register_forward_hook(recorder.leaf_hook))
                grad_mode = torch.enable_grad() if objective is not None else torch.no_grad()
                with grad_mode:
                    gradients = None
                    probabilities = None
                    if stop is not None:
                        _run_children(model, batch, stop)
                        recorder.check_layers_ran()
                    else:
                        output = select_output(model(batch), self._output_key)
                        recorder.check_layers_ran()
                        head = recorder.head(output)
                        if objective is not None:
                            gradients = self._backward(objective(head, TORCH_OPS), recorder, layers)
                        probabilities = tensor_to_numpy(class_probabilities(head, TORCH_OPS))
            finally:
                for handle in handles:
                    handle.remove()
        activations = {
            name: self._layer_values(tensor_to_numpy(recorder.captured[name])) for name in layers
        }
        return BatchResult(activations, gradients, probabilities), recorder

    def _last_needed_child(
        self, layers: Sequence[str], modules: Mapping[str, nn.Module]
    ) -> int | None:
        """Return the index of the last child a pass without gradients needs to run.

        That is the deepest requested layer, when the model is a plain ``nn.Sequential``
        (its own ``forward`` and no hooks of its own), every requested layer is one of its
        children, and no requested module is registered twice in the model. Such a child runs
        once per pass, after the children before it, so the children after the deepest
        one cannot change the activations or call a requested module again. Returns None
        otherwise, and for a pass with no layers (``predict``), which needs the output.
        """
        model = self._model
        if not layers or type(model).forward is not nn.Sequential.forward:
            return None
        if model._forward_hooks or model._forward_pre_hooks:
            return None
        # _modules keeps every child, also a module that Sequential contains twice, so its
        # positions are the order in which Sequential.forward calls them.
        children = list(model._modules.items())
        positions = {name: index for index, (name, _) in enumerate(children)}
        if any(name not in positions for name in layers):
            return None
        uses = Counter(id(module) for _, module in model.named_modules(remove_duplicate=False))
        if any(uses[id(modules[name])] > 1 for name in layers):
            return None
        return max(positions[name] for name in layers)

    def _backward(
        self, objective: torch.Tensor, recorder: _Recorder, layers: Sequence[str]
    ) -> dict[str, np.ndarray]:
        total = objective.sum()
        sources = [recorder.captured[name] for name in layers]
        if not total.requires_grad:
            raise InvalidArgumentError(
                f"the model's output does not depend on layers {list(layers)}, "
                "so there is no gradient to take"
            )
        grads = torch.autograd.grad(total, sources, allow_unused=True)
        result = {}
        for name, source, grad in zip(layers, sources, grads, strict=True):
            if grad is None:
                raise InvalidArgumentError(
                    f"the model's output does not depend on layer {name!r}, "
                    "so there is no gradient at it"
                )
            values = tensor_to_numpy(grad.reshape(source.shape))
            result[name] = self._layer_values(values, gradient=True)
        return result

    def fingerprint(self) -> str:
        model = self._model
        digest = hashlib.sha256()
        digest.update(f"{type(model).__module__}.{type(model).__qualname__}\n".encode())
        digest.update(repr(model).encode())
        for name, tensor in model.state_dict().items():
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"\n{name} {tuple(tensor.shape)} {tensor.dtype}\n".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes())
        # Options that change the returned arrays enter the digest, so cached
        # activations of one setting are never served for another.
        if self._pool is not None:
            digest.update(f"\npool {self._pool} axis {self._pool_axis}".encode())
        if self._output_key is not None:
            digest.update(f"\noutput_key {self._output_key!r}".encode())
        return digest.hexdigest()


class _Recorder:
    """Forward-hook state of one pass: captured layer outputs and the last leaf module."""

    def __init__(self, layers: Sequence[str], track_grad: bool, copy: bool = True) -> None:
        self.layers = list(layers)
        self.track_grad = track_grad
        self.copy = copy
        self.captured: dict[str, torch.Tensor] = {}
        # Version counter of each captured output when it was captured (without copy).
        self.versions: dict[str, int] = {}
        self.calls = dict.fromkeys(self.layers, 0)
        # Output tensors the layer hooks returned, mapped to the captured originals.
        self.replacements: dict[int, torch.Tensor] = {}
        self.last_leaf: tuple[nn.Module, Any, Any] | None = None

    def layer_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise InvalidArgumentError(
                    f"layer {name!r} ({type(module).__name__}) returns a "
                    f"{type(output).__name__}, not a tensor; choose a layer whose output "
                    "is one tensor"
                )
            self.calls[name] += 1
            if self.calls[name] > 1:
                raise InvalidArgumentError(
                    f"layer {name!r} ({type(module).__name__}) runs more than once in one "
                    "forward pass, so its activations are ambiguous; choose a module that "
                    "runs once"
                )
            if self.track_grad and not output.requires_grad:
                output = output.detach().requires_grad_(True)
            self.captured[name] = output
            if not self.copy:
                version = _version_of(output)
                if version is not None:
                    # Without gradients the output is passed on uncopied, and
                    # changed_in_place() detects a later in-place change. On the benchmark
                    # CNN, the copies made a fresh process's activation pass 2.9 s instead
                    # of 2.1 s, mostly in page faults.
                    self.versions[name] = version
                    self.replacements[id(output)] = output
                    return output
            # Downstream modules get a copy, so an in-place operation after this layer
            # (such as ReLU(inplace=True)) cannot change the captured tensor.
            replacement = output.clone()
            self.replacements[id(replacement)] = output
            return replacement

        return hook

    def changed_in_place(self) -> bool:
        """Return whether an in-place operation changed a captured output after its hook."""
        return any(
            _version_of(self.captured[name]) != version for name, version in self.versions.items()
        )

    def leaf_hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        first_input = inputs[0] if isinstance(inputs, tuple) and inputs else None
        self.last_leaf = (module, first_input, output)

    def check_layers_ran(self) -> None:
        missing = [name for name in self.layers if name not in self.captured]
        if missing:
            raise InvalidArgumentError(
                f"layers {missing} did not run in the forward pass, so they have no "
                "activations; choose modules that the model's forward() calls"
            )

    def head(self, output: Any) -> Head:
        if not isinstance(output, torch.Tensor):
            raise InvalidTypeError(
                f"the model returns a {type(output).__name__}; the adapter needs a model "
                "that returns one tensor of shape (n, n_classes)"
            )
        kind: HeadKind = "probabilities"
        logits = None
        if self.last_leaf is not None:
            module, leaf_input, leaf_output = self.last_leaf
            original = self.replacements.get(id(output), output)
            if leaf_output is output or leaf_output is original:
                kind, logits = _classify_leaf(module, leaf_input, output)
        if output.ndim == 1:
            output = output.unsqueeze(1)
            logits = logits.unsqueeze(1) if logits is not None and logits.ndim == 1 else logits
        if output.ndim != 2:
            raise InvalidArgumentError(
                f"the model's output has shape {tuple(output.shape)}; the adapter needs "
                "shape (n, n_classes)"
            )
        logger.debug("torch head: %s with %d units", kind, output.shape[1])
        return Head(kind, output, logits)


def _runs_channels_last(model: nn.Module, batch: torch.Tensor) -> bool:
    """Return whether ``batch`` may be passed to ``model`` in channels-last memory format.

    On the CPU, PyTorch's convolutions take channels-last (NHWC) tensors without converting
    them, and convert NCHW tensors to and from their own layout at every layer. On the
    benchmark CNN the channels-last activation pass took 0.52 s against 0.70 s, and the
    gradient pass 0.28 s against 0.34 s, with the same activations.

    The memory format changes no value that PyTorch's own modules compute, but code that
    calls ``view`` on a channels-last tensor fails. So this holds only for a float32 CPU
    batch of images (4-D) and a plain ``nn.Sequential`` model, nested ones included. Its
    modules must all come from ``torch.nn``, one must be a ``Conv2d``, and none may have
    hooks, which could run code of their own. In float64, two convolutions of the benchmark
    CNN took 12 % longer channels-last, so float64 batches stay NCHW.
    """
    if batch.ndim != 4 or batch.device.type != "cpu" or batch.dtype != torch.float32:
        return False
    if type(model) is not nn.Sequential:
        return False
    has_convolution = False
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return False
        if isinstance(module, nn.Sequential):
            if type(module) is not nn.Sequential:
                return False
            continue
        if not type(module).__module__.startswith("torch.nn."):
            return False
        has_convolution = has_convolution or isinstance(module, nn.Conv2d)
    return has_convolution


def _run_children(model: nn.Sequential, batch: torch.Tensor, stop: int) -> None:
    """Run the children of ``model`` on ``batch`` in order, up to child ``stop``."""
    values: Any = batch
    for index, child in enumerate(model._modules.values()):
        assert child is not None
        values = child(values)
        if index == stop:
            return


def _version_of(tensor: torch.Tensor) -> int | None:
    """Return the tensor's version counter, which in-place operations increment.

    Tensors made in ``torch.inference_mode`` have none, and then None is returned.
    """
    try:
        return int(tensor._version)
    except RuntimeError:
        return None


def _classify_leaf(
    module: nn.Module, leaf_input: Any, output: torch.Tensor
) -> tuple[HeadKind, Any]:
    """Return the head kind and logits given the module that produced the output."""
    if isinstance(module, nn.Sigmoid) and isinstance(leaf_input, torch.Tensor):
        return "sigmoid", leaf_input
    if isinstance(module, nn.Softmax) and isinstance(leaf_input, torch.Tensor):
        class_axis = output.ndim - 1
        if module.dim is None or module.dim in (class_axis, -1):
            return "softmax", leaf_input
    if isinstance(module, nn.Linear):
        return "logits", output
    return "probabilities", None

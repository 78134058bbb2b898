"""The timed variants of the benchmark: cav (PyTorch and Keras), captum's TCAV, and the floor.

Every variant does the work of one TCAV experiment on a :class:`_workload.Workload`:

- the activations of the concept set and of the R random sets at the chosen layers;
- R concept CAVs and R null CAVs per layer (hinge-loss SGD, alpha 0.01, on both sides);
- the gradients of the target images' logit at those layers and the TCAV score of every
  run;
- the t-test of the TCAV paper (Kim et al., ICML 2018), concept scores against null scores,
  per layer.

The floor does only the framework passes that any implementation needs, in plain PyTorch
on the PyTorch CNN (``floor``) and layer by layer through the Keras CNN under Keras's
torch backend (``floor-keras``).

``setup_*`` functions build what a variant needs outside the timed call (models, inputs in
the right layout); ``run_*`` functions are the timed calls.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from _workload import IMAGE_SHAPE, Workload

CONCEPT_NAME = "sea"
TARGET_INDEX = 1
"""Class index of "ship": the single sigmoid unit of the study's CNN is class 1."""


def random_names(count: int) -> list[str]:
    """Name the random sets as ``cav.run_tcav`` names a sequence of them."""
    width = max(2, len(str(count - 1)))
    return [f"random_{index:0{width}d}" for index in range(count)]


def null_pairs(count: int) -> list[tuple[int, int]]:
    """Return the null runs of the t-test design as random-set index pairs.

    The cycle (0, 1), (1, 2), ..., (R-1, 0) for R >= 3 and the single pair for R = 2:
    the pairs ``cav.run_tcav(test="ttest")`` fits, so both sides fit the same CAVs.
    """
    if count < 2:
        return []
    if count == 2:
        return [(0, 1)]
    return [(index, (index + 1) % count) for index in range(count)]


@dataclass
class Prepared:
    """The timed call of a variant, built before timing, and facts about its setup."""

    call: Callable[[], dict[str, Any]]
    details: dict[str, Any]


# torch models ----------------------------------------------------------------------------


def build_models(workload: Workload) -> tuple[Any, Any]:
    """Build the Keras CNN with the workload's weights and its PyTorch copy.

    Returns
    -------
    (keras.Model, torch.nn.Sequential)
        Both in inference use; the PyTorch model is in ``eval()`` mode.
    """
    from cav.experiments.networks import (
        build_keras_cnn,
        build_torch_cnn,
        copy_keras_weights_to_torch,
    )

    keras_model = build_keras_cnn(IMAGE_SHAPE)
    keras_model.set_weights(workload.keras_weights)
    torch_model = build_torch_cnn(IMAGE_SHAPE)
    copy_keras_weights_to_torch(keras_model, torch_model)
    torch_model.eval()
    return keras_model, torch_model


def to_nchw(images: np.ndarray) -> np.ndarray:
    """Return NHWC images as a contiguous NCHW array."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


# floor -----------------------------------------------------------------------------------


def setup_floor(workload: Workload, layers: Sequence[int], batch_size: int) -> Prepared:
    """Prepare the floor: one forward and backward pass, one forward pass, in plain torch.

    The timed call runs two passes in batches of ``batch_size``, in channels-last memory
    format (faster on the CPU), with glibc's malloc thresholds raised as ``cav`` raises
    them:

    1. a forward and a backward pass of the logit over the target images, copying each
       batch's gradient at each layer into a float32 array that the next batch reuses, as
       ``cav`` does before it reduces them against the CAVs. The backward pass computes no
       weight gradients and stops at the shallowest layer;
    2. a forward pass without gradients over each concept and random image set, up to the
       deepest layer, copying each layer's activations into one array per set, as ``cav``
       stores them.

    An earlier floor kept one (n, d) array per layer for all the images of a pass. Each was
    mapped fresh in one piece, and on the benchmark machine its first use in a process
    cost up to 2.5 s of kernel time (transparent huge pages), which ``cav`` does not pay.
    """
    import torch

    from cav.models.base import raise_malloc_thresholds

    # cav's adapters raise glibc's malloc thresholds before their first pass. The floor
    # gets them too, so that it measures the passes, not glibc unmapping the tensors of
    # each batch and faulting them in again for the next.
    raise_malloc_thresholds()
    _, torch_model = build_models(workload)
    logit_model = torch_model[:-1]
    for parameter in logit_model.parameters():
        parameter.requires_grad_(False)
    targets = torch.from_numpy(to_nchw(workload.targets))
    image_sets = [
        torch.from_numpy(to_nchw(images)) for images in [workload.concept, *workload.random_sets]
    ]

    def call() -> dict[str, Any]:
        gradients = _floor_gradients(logit_model, targets, layers, batch_size)
        activations = [
            _floor_activations(logit_model, images, layers, batch_size) for images in image_sets
        ]
        return _floor_bytes(gradients, activations)

    return Prepared(call, {"framework": "torch", "n_other_images": _count(image_sets)})


def _floor_gradients(
    model: Any, images: Any, layers: Sequence[int], batch_size: int
) -> dict[int, np.ndarray]:
    import torch

    captured: dict[int, Any] = {}

    def keep(index: int) -> Callable[..., Any]:
        def hook(_module: Any, _inputs: Any, output: Any) -> Any:
            # The weights do not require gradients, so the first requested layer's output
            # becomes the leaf where the backward pass stops. Later layers stay in the graph.
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            captured[index] = output
            return output

        return hook

    handles = [model[index].register_forward_hook(keep(index)) for index in layers]
    gradients: dict[int, np.ndarray] = {}
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.enable_grad():
                logits = model(batch)
                outputs = [captured[index] for index in layers]
                grads = torch.autograd.grad(logits[:, 0].sum(), outputs)
            for index, grad in zip(layers, grads, strict=True):
                _copy_batch(gradients, index, grad.reshape(len(batch), -1))
    finally:
        for handle in handles:
            handle.remove()
    return gradients


def _floor_activations(
    model: Any, images: Any, layers: Sequence[int], batch_size: int
) -> dict[int, np.ndarray]:
    import torch

    captured: dict[int, Any] = {}

    def keep(index: int) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            captured[index] = output

        return hook

    # The forward pass can stop at the deepest layer requested.
    truncated = model[: max(layers) + 1]
    handles = [model[index].register_forward_hook(keep(index)) for index in layers]
    activations: dict[int, np.ndarray] = {}
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                truncated(batch.contiguous(memory_format=torch.channels_last))
                for index in layers:
                    values = captured[index].reshape(len(batch), -1)
                    _store_rows(activations, index, start, len(images), values)
    finally:
        for handle in handles:
            handle.remove()
    return activations


def setup_floor_keras(workload: Workload, layers: Sequence[int], batch_size: int) -> Prepared:
    """Prepare the floor's two passes on the Keras CNN, under Keras's torch backend.

    The passes of :func:`setup_floor`, run layer by layer through ``model.layers`` with
    ``training=False`` on channels-last images, so that they pay what Keras on the torch
    backend pays for its layers. The last layer is the sigmoid, so the output of the one
    before it is the logit. The weights do not require gradients.
    """
    import keras
    import torch

    from cav.models.base import raise_malloc_thresholds

    backend = keras.backend.backend()
    if backend != "torch":
        raise ValueError(
            f"floor-keras runs under Keras's torch backend, not {backend!r}; "
            "use --keras-backend torch"
        )
    raise_malloc_thresholds()
    keras_model, _ = build_models(workload)
    for variable in keras_model.weights:
        variable.value.requires_grad_(False)
    logit_layers = list(keras_model.layers[:-1])
    targets = torch.from_numpy(np.ascontiguousarray(workload.targets))
    image_sets = [
        torch.from_numpy(np.ascontiguousarray(images))
        for images in [workload.concept, *workload.random_sets]
    ]

    def call() -> dict[str, Any]:
        gradients = _keras_floor_gradients(logit_layers, targets, layers, batch_size)
        activations = [
            _keras_floor_activations(logit_layers, images, layers, batch_size)
            for images in image_sets
        ]
        return _floor_bytes(gradients, activations)

    return Prepared(call, {"framework": "keras", "n_other_images": _count(image_sets)})


def _keras_floor_gradients(
    model_layers: Sequence[Any], images: Any, layers: Sequence[int], batch_size: int
) -> dict[int, np.ndarray]:
    import torch

    shallowest = min(layers)
    gradients: dict[int, np.ndarray] = {}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        layer_outputs: dict[int, Any] = {}
        with torch.enable_grad():
            values = batch
            for index, layer in enumerate(model_layers):
                values = layer(values, training=False)
                if index == shallowest:
                    # The backward pass stops here, as the PyTorch floor's does.
                    values = values.detach().requires_grad_(True)
                if index in layers:
                    layer_outputs[index] = values
            grads = torch.autograd.grad(values.sum(), [layer_outputs[index] for index in layers])
        for index, grad in zip(layers, grads, strict=True):
            _copy_batch(gradients, index, grad.reshape(len(batch), -1))
    return gradients


def _keras_floor_activations(
    model_layers: Sequence[Any], images: Any, layers: Sequence[int], batch_size: int
) -> dict[int, np.ndarray]:
    import torch

    deepest = max(layers)
    activations: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            values = batch
            for index, layer in enumerate(model_layers[: deepest + 1]):
                values = layer(values, training=False)
                if index in layers:
                    _store_rows(
                        activations, index, start, len(images), values.reshape(len(batch), -1)
                    )
    return activations


def _store_rows(
    store: dict[int, np.ndarray], index: int, start: int, total: int, values: Any
) -> None:
    """Copy a batch's (b, d) tensor into rows ``start:start + b`` of ``store[index]``.

    The (total, d) float32 array is allocated on the layer's first batch.
    """
    rows = values.numpy()
    if index not in store:
        store[index] = np.empty((total, rows.shape[1]), np.float32)
    store[index][start : start + len(rows)] = rows


def _copy_batch(buffers: dict[int, np.ndarray], index: int, values: Any) -> None:
    """Copy a batch's (b, d) tensor into the first b rows of ``buffers[index]``.

    The float32 buffer is allocated on the layer's first batch, which is the largest.
    """
    rows = values.numpy()
    if index not in buffers:
        buffers[index] = np.empty(rows.shape, np.float32)
    buffers[index][: len(rows)] = rows


def _floor_bytes(
    gradients: dict[int, np.ndarray], activations: Sequence[dict[int, np.ndarray]]
) -> dict[str, Any]:
    return {
        "gradient_buffer_bytes": sum(array.nbytes for array in gradients.values()),
        "activation_bytes": sum(
            array.nbytes for per_set in activations for array in per_set.values()
        ),
    }


def _count(image_sets: Sequence[Any]) -> int:
    return sum(len(images) for images in image_sets)


# cav -------------------------------------------------------------------------------------

CAV_OPTIONS: dict[str, Any] = {
    "method": "sgd",
    "output": "logit",
    "test": "ttest",
    # Student's t-test, as scipy.stats.ttest_ind runs it by default on the captum side.
    "ttest": "student",
    "correction": "none",
}


def setup_cav(
    workload: Workload, layers: Sequence[int], batch_size: int, seed: int, framework: str
) -> Prepared:
    """Prepare ``cav.run_tcav`` on the PyTorch CNN (NCHW) or the Keras CNN (NHWC).

    The timed call is one ``run_tcav`` call with the R random sets given as a sequence,
    ``method="sgd"``, ``output="logit"`` and ``test="ttest"`` (Student's). The model keeps its
    final Sigmoid: the adapter differentiates the logit below it.
    """
    keras_model, torch_model = build_models(workload)
    if framework == "torch":
        model = torch_model
        convert: Callable[[np.ndarray], np.ndarray] = to_nchw
    elif framework == "keras":
        model = keras_model
        convert = np.ascontiguousarray
    else:
        raise ValueError(f"framework={framework!r} is not supported; use 'torch' or 'keras'")
    targets = convert(workload.targets)
    concepts = {CONCEPT_NAME: convert(workload.concept)}
    random_sets = [convert(images) for images in workload.random_sets]

    def call() -> dict[str, Any]:
        return run_cav(model, targets, concepts, random_sets, layers, batch_size, seed)

    return Prepared(call, {"framework": framework})


def run_cav(
    model: Any,
    targets: np.ndarray,
    concepts: dict[str, np.ndarray],
    random_sets: list[np.ndarray],
    layers: Sequence[int],
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Run the t-test design with ``cav.run_tcav`` and return scores and p-values per layer."""
    import cav

    result = cav.run_tcav(
        model,
        targets,
        TARGET_INDEX,
        concepts,
        random_sets=random_sets,
        layers=list(layers),
        seed=seed,
        batch_size=batch_size,
        **CAV_OPTIONS,
    )
    return scores_by_layer(result)


def scores_by_layer(result: Any) -> dict[str, Any]:
    """Collect the per-run scores and the p-value of each layer from a ``TCAVResult``."""
    runs = result.runs
    summary = result.summary()
    by_layer: dict[str, Any] = {}
    for layer in summary["layer"]:
        layer_runs = runs[runs["layer"] == layer]
        concept_runs = layer_runs[layer_runs["kind"] == "concept"].sort_values("negative")
        null_runs = layer_runs[layer_runs["kind"] == "null"].sort_values("concept")
        by_layer[str(layer)] = {
            "concept_scores": concept_runs["score"].tolist(),
            "null_scores": null_runs["score"].tolist(),
            "p_value": float(summary.loc[summary["layer"] == layer, "p_value"].iloc[0]),
        }
    return by_layer


# captum ----------------------------------------------------------------------------------


def setup_captum(workload: Workload, layers: Sequence[int], batch_size: int, seed: int) -> Prepared:
    """Prepare captum's TCAV on the logit model (the PyTorch CNN without its Sigmoid).

    The timed call builds ``captum.concept.TCAV`` on a fresh ``save_path``, with its default
    classifier (``SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)``, hinge loss) and its
    default layer attribution (the gradient at the layer output). It calls ``interpret``
    once with the R concept runs and the R null runs, then ``scipy.stats.ttest_ind`` per
    layer. captum stores activations and CAVs on disk under ``save_path``, a temporary
    folder removed after the call.
    """
    import torch

    _, torch_model = build_models(workload)
    logit_model = torch_model[:-1]
    targets = torch.from_numpy(to_nchw(workload.targets))
    concept_batches = _batches(torch.from_numpy(to_nchw(workload.concept)), batch_size)
    random_batches = [
        _batches(torch.from_numpy(to_nchw(images)), batch_size) for images in workload.random_sets
    ]
    layer_names = [str(index) for index in layers]

    def call() -> dict[str, Any]:
        return run_captum(logit_model, targets, concept_batches, random_batches, layer_names, seed)

    return Prepared(call, {"framework": "torch", "captum_layers": layer_names})


def _batches(images: Any, batch_size: int) -> list[Any]:
    return [images[start : start + batch_size] for start in range(0, len(images), batch_size)]


def run_captum(
    logit_model: Any,
    targets: Any,
    concept_batches: list[Any],
    random_batches: list[list[Any]],
    layer_names: list[str],
    seed: int,
    save_path: str | None = None,
) -> dict[str, Any]:
    """Run the t-test design with captum and return the scores and p-values per layer.

    captum's train/test split uses Python's global ``random`` and its SGDClassifier has
    no ``random_state``, so both global generators are seeded here for repeatable runs.
    """
    import torch
    from captum.concept import TCAV, Concept
    from scipy import stats

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (captum's classifier draws from the global state)
    torch.manual_seed(seed)
    concept = Concept(0, CONCEPT_NAME, concept_batches)
    names = random_names(len(random_batches))
    randoms = [
        Concept(index + 1, name, batches)
        for index, (name, batches) in enumerate(zip(names, random_batches, strict=True))
    ]
    concept_sets = [[concept, random_set] for random_set in randoms]
    null_sets = [[randoms[first], randoms[second]] for first, second in null_pairs(len(randoms))]

    with tempfile.TemporaryDirectory(prefix="captum-tcav-") as folder:
        tcav = TCAV(
            logit_model,
            layer_names,
            model_id="w1",
            save_path=save_path or os.path.join(folder, "cav"),
        )
        scores = tcav.interpret(targets, concept_sets + null_sets, target=0)

    result: dict[str, Any] = {}
    for layer in layer_names:
        concept_scores = [
            float(scores[_key(pair)][layer]["sign_count"][0]) for pair in concept_sets
        ]
        null_scores = [float(scores[_key(pair)][layer]["sign_count"][0]) for pair in null_sets]
        test = stats.ttest_ind(concept_scores, null_scores)
        result[layer] = {
            "concept_scores": concept_scores,
            "null_scores": null_scores,
            "p_value": float(test.pvalue),
        }
    return result


def _key(concepts: Sequence[Any]) -> str:
    return "-".join(str(concept.id) for concept in concepts)

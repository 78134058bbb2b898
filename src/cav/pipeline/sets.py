"""Image sets of a TCAV call: concepts, random sets, inputs per class, and run pairs."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cav.errors import InvalidArgumentError, InvalidTypeError, NonFiniteError, ValueRangeWarning

logger = logging.getLogger(__name__)

# Mixed into the call's seed so the draw of random sets has its own random stream.
_RANDOM_SETS_STREAM = 0x52414E44

MIN_SET_SIZE = 2
"""Minimum number of images in a concept, a random set or the inputs of a class."""


@dataclass(frozen=True)
class TargetInputs:
    """The inputs scored for one target class.

    Attributes
    ----------
    target : int
        Class index.
    inputs : numpy.ndarray of shape (n, ...)
        Inputs in the model's own layout.
    labels : numpy.ndarray of shape (n,) or None
        Labels for ``output="loss"``; None means every input has label ``target``.
    """

    target: int
    inputs: np.ndarray
    labels: np.ndarray | None


def resolve_seed(seed: int | np.random.Generator) -> int:
    """Return ``seed`` as a non-negative int; a Generator gives one draw from it."""
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**32))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidTypeError(
            f"seed must be an int or a numpy.random.Generator; got {type(seed).__name__}"
        )
    if seed < 0:
        raise InvalidArgumentError(f"seed={seed} must be a non-negative int")
    return int(seed)


def as_images(value: Any, name: str, min_images: int = 1) -> np.ndarray:
    """Convert an image set to one numpy array of shape (n, ...).

    Accepts a numpy array, a torch tensor (moved to the CPU), or an iterable of such
    batches, which are concatenated along the first axis.

    Raises
    ------
    InvalidArgumentError
        If the set has fewer than ``min_images`` images or batches of different shapes.
    NonFiniteError
        If a value is NaN or infinite (the message names the set and the first image).
    InvalidTypeError
        If the set is not numeric.
    """
    if isinstance(value, np.ndarray):
        array = value
    elif _is_tensor(value):
        array = value.detach().cpu().numpy()
    elif isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidTypeError(
            f"{name} must be a numpy array, a torch tensor or an iterable of batches; "
            f"got {type(value).__name__}"
        )
    else:
        batches = [as_images(batch, f"{name} batch {i}") for i, batch in enumerate(value)]
        if not batches:
            raise InvalidArgumentError(f"{name} is an empty iterable; it must hold images")
        for index, batch in enumerate(batches):
            if batch.shape[1:] != batches[0].shape[1:]:
                raise InvalidArgumentError(
                    f"{name} batch {index} has images of shape {batch.shape[1:]}, but batch 0 "
                    f"has {batches[0].shape[1:]}; every image of a set must have one shape"
                )
        array = np.concatenate(batches, axis=0)
    if array.ndim < 2:
        raise InvalidArgumentError(
            f"{name} must have shape (n, ...) with one image per row; got shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise InvalidArgumentError(
            f"{name} is empty (shape {array.shape}); give at least one image"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise InvalidTypeError(f"{name} must be numeric; got dtype {array.dtype}")
    if array.shape[0] < min_images:
        raise InvalidArgumentError(
            f"{name} has {array.shape[0]} image(s); at least {min_images} are needed"
        )
    if np.issubdtype(array.dtype, np.inexact):
        _check_finite_images(array, name)
    return array


def _check_finite_images(array: np.ndarray, name: str) -> None:
    finite = np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise NonFiniteError(
            f"{name} contains NaN or infinite values in {bad.size} of {finite.size} images "
            f"(first at index {int(bad[0])}); remove or repair those images"
        )


def prepare_concepts(concepts: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Check the concepts mapping and convert each image set to an array."""
    if not isinstance(concepts, Mapping):
        raise InvalidTypeError(
            f"concepts must be a mapping of name to images; got {type(concepts).__name__}"
        )
    if not concepts:
        raise InvalidArgumentError("concepts is empty; give at least one name -> images entry")
    prepared = {}
    for name, images in concepts.items():
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"concept names must be non-empty strings; got {name!r}")
        prepared[name] = as_images(images, f"concepts[{name!r}]", MIN_SET_SIZE)
    return prepared


def random_set_names(n_sets: int) -> list[str]:
    """Name ``n_sets`` random sets ``random_00``, ``random_01``, ... (wider when needed)."""
    width = max(2, len(str(n_sets - 1)))
    return [f"random_{index:0{width}d}" for index in range(n_sets)]


def prepare_random_sets(
    random_sets: Sequence[Any] | Mapping[str, Any] | None,
    random_pool: Any,
    n_random: int,
    random_set_size: int | None,
    concept_sizes: Sequence[int],
    seed: int,
) -> dict[str, np.ndarray]:
    """Return the random sets by name, given directly or drawn from a pool.

    Exactly one of ``random_sets`` (a sequence, named ``random_00`` ..., or a mapping)
    and ``random_pool`` must be given. From a pool, ``n_random`` disjoint sets of
    ``random_set_size`` images (default: the largest concept's size) are drawn.
    """
    if (random_sets is None) == (random_pool is None):
        raise InvalidArgumentError(
            "give exactly one of random_sets (the random image sets) and random_pool "
            "(images to draw them from)"
        )
    if random_sets is not None:
        return _named_random_sets(random_sets)
    size = max(concept_sizes) if random_set_size is None else random_set_size
    pool = as_images(random_pool, "random_pool")
    return draw_random_sets(pool, n_random, size, seed)


def draw_random_sets(
    pool: np.ndarray, n_sets: int, set_size: int, seed: int
) -> dict[str, np.ndarray]:
    """Draw ``n_sets`` disjoint sets of ``set_size`` images from ``pool``, seeded.

    Returns
    -------
    dict of str to numpy.ndarray of shape (set_size, ...)
        Named ``random_00``, ``random_01``, ...
    """
    if isinstance(n_sets, bool) or not isinstance(n_sets, (int, np.integer)) or n_sets < 1:
        raise InvalidArgumentError(f"n_random={n_sets!r} must be a positive int")
    if isinstance(set_size, bool) or not isinstance(set_size, (int, np.integer)) or set_size < 2:
        raise InvalidArgumentError(f"random_set_size={set_size!r} must be an int >= 2")
    needed = n_sets * set_size
    if needed > len(pool):
        raise InvalidArgumentError(
            f"random_pool has {len(pool)} images, but n_random={n_sets} disjoint sets of "
            f"random_set_size={set_size} need {n_sets} * {set_size} = {needed}; give a larger "
            "pool or lower n_random or random_set_size"
        )
    rng = np.random.default_rng([seed, _RANDOM_SETS_STREAM])
    order = rng.permutation(len(pool))[:needed].reshape(n_sets, set_size)
    # Sorted indices keep each set in pool order, so only membership depends on the seed.
    names = random_set_names(n_sets)
    return {name: pool[np.sort(indices)] for name, indices in zip(names, order, strict=True)}


def _named_random_sets(random_sets: Sequence[Any] | Mapping[str, Any]) -> dict[str, np.ndarray]:
    if isinstance(random_sets, Mapping):
        for name in random_sets:
            if not isinstance(name, str) or not name:
                raise InvalidArgumentError(
                    f"random set names must be non-empty strings; got {name!r}"
                )
        named = dict(random_sets)
    elif isinstance(random_sets, (np.ndarray, str, bytes)) or _is_tensor(random_sets):
        raise InvalidTypeError(
            "random_sets must be a sequence or mapping of image sets; to draw sets from one "
            "array of images, pass it as random_pool"
        )
    elif isinstance(random_sets, Sequence):
        named = dict(zip(random_set_names(len(random_sets)), random_sets, strict=True))
    else:
        raise InvalidTypeError(
            "random_sets must be a sequence or mapping of image sets; "
            f"got {type(random_sets).__name__}"
        )
    if not named:
        raise InvalidArgumentError("random_sets is empty; give at least one random image set")
    return {
        name: as_images(images, f"random_sets[{name!r}]", MIN_SET_SIZE)
        for name, images in named.items()
    }


def prepare_targets(
    target: int | Sequence[int],
    inputs: Any,
    labels: Any = None,
) -> list[TargetInputs]:
    """Pair each target class with its inputs (and labels).

    ``inputs`` is one array for every target, or a mapping of class to its inputs.
    ``labels`` is None, one array matching one input array, or a mapping of class to
    labels.
    """
    targets = _as_target_list(target)
    result = []
    for value in targets:
        if isinstance(inputs, Mapping):
            if value not in inputs:
                raise InvalidArgumentError(
                    f"inputs has no entry for target {value}; its keys are {list(inputs)}"
                )
            class_inputs = as_images(inputs[value], f"inputs[{value}]", MIN_SET_SIZE)
        else:
            class_inputs = as_images(inputs, "inputs", MIN_SET_SIZE)
        class_labels = _labels_for(labels, value, len(class_inputs))
        result.append(TargetInputs(value, class_inputs, class_labels))
    return result


def _as_target_list(target: int | Sequence[int]) -> list[int]:
    values = list(target) if isinstance(target, (Sequence, np.ndarray)) else [target]
    if not values:
        raise InvalidArgumentError("target is empty; give a class index or a list of them")
    checked = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidTypeError(f"target must be an int class index; got {value!r}")
        if value < 0:
            raise InvalidArgumentError(f"target={value} must be a non-negative class index")
        checked.append(int(value))
    if len(set(checked)) != len(checked):
        raise InvalidArgumentError(f"target lists a class more than once: {checked}")
    return checked


def _labels_for(labels: Any, target: int, n_inputs: int) -> np.ndarray | None:
    if labels is None:
        return None
    chosen = labels[target] if isinstance(labels, Mapping) else labels
    array = np.asarray(chosen.detach().cpu().numpy() if _is_tensor(chosen) else chosen)
    if array.shape != (n_inputs,):
        raise InvalidArgumentError(
            f"labels for target {target} have shape {array.shape}; expected ({n_inputs},), "
            "one per input"
        )
    return array


def concept_pairs(concepts: Sequence[str], random_names: Sequence[str]) -> list[tuple[str, str]]:
    """Return the concept runs: every concept against every random set."""
    overlap = set(concepts) & set(random_names)
    if overlap:
        raise InvalidArgumentError(
            f"names {sorted(overlap)} are used for both a concept and a random set; "
            "rename one of them"
        )
    return [(concept, random) for concept in concepts for random in random_names]


def null_pairs(random_names: Sequence[str], test: str) -> list[tuple[str, str]]:
    """Return the random-against-random runs that ``test`` needs.

    The names are sorted first, so the pairs do not depend on the order in which the random
    sets were given. ``"calibrated"``: every unordered pair once, ``(A, B)`` with
    ``A < B``. ``"ttest"``: the cycle ``(N_0, N_1), (N_1, N_2), ..., (N_{R-1}, N_0)`` for
    ``R >= 3``, the single pair for ``R = 2``, none for ``R = 1``.
    """
    names = sorted(random_names)
    if len(names) < 2:
        return []
    if test == "calibrated":
        return [(first, second) for i, first in enumerate(names) for second in names[i + 1 :]]
    if len(names) == 2:
        return [(names[0], names[1])]
    return [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))]


def heldout_size(n_images: int, holdout: float) -> int:
    """Return how many of ``n_images`` a CAV fit holds out.

    Mirrors the split of :func:`cav.core.cav.fit_cavs`: ``ceil(holdout * n)`` images, or
    none when that leaves fewer than 2 images on either side.
    """
    n_test = math.ceil(holdout * n_images)
    if n_test < 2 or n_images - n_test < 2:
        return 0
    return n_test


def check_image_shapes(
    inputs: Sequence[TargetInputs], image_sets: Mapping[str, np.ndarray]
) -> None:
    """Raise unless every image set has the image shape of the inputs.

    ``run_tcav`` calls this before any forward pass, so a concept or random set of the
    wrong shape is named here instead of failing inside the model.

    Raises
    ------
    InvalidArgumentError
        Naming the set, its shape and the shape of the inputs.
    """
    first = inputs[0]
    expected = first.inputs.shape[1:]
    described = f"the inputs of target {first.target}"
    named = {f"inputs[{item.target}]": item.inputs for item in inputs[1:]}
    for name, images in {**named, **image_sets}.items():
        if images.shape[1:] != expected:
            raise InvalidArgumentError(
                f"image set {name!r} has images of shape {images.shape[1:]}, but {described} "
                f"have shape {expected}; preprocess every image set to the model's input shape"
            )


def value_range_mismatches(
    inputs: Sequence[np.ndarray], image_sets: Mapping[str, np.ndarray]
) -> tuple[tuple[float, float], list[str]]:
    """Find the image sets that lie far outside the value range of the inputs.

    A set is flagged when its minimum or maximum lies more than the inputs' own range
    ``high - low`` beyond the inputs' minimum or maximum, for example images in [0, 255]
    scored with inputs scaled to [0, 1].

    Returns
    -------
    (low, high) : tuple of float
        The inputs' range.
    flagged : list of str
        ``"name [min, max]"`` of each flagged set, in the order of ``image_sets``.
    """
    low = min(float(np.min(array)) for array in inputs)
    high = max(float(np.max(array)) for array in inputs)
    width = max(high - low, float(np.finfo(np.float32).eps))
    flagged = []
    for name, images in image_sets.items():
        set_low, set_high = float(np.min(images)), float(np.max(images))
        if set_low < low - width or set_high > high + width:
            flagged.append(f"{name} [{set_low:.3g}, {set_high:.3g}]")
    return (low, high), flagged


def warn_value_ranges(inputs: Sequence[TargetInputs], image_sets: Mapping[str, np.ndarray]) -> None:
    """Warn with :class:`ValueRangeWarning` about sets off the inputs' value range.

    The rule is that of :func:`value_range_mismatches`; the message names both ranges.
    """
    (low, high), flagged = value_range_mismatches([item.inputs for item in inputs], image_sets)
    if flagged:
        warnings.warn(
            f"image sets lie on a different value range from the inputs [{low:.3g}, {high:.3g}]: "
            f"{', '.join(flagged)}; preprocess every image set like the inputs",
            ValueRangeWarning,
            stacklevel=3,
        )


def _is_tensor(value: Any) -> bool:
    return all(hasattr(value, attribute) for attribute in ("detach", "cpu", "numpy"))

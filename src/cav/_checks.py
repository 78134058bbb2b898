"""Argument checks shared by the numpy layers of ``cav``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cav.errors import InvalidArgumentError, InvalidTypeError, NonFiniteError


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise naming the argument."""
    if not isinstance(value, str) or value not in allowed:
        choices = ", ".join(repr(item) for item in allowed)
        raise InvalidArgumentError(f"{name}={value!r} is not supported; use one of {choices}")
    return value


def check_activations(name: str, array: object, min_rows: int = 2) -> np.ndarray:
    """Return ``array`` as a finite 2-D float array of at least ``min_rows`` rows.

    Float32 and float64 arrays are returned without a copy; other dtypes are converted to
    float32.
    """
    if not isinstance(array, np.ndarray):
        try:
            array = np.asarray(array)
        except Exception as exc:
            raise InvalidTypeError(
                f"{name} must be an array of shape (n, d); got {type(array).__name__}"
            ) from exc
    if array.ndim != 2:
        raise InvalidArgumentError(
            f"{name} must have shape (n, d) with one row per image; got shape {array.shape}"
        )
    if array.shape[0] < min_rows:
        raise InvalidArgumentError(
            f"{name} has {array.shape[0]} rows; at least {min_rows} are needed"
        )
    if array.dtype not in (np.float32, np.float64):
        if not np.issubdtype(array.dtype, np.number):
            raise InvalidTypeError(f"{name} must be numeric; got dtype {array.dtype}")
        array = array.astype(np.float32)
    check_finite(name, array)
    return array


def check_finite(name: str, array: np.ndarray) -> None:
    """Raise :class:`NonFiniteError` if ``array`` contains NaN or infinite values."""
    # Any NaN or infinity propagates into the sum, so a finite sum settles the common case
    # in one reduction. The sum stays in the array's dtype, which is 2.5 times faster for
    # float32 than a float64 sum. An overflowing sum only falls through to the mask below.
    with np.errstate(over="ignore", invalid="ignore"):
        total = array.sum()
    if np.isfinite(total):
        return
    if not np.isfinite(array).all():
        n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise NonFiniteError(
            f"{name} contains {n_bad} NaN or infinite values out of {array.size}; "
            "check the inputs and the model for overflow"
        )

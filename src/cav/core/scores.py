"""Directional derivatives and the scores computed from them.

The conceptual sensitivity of input ``x`` for class ``k`` at layer ``l`` is the directional
derivative ``S(x) = grad h_k(a_l(x)) . v``, where ``v`` is the CAV's unit direction. The
scores below summarise the derivatives of one CAV over a set of inputs.
"""

from __future__ import annotations

import numpy as np

from cav._checks import check_finite
from cav.core.cav import CAV
from cav.errors import InvalidArgumentError


def directional_derivatives(gradients: np.ndarray, cav: CAV | np.ndarray) -> np.ndarray:
    """Project gradients on one or several CAV directions.

    Parameters
    ----------
    gradients : numpy.ndarray of shape (n, d)
        Gradient of the class output with respect to the layer's activations, per input.
    cav : CAV, numpy.ndarray of shape (d,) or (k, d)
        One CAV, one direction, or ``k`` directions stacked as rows.

    Returns
    -------
    numpy.ndarray of shape (n,) or (n, k)
        ``S = gradients @ direction`` (float64); shape (n, k) when ``k`` directions are
        given. A degenerate CAV (NaN direction) gives NaN derivatives.
    """
    direction = cav.direction if isinstance(cav, CAV) else np.asarray(cav)
    gradients = np.asarray(gradients)
    if gradients.ndim != 2:
        raise InvalidArgumentError(f"gradients must have shape (n, d); got shape {gradients.shape}")
    if direction.ndim not in (1, 2) or direction.shape[-1] != gradients.shape[1]:
        raise InvalidArgumentError(
            f"cav direction of shape {direction.shape} does not match gradients of shape "
            f"{gradients.shape}; both must have the layer's width d = {gradients.shape[1]}"
        )
    check_finite("gradients", gradients)
    return np.asarray(gradients @ direction.T, dtype=np.float64)


def tcav_score(derivatives: np.ndarray, axis: int = 0) -> float | np.ndarray:
    """Return the TCAV score: the fraction of derivatives strictly greater than zero.

    ``score = #{i : S_i > 0} / n``. When every derivative is exactly zero the model's
    output does not change along the CAV for any input, so the score is undefined and NaN
    is returned instead of 0. NaN derivatives (from a degenerate CAV) give NaN.

    Returns
    -------
    float or numpy.ndarray
        A float for 1-D input; an array over the other axes otherwise.
    """
    values = _as_float_array(derivatives)
    score = np.mean(values > 0, axis=axis)
    return _undefined_to_nan(values, score, axis)


def zero_fraction(derivatives: np.ndarray, axis: int = 0) -> float | np.ndarray:
    """Return the fraction of derivatives exactly equal to zero: ``#{i : S_i = 0} / n``."""
    values = _as_float_array(derivatives)
    fraction = np.mean(values == 0, axis=axis)
    fraction = np.where(np.isnan(values).any(axis=axis), np.nan, fraction)
    return _scalar_if_0d(fraction)


def magnitude_score(derivatives: np.ndarray, axis: int = 0) -> float | np.ndarray:
    """Return the magnitude score: the positive share of the total absolute sensitivity.

    ``magnitude = sum_i max(S_i, 0) / sum_i |S_i|``, in [0, 1]. Unlike the TCAV score it
    weighs each input by how strongly the output moves along the CAV. NaN when every
    derivative is exactly zero.
    """
    values = _as_float_array(derivatives)
    positive = np.sum(np.maximum(values, 0.0), axis=axis)
    total = np.sum(np.abs(values), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = positive / total
    return _undefined_to_nan(values, ratio, axis)


def _as_float_array(derivatives: np.ndarray) -> np.ndarray:
    values = np.asarray(derivatives, dtype=np.float64)
    if values.ndim == 0 or values.shape[0] == 0:
        raise InvalidArgumentError(
            f"derivatives must hold at least one value per CAV; got shape {values.shape}"
        )
    return values


def _undefined_to_nan(values: np.ndarray, score: np.ndarray, axis: int) -> float | np.ndarray:
    undefined = np.all(values == 0, axis=axis) | np.isnan(values).any(axis=axis)
    return _scalar_if_0d(np.where(undefined, np.nan, score))


def _scalar_if_0d(values: np.ndarray) -> float | np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return float(array) if array.ndim == 0 else array

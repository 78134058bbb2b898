"""Uniform-noise counterexamples, as the cav-keras package draws them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cav.errors import InvalidArgumentError, InvalidTypeError


def noise_like(images: npt.ArrayLike, seed: int | np.random.Generator) -> np.ndarray:
    """Draw uniform-noise images with the shape of `images`.

    Each value is ``rint(U * 255)`` with ``U ~ Uniform[0, 1)`` drawn independently, so
    values are whole numbers in ``[0, 255]`` on the 0-255 scale of raw images. The
    cav-keras package trains its CAVs against such images, one per concept image.

    Parameters
    ----------
    images : array_like
        Images whose shape is copied, for example ``(n, 32, 32, 3)``; values are unused.
    seed : int or numpy.random.Generator
        Seed of the draw; the same int gives the same bytes.

    Returns
    -------
    numpy.ndarray
        float32 array of ``np.shape(images)``.

    Raises
    ------
    InvalidArgumentError
        If `images` is a scalar, or `seed` is a negative int.
    InvalidTypeError
        If `seed` is neither an int nor a Generator.
    """
    shape = np.shape(images)
    if len(shape) == 0:
        raise InvalidArgumentError(
            "images must be an array of at least one dimension, got a scalar"
        )
    generator = _generator(seed)
    return np.rint(generator.random(shape) * 255.0).astype(np.float32)


def _generator(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise InvalidTypeError(
            f"seed must be an int or a numpy.random.Generator, got {type(seed).__name__}"
        )
    if seed < 0:
        raise InvalidArgumentError(f"seed must be a non-negative int, got {seed}")
    return np.random.default_rng(int(seed))

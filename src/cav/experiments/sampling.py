"""Imbalanced training sets: keep a fraction of the positive class, all of the negative.

The cav-keras notebook drew its kept positives with ``np.random.randint``, that is with
replacement, so "25 %" kept about 1,100 distinct ships. Here the kept images are drawn
without replacement, and the class shares are reported as they are: keeping 25 % of 5,000
ships against 5,000 birds gives 1,250 / 6,250 = 20 % positives, the split the notebook
labelled 25-75.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cav.errors import InvalidArgumentError


@dataclass(frozen=True)
class ImbalancedSet:
    """A training set built by :func:`imbalanced_training_set`.

    Attributes
    ----------
    x : numpy.ndarray of shape (n_positive + n_negative, height, width, channels)
        Images, float32 scaled to [0, 1]: positives first, then negatives.
    y : numpy.ndarray of shape (n_positive + n_negative,)
        Labels as int64, 1 for positive and 0 for negative.
    positive_indices : numpy.ndarray of shape (n_positive,)
        Sorted indices of the kept images into the positive images passed in.
    ratio : float
        Fraction of positive images requested.
    """

    x: np.ndarray
    y: np.ndarray
    positive_indices: np.ndarray
    ratio: float

    @property
    def n_positive(self) -> int:
        """Number of positive images kept."""
        return int(self.positive_indices.size)

    @property
    def n_negative(self) -> int:
        """Number of negative images (all of them)."""
        return int(self.y.size - self.positive_indices.size)

    @property
    def positive_share(self) -> float:
        """Share of positives in the set: ``n_positive / (n_positive + n_negative)``."""
        return positive_share(self.n_positive, self.n_negative)


def check_ratio(ratio: object) -> float:
    """Return ``ratio`` as a float in (0, 1], or raise :class:`InvalidArgumentError`."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float | np.integer | np.floating):
        raise InvalidArgumentError(f"ratio must be a number in (0, 1], got {ratio!r}")
    value = float(ratio)
    if not (0.0 < value <= 1.0):
        raise InvalidArgumentError(f"ratio must be in (0, 1], got {ratio!r}")
    return value


def n_kept(n_available: int, ratio: float) -> int:
    """Count the positive images kept at ``ratio``.

    Returns
    -------
    int
        ``round(n_available * ratio)`` (half to even), at least 1, so 5,000 images give
        5,000, 1,250, 250 and 50 at the ratios 1, 0.25, 0.05 and 0.01.
    """
    ratio = check_ratio(ratio)
    if isinstance(n_available, bool) or not isinstance(n_available, int | np.integer):
        raise InvalidArgumentError(f"n_available must be an int, got {n_available!r}")
    if n_available < 1:
        raise InvalidArgumentError(f"n_available must be at least 1, got {n_available}")
    # n * ratio is computed in binary floating point (5000 * 0.05 = 250.00000000000003), so
    # it is rounded before the floor would drop an image.
    return max(1, round(n_available * ratio))


MIN_KEPT_IMAGES = 2
"""Minimum number of positive training images a ratio must keep."""


def check_kept_images(n_available: int, ratio: float, name: str = "positive") -> int:
    """Return :func:`n_kept`, or raise when the ratio leaves fewer than 2 images.

    Raises
    ------
    InvalidArgumentError
        Naming the ratio, the class, and how many images it keeps.
    """
    count = n_kept(n_available, ratio)
    if count < MIN_KEPT_IMAGES:
        smallest = MIN_KEPT_IMAGES / n_available
        raise InvalidArgumentError(
            f"ratio {ratio:g} keeps {count} of the {n_available} training images of class "
            f"{name!r}; at least {MIN_KEPT_IMAGES} are needed, so use ratios >= {smallest:.3g}"
        )
    return count


def positive_share(n_positive: int, n_negative: int) -> float:
    """Return the share of positives, ``n_positive / (n_positive + n_negative)``."""
    total = n_positive + n_negative
    if total <= 0:
        return math.nan
    return n_positive / total


def subsample_indices(
    n_available: int, ratio: float, seed: int | np.random.Generator
) -> np.ndarray:
    """Draw the indices of the positive images to keep, without replacement.

    Parameters
    ----------
    n_available : int
        Number of positive images available.
    ratio : float
        Fraction to keep, in (0, 1].
    seed : int or numpy.random.Generator
        Source of the draw; the same seed gives the same indices.

    Returns
    -------
    numpy.ndarray of shape (n_kept(n_available, ratio),)
        Sorted, distinct int64 indices in ``[0, n_available)``; all of them when
        ``ratio == 1``.
    """
    count = n_kept(n_available, ratio)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if count == n_available:
        return np.arange(n_available, dtype=np.int64)
    return np.sort(rng.choice(n_available, size=count, replace=False)).astype(np.int64)


def scale_images(images: np.ndarray) -> np.ndarray:
    """Scale uint8 (or 0-255 float) images to float32 in [0, 1]: ``x / 255``."""
    return np.asarray(images, dtype=np.float32) / np.float32(255.0)


def imbalanced_training_set(
    positive_images: np.ndarray,
    negative_images: np.ndarray,
    ratio: float,
    seed: int | np.random.Generator,
) -> ImbalancedSet:
    """Keep a seeded fraction of the positive images and all negative images.

    Parameters
    ----------
    positive_images : numpy.ndarray of shape (n_p, height, width, channels)
        Images of the positive class, uint8 (0-255).
    negative_images : numpy.ndarray of shape (n_n, height, width, channels)
        Images of the negative class, uint8 (0-255).
    ratio : float
        Fraction of positives kept, in (0, 1].
    seed : int or numpy.random.Generator
        Source of :func:`subsample_indices`.

    Returns
    -------
    ImbalancedSet
        ``x`` of shape (n_kept + n_n, ...) scaled by 1/255, labels 1 then 0.
    """
    positive_images = np.asarray(positive_images)
    negative_images = np.asarray(negative_images)
    if positive_images.ndim != 4 or positive_images.shape[1:] != negative_images.shape[1:]:
        raise InvalidArgumentError(
            "positive_images and negative_images must be NHWC arrays of the same image shape, "
            f"got {positive_images.shape} and {negative_images.shape}"
        )
    if len(negative_images) == 0:
        raise InvalidArgumentError("negative_images is empty: the negative class needs images")
    ratio = check_ratio(ratio)
    check_kept_images(len(positive_images), ratio)
    indices = subsample_indices(len(positive_images), ratio, seed)
    x = scale_images(np.concatenate([positive_images[indices], negative_images]))
    y = np.concatenate(
        [np.ones(indices.size, dtype=np.int64), np.zeros(len(negative_images), dtype=np.int64)]
    )
    return ImbalancedSet(x=x, y=y, positive_indices=indices, ratio=ratio)

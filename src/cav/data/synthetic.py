"""A synthetic two-class image dataset with a planted concept, generated in numpy.

The concept is a texture of horizontal stripes inside a rectangle: each cycle of
`stripe_period` rows starts with ``ceil(stripe_period / 2)`` stripe rows, blended toward
`stripe_colour` (``0.25 * background + 0.75 * stripe_colour``), followed by gap rows
darkened toward black (``0.25 * background``). The two classes differ by two cues, so
that a classifier has reason to use the texture without needing it alone:

- ``positive`` images carry the texture in a rectangle of random size and place in a
  fraction `texture_fraction` of them; ``negative`` images never do.
- ``positive`` backgrounds are tinted toward red (+`tint` on red, -`tint` on blue),
  ``negative`` ones toward blue. This cue overlaps between the classes, because
  background colours spread more widely than the tint.

Concept images are the texture over untinted backgrounds, and the random pool is
untinted backgrounds without stripes, so that the texture is the only systematic
difference between concept images and random images. Backgrounds are a flat colour plus
a smooth random field, pixel noise and, in half of the images, one disc of random colour.

One trial used the default sizes and seed 0, with a PyTorch CNN of two blocks of two
3x3 convolutions, trained 2 epochs with Adam on images scaled to 0-1. The classifier
used both cues. Test positives without the texture got a mean probability of 0.63 and
untinted images with the texture 0.995. The TCAV score of the stripes for the positive
class was 1.0 at the second and fourth convolution and at the dense layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cav.errors import InvalidArgumentError, InvalidTypeError

CLASS_NAMES = ("negative", "positive")

_STRIPE_ALPHA = 0.75
_DISC_PROBABILITY = 0.5


@dataclass(frozen=True)
class SyntheticDataset:
    """Images of the synthetic dataset, all uint8 NHWC ``(n, size, size, 3)``.

    Attributes
    ----------
    train, test : dict of str to numpy.ndarray
        ``"negative"`` and ``"positive"`` images of each split.
    concept : numpy.ndarray
        Images of the planted texture over untinted backgrounds.
    random : numpy.ndarray
        Untinted backgrounds without stripes, to draw random sets from.
    train_texture, test_texture : numpy.ndarray
        bool ``(n_positive,)``: which positive images of the split carry the texture.
    seed : int or None
        The int seed the images were made from (None when a Generator was passed).
    stripe_period : int
        Rows per stripe cycle.
    stripe_colour : tuple of int
        RGB colour the stripe rows are blended toward.
    texture_fraction : float
        Probability that a positive image carries the texture.
    tint : float
        Shift of the red and blue channels that separates the classes' backgrounds.
    class_names : tuple of str
        ``("negative", "positive")``; position i is label i in :meth:`arrays`.
    """

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    concept: np.ndarray
    random: np.ndarray
    train_texture: np.ndarray
    test_texture: np.ndarray
    seed: int | None
    stripe_period: int
    stripe_colour: tuple[int, int, int]
    texture_fraction: float
    tint: float
    class_names: tuple[str, str] = field(default=CLASS_NAMES)

    def arrays(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """Return the images and labels of one split, negatives first.

        Returns
        -------
        images : numpy.ndarray
            uint8 ``(n_negative + n_positive, size, size, 3)``.
        labels : numpy.ndarray
            int64 ``(n_negative + n_positive,)``: 0 for negative, 1 for positive.
        """
        if split not in ("train", "test"):
            raise InvalidArgumentError(f"split must be 'train' or 'test', got {split!r}")
        images = self.train if split == "train" else self.test
        negative, positive = images["negative"], images["positive"]
        labels = np.concatenate(
            [np.zeros(len(negative), dtype=np.int64), np.ones(len(positive), dtype=np.int64)]
        )
        return np.concatenate([negative, positive]), labels


def make_synthetic(
    seed: int | np.random.Generator = 0,
    n_train_per_class: int = 1000,
    n_test_per_class: int = 200,
    n_concept: int = 100,
    n_random: int = 1000,
    image_size: int = 32,
    texture_fraction: float = 0.7,
    tint: float = 40.0,
    stripe_period: int = 4,
    stripe_colour: tuple[int, int, int] = (250, 250, 250),
) -> SyntheticDataset:
    """Generate the synthetic dataset described in the module docstring.

    Each part (train and test images of each class, concept images, random pool) is drawn
    from its own child of the seed, so changing the size of one part leaves the others'
    images unchanged.

    Parameters
    ----------
    seed : int or numpy.random.Generator, default 0
        The same int gives the same bytes.
    n_train_per_class, n_test_per_class : int
        Images per class in each split.
    n_concept : int
        Concept images.
    n_random : int
        Images in the random pool (1000 is enough for 20 random sets of 50).
    image_size : int, default 32
        Side of the square images, at least 8.
    texture_fraction : float, default 0.7
        Probability in ``[0, 1]`` that a positive image carries the texture.
    tint : float, default 40.0
        Red and blue shift, in 0-255 intensity units, between the classes' backgrounds;
        0 removes the colour cue.
    stripe_period : int, default 4
        Rows per stripe cycle, from 2 to ``image_size // 2``.
    stripe_colour : tuple of int, default (250, 250, 250)
        RGB colour of the stripes, each 0-255. Stripe rows become
        ``0.25 * background + 0.75 * stripe_colour`` and gap rows ``0.25 * background``.

    Returns
    -------
    SyntheticDataset

    Raises
    ------
    InvalidArgumentError
        If a count is not positive or a parameter lies outside the ranges above.
    """
    _check_arguments(
        n_train_per_class,
        n_test_per_class,
        n_concept,
        n_random,
        image_size,
        texture_fraction,
        tint,
        stripe_period,
        stripe_colour,
    )
    streams = _child_generators(seed, 6)
    colour = np.asarray(stripe_colour, dtype=np.float64)
    red_tint = (tint, 0.0, -tint)
    blue_tint = (-tint, 0.0, tint)
    neutral = (0.0, 0.0, 0.0)

    # Positives carry stripes in a rectangle of side 3/8 to 3/4 of the image. Concept
    # images carry them in a larger one, of half to all of the image.
    patch = (math.ceil(image_size * 3 / 8), (image_size * 3) // 4)
    large = (math.ceil(image_size / 2), image_size)

    def positives(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        images = _backgrounds(rng, n, image_size, red_tint)
        has_texture = rng.random(n) < texture_fraction
        images[has_texture] = _add_stripes(rng, images[has_texture], patch, stripe_period, colour)
        return _to_uint8(images), has_texture

    train_positive, train_texture = positives(streams[0], n_train_per_class)
    test_positive, test_texture = positives(streams[1], n_test_per_class)
    train_negative = _to_uint8(_backgrounds(streams[2], n_train_per_class, image_size, blue_tint))
    test_negative = _to_uint8(_backgrounds(streams[3], n_test_per_class, image_size, blue_tint))
    concept_backgrounds = _backgrounds(streams[4], n_concept, image_size, neutral)
    concept = _to_uint8(_add_stripes(streams[4], concept_backgrounds, large, stripe_period, colour))
    random_pool = _to_uint8(_backgrounds(streams[5], n_random, image_size, neutral))

    return SyntheticDataset(
        train={"negative": train_negative, "positive": train_positive},
        test={"negative": test_negative, "positive": test_positive},
        concept=concept,
        random=random_pool,
        train_texture=train_texture,
        test_texture=test_texture,
        seed=None if isinstance(seed, np.random.Generator) else int(seed),
        stripe_period=stripe_period,
        stripe_colour=(int(colour[0]), int(colour[1]), int(colour[2])),
        texture_fraction=float(texture_fraction),
        tint=float(tint),
    )


def _check_arguments(
    n_train_per_class: int,
    n_test_per_class: int,
    n_concept: int,
    n_random: int,
    image_size: int,
    texture_fraction: float,
    tint: float,
    stripe_period: int,
    stripe_colour: tuple[int, int, int],
) -> None:
    counts = {
        "n_train_per_class": n_train_per_class,
        "n_test_per_class": n_test_per_class,
        "n_concept": n_concept,
        "n_random": n_random,
    }
    for name, value in counts.items():
        if not _is_int(value) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    if not _is_int(image_size) or image_size < 8:
        raise InvalidArgumentError(f"image_size must be an int of at least 8, got {image_size!r}")
    for name, number in (("texture_fraction", texture_fraction), ("tint", tint)):
        if isinstance(number, bool) or not isinstance(number, int | float | np.number):
            raise InvalidTypeError(f"{name} must be a number, got {type(number).__name__}")
    if not 0.0 <= texture_fraction <= 1.0:
        raise InvalidArgumentError(f"texture_fraction must lie in [0, 1], got {texture_fraction!r}")
    if not (math.isfinite(tint) and tint >= 0):
        raise InvalidArgumentError(f"tint must be a finite number >= 0, got {tint!r}")
    if not _is_int(stripe_period) or not 2 <= stripe_period <= image_size // 2:
        raise InvalidArgumentError(
            f"stripe_period must be an int from 2 to image_size // 2 = {image_size // 2}, "
            f"got {stripe_period!r}"
        )
    if len(stripe_colour) != 3 or not all(_is_int(c) and 0 <= c <= 255 for c in stripe_colour):
        raise InvalidArgumentError(
            f"stripe_colour must be three ints from 0 to 255, got {stripe_colour!r}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _child_generators(seed: int | np.random.Generator, count: int) -> list[np.random.Generator]:
    if isinstance(seed, np.random.Generator):
        sequence = np.random.SeedSequence(int(seed.integers(2**63)))
    elif _is_int(seed) and int(seed) >= 0:
        sequence = np.random.SeedSequence(int(seed))
    elif _is_int(seed):
        raise InvalidArgumentError(f"seed must be a non-negative int, got {seed}")
    else:
        raise InvalidTypeError(
            f"seed must be an int or a numpy.random.Generator, got {type(seed).__name__}"
        )
    return [np.random.default_rng(child) for child in sequence.spawn(count)]


def _bilinear_matrix(source: int, target: int) -> np.ndarray:
    """Return the ``(target, source)`` matrix of 1-D linear interpolation, corners aligned."""
    position = np.linspace(0.0, source - 1.0, target)
    lower = np.clip(np.floor(position).astype(np.int64), 0, source - 2)
    fraction = position - lower
    matrix = np.zeros((target, source))
    matrix[np.arange(target), lower] = 1.0 - fraction
    matrix[np.arange(target), lower + 1] += fraction
    return matrix


def _backgrounds(
    rng: np.random.Generator, n: int, size: int, tint: tuple[float, float, float]
) -> np.ndarray:
    """Draw float32 backgrounds ``(n, size, size, 3)`` on the 0-255 scale, unclipped."""
    base = rng.uniform(40.0, 215.0, (n, 1, 1, 3)) + np.asarray(tint)

    # A smooth field: a 4x4 grid of normal values per channel, interpolated to full size.
    grid = rng.normal(0.0, 1.0, (n, 3, 4, 4)) * rng.uniform(10.0, 40.0, (n, 1, 1, 1))
    interpolation = _bilinear_matrix(4, size)
    smooth = (interpolation @ grid @ interpolation.T).transpose(0, 2, 3, 1)

    # Pixel noise is uniform, with a standard deviation of 4 to 16 per image, because
    # uniform draws are several times faster than normal ones.
    spread = rng.uniform(4.0, 16.0, (n, 1, 1, 1)) * math.sqrt(12.0)
    noise = (rng.random((n, size, size, 3), dtype=np.float32) - 0.5) * spread.astype(np.float32)
    images = noise + (base + smooth).astype(np.float32)

    # One disc of random colour, radius size/8 to size/4, in about half of the images.
    has_disc = rng.random(n) < _DISC_PROBABILITY
    centre = rng.uniform(0.0, size, (n, 2))
    radius = rng.uniform(size / 8, size / 4, n)
    disc_colour = rng.uniform(0.0, 255.0, (n, 3)).astype(np.float32)
    rows = np.arange(size)[None, :, None]
    cols = np.arange(size)[None, None, :]
    distance2 = (rows - centre[:, 0, None, None]) ** 2 + (cols - centre[:, 1, None, None]) ** 2
    inside = (distance2 < radius[:, None, None] ** 2) & has_disc[:, None, None]
    images[inside] = np.broadcast_to(disc_colour[:, None, None, :], images.shape)[inside]
    return images


def _add_stripes(
    rng: np.random.Generator,
    images: np.ndarray,
    side_range: tuple[int, int],
    period: int,
    colour: np.ndarray,
) -> np.ndarray:
    """Blend horizontal stripes into a random rectangle of each image.

    The rectangle's height and width are drawn from ``side_range`` (inclusive), its
    place uniformly, and the stripe phase from ``0 .. period - 1``.
    """
    n, size = int(images.shape[0]), int(images.shape[1])
    height = rng.integers(side_range[0], side_range[1] + 1, size=n)
    width = rng.integers(side_range[0], side_range[1] + 1, size=n)
    top = rng.integers(0, size - height + 1, size=n)
    left = rng.integers(0, size - width + 1, size=n)
    phase = rng.integers(0, period, size=n)

    index = np.arange(size)[None, :]
    in_rows = (index >= top[:, None]) & (index < (top + height)[:, None])
    striped = ((index + phase[:, None]) % period) < period / 2
    in_cols = (index >= left[:, None]) & (index < (left + width)[:, None])
    in_patch = in_rows[:, :, None] & in_cols[:, None, :]
    stripe_mask = in_patch & striped[:, :, None]
    gap_mask = in_patch & ~striped[:, :, None]

    # Gap rows are darkened toward black, so the stripes keep their contrast on
    # backgrounds as light as the stripe colour.
    result = images.copy()
    result[stripe_mask] = (1.0 - _STRIPE_ALPHA) * result[stripe_mask] + _STRIPE_ALPHA * colour
    result[gap_mask] = (1.0 - _STRIPE_ALPHA) * result[gap_mask]
    return result


def _to_uint8(images: np.ndarray) -> np.ndarray:
    rounded = np.rint(images)
    np.clip(rounded, 0, 255, out=rounded)
    return rounded.astype(np.uint8)

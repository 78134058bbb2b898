"""Uniform-noise counterexamples: rint(U(0, 1) * 255) as float32."""

from __future__ import annotations

import numpy as np
import pytest

from cav.data import noise_like
from cav.errors import InvalidArgumentError, InvalidTypeError


def test_noise_shape_and_dtype() -> None:
    images = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    noise = noise_like(images, seed=0)
    assert noise.shape == (5, 32, 32, 3)
    assert noise.dtype == np.float32


def test_noise_whole_numbers_in_range() -> None:
    noise = noise_like(np.empty((10, 8, 8, 3)), seed=1)
    assert noise.min() >= 0.0
    assert noise.max() <= 255.0
    np.testing.assert_array_equal(noise, np.rint(noise))


def test_noise_value_frequencies() -> None:
    # rint(255 U) is 0 when U < 0.5/255 and 255 when U >= 254.5/255, so the end values
    # have probability 1/510 and every other value 1/255.
    noise = noise_like(np.empty(1_000_000), seed=2)
    counts = np.bincount(noise.astype(np.int64), minlength=256)
    n = noise.size
    for value, probability in ((0, 1 / 510), (255, 1 / 510), (128, 1 / 255)):
        expected = n * probability
        assert abs(counts[value] - expected) < 5 * np.sqrt(expected)
    assert abs(noise.mean() - 127.5) < 0.5


def test_noise_same_seed_same_bytes() -> None:
    images = np.empty((3, 4, 4, 3))
    assert noise_like(images, seed=7).tobytes() == noise_like(images, seed=7).tobytes()
    assert noise_like(images, seed=7).tobytes() != noise_like(images, seed=8).tobytes()


def test_noise_from_generator() -> None:
    images = np.empty((2, 4, 4, 3))
    first = noise_like(images, np.random.default_rng(9))
    second = noise_like(images, np.random.default_rng(9))
    assert first.tobytes() == second.tobytes()


def test_noise_accepts_nested_lists() -> None:
    assert noise_like([[1, 2, 3]], seed=0).shape == (1, 3)


@pytest.mark.parametrize("seed", ["1", 1.0, None, True])
def test_noise_seed_of_wrong_type(seed: object) -> None:
    with pytest.raises(InvalidTypeError, match="seed"):
        noise_like(np.empty(3), seed=seed)  # type: ignore[arg-type]


def test_noise_negative_seed() -> None:
    with pytest.raises(InvalidArgumentError, match="-1"):
        noise_like(np.empty(3), seed=-1)


def test_noise_scalar_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="scalar"):
        noise_like(np.float32(1.0), seed=0)

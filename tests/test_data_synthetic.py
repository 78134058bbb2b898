"""The synthetic dataset: determinism, sizes, and where the planted stripes are."""

from __future__ import annotations

import numpy as np
import pytest

from cav.data import SyntheticDataset, make_synthetic
from cav.errors import InvalidArgumentError, InvalidTypeError

PERIOD = 4
# With the default sizes and seeds 0 to 9, images with the stripes put at least 0.18 of
# their vertical AC power at the stripe frequency and images without them at most 0.09.
THRESHOLD = 0.15


def stripe_power(images: np.ndarray, period: int = PERIOD) -> np.ndarray:
    """Fraction of the vertical AC power of the grey image at the stripe frequency.

    ``P(k)`` is the power spectrum of one column of the grey image, along the rows.
    The result is ``sum over columns of P(size / period)`` divided by
    ``sum over columns and frequencies k >= 1 of P(k)``, one value per image.
    """
    grey = images.astype(np.float64).mean(axis=3)
    spectrum = np.abs(np.fft.rfft(grey, axis=1)) ** 2
    stripe = spectrum[:, grey.shape[1] // period, :].sum(axis=1)
    return stripe / spectrum[:, 1:, :].sum(axis=(1, 2))


@pytest.fixture(scope="module")
def data() -> SyntheticDataset:
    return make_synthetic(seed=0)


def test_detector_known_answers() -> None:
    rows = np.arange(32)
    stripes = np.where(rows % PERIOD < PERIOD // 2, 250.0, 10.0)
    horizontal = np.broadcast_to(stripes[None, :, None, None], (1, 32, 32, 3))
    vertical = np.broadcast_to(stripes[None, None, :, None], (1, 32, 32, 3))
    # A square wave of period 4 sampled at 32 rows has power only at k = 8.
    assert stripe_power(horizontal)[0] == pytest.approx(1.0, abs=1e-12)
    # Vertical stripes are constant along each column, so only the added noise has
    # vertical AC power, spread over all 16 frequencies.
    noise = np.random.default_rng(0).normal(size=(1, 32, 32, 3))
    assert stripe_power(vertical + noise)[0] < 0.2


def test_default_sizes(data: SyntheticDataset) -> None:
    assert data.train["positive"].shape == (1000, 32, 32, 3)
    assert data.train["negative"].shape == (1000, 32, 32, 3)
    assert data.test["positive"].shape == (200, 32, 32, 3)
    assert data.test["negative"].shape == (200, 32, 32, 3)
    assert data.concept.shape == (100, 32, 32, 3)
    assert data.random.shape == (1000, 32, 32, 3)
    assert data.train_texture.shape == (1000,)
    assert data.test_texture.shape == (200,)


def test_all_images_uint8(data: SyntheticDataset) -> None:
    for images in (*data.train.values(), *data.test.values(), data.concept, data.random):
        assert images.dtype == np.uint8


def test_same_seed_same_bytes(data: SyntheticDataset) -> None:
    again = make_synthetic(seed=0)
    for split in ("train", "test"):
        for name in ("positive", "negative"):
            assert getattr(again, split)[name].tobytes() == getattr(data, split)[name].tobytes()
    assert again.concept.tobytes() == data.concept.tobytes()
    assert again.random.tobytes() == data.random.tobytes()
    assert again.train_texture.tobytes() == data.train_texture.tobytes()


def test_other_seed_other_images(data: SyntheticDataset) -> None:
    other = make_synthetic(seed=1, n_train_per_class=10, n_test_per_class=10)
    assert not np.array_equal(other.concept, data.concept)
    assert not np.array_equal(other.random, data.random)


def test_generator_seed_accepted() -> None:
    first = make_synthetic(np.random.default_rng(5), 4, 4, 4, 4)
    second = make_synthetic(np.random.default_rng(5), 4, 4, 4, 4)
    assert first.random.tobytes() == second.random.tobytes()
    assert first.seed is None


def test_parts_drawn_independently(data: SyntheticDataset) -> None:
    smaller = make_synthetic(seed=0, n_concept=10, n_random=50)
    assert smaller.train["positive"].tobytes() == data.train["positive"].tobytes()
    assert smaller.test["negative"].tobytes() == data.test["negative"].tobytes()


def test_stripes_in_concept_images(data: SyntheticDataset) -> None:
    assert stripe_power(data.concept).min() > THRESHOLD


def test_stripes_in_textured_positives(data: SyntheticDataset) -> None:
    for images, textured in (
        (data.train["positive"], data.train_texture),
        (data.test["positive"], data.test_texture),
    ):
        assert stripe_power(images[textured]).min() > THRESHOLD
        assert stripe_power(images[~textured]).max() < THRESHOLD


def test_no_stripes_in_random_pool(data: SyntheticDataset) -> None:
    assert stripe_power(data.random).max() < THRESHOLD


def test_no_stripes_in_negatives(data: SyntheticDataset) -> None:
    assert stripe_power(data.train["negative"]).max() < THRESHOLD
    assert stripe_power(data.test["negative"]).max() < THRESHOLD


def test_texture_fraction_respected(data: SyntheticDataset) -> None:
    # 1000 Bernoulli(0.7) draws: the standard deviation of the mean is 0.0145.
    assert abs(data.train_texture.mean() - 0.7) < 4 * 0.0145
    none = make_synthetic(seed=0, n_train_per_class=50, n_test_per_class=5, texture_fraction=0)
    assert not none.train_texture.any()
    assert stripe_power(none.train["positive"]).max() < THRESHOLD


def test_positives_redder_than_negatives(data: SyntheticDataset) -> None:
    def red_minus_blue(images: np.ndarray) -> float:
        pixels = images.reshape(-1, 3).astype(np.float64)
        return float((pixels[:, 0] - pixels[:, 2]).mean())

    assert red_minus_blue(data.train["positive"]) > 30.0
    assert red_minus_blue(data.train["negative"]) < -30.0
    assert abs(red_minus_blue(data.random)) < 10.0


def test_no_tint_without_colour_cue() -> None:
    plain = make_synthetic(seed=0, n_train_per_class=300, n_test_per_class=5, tint=0.0)
    pixels = plain.train["negative"].reshape(-1, 3).astype(np.float64)
    assert abs((pixels[:, 0] - pixels[:, 2]).mean()) < 10.0


def test_arrays_labels(data: SyntheticDataset) -> None:
    images, labels = data.arrays("test")
    assert images.shape == (400, 32, 32, 3)
    assert labels.tolist() == [0] * 200 + [1] * 200
    np.testing.assert_array_equal(images[200:], data.test["positive"])
    assert data.class_names == ("negative", "positive")


def test_arrays_unknown_split(data: SyntheticDataset) -> None:
    with pytest.raises(InvalidArgumentError, match="split"):
        data.arrays("validation")


def test_other_image_size_and_period() -> None:
    small = make_synthetic(
        seed=2,
        n_train_per_class=20,
        n_test_per_class=5,
        n_concept=20,
        n_random=20,
        image_size=16,
        stripe_period=2,
    )
    assert small.concept.shape == (20, 16, 16, 3)
    assert stripe_power(small.concept, period=2).min() > THRESHOLD
    assert stripe_power(small.random, period=2).max() < THRESHOLD


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("n_train_per_class", 0),
        ("n_random", 2.5),
        ("image_size", 4),
        ("texture_fraction", 1.5),
        ("tint", -1.0),
        ("stripe_period", 1),
        ("stripe_period", 17),
        ("stripe_colour", (0, 0, 300)),
        ("seed", -3),
    ],
)
def test_invalid_arguments(argument: str, value: object) -> None:
    with pytest.raises(InvalidArgumentError, match=argument):
        make_synthetic(**{argument: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argument", "value"), [("seed", "0"), ("texture_fraction", "0.5"), ("tint", None)]
)
def test_argument_of_wrong_type(argument: str, value: object) -> None:
    with pytest.raises(InvalidTypeError, match=argument):
        make_synthetic(**{argument: value})  # type: ignore[arg-type]

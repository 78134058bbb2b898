"""Imbalanced training sets, seeds and study settings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cav.errors import InvalidArgumentError
from cav.experiments.config import StudyConfig, derive_seed
from cav.experiments.sampling import (
    imbalanced_training_set,
    n_kept,
    positive_share,
    subsample_indices,
)


@pytest.mark.parametrize(
    ("ratio", "expected"), [(1.0, 5000), (0.25, 1250), (0.05, 250), (0.01, 50)]
)
def test_n_kept_notebook_ratios(ratio, expected):
    assert n_kept(5000, ratio) == expected


def test_n_kept_at_least_one():
    assert n_kept(10, 0.01) == 1


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, math.nan, True, "0.5"])
def test_n_kept_rejects_bad_ratio(ratio):
    with pytest.raises(InvalidArgumentError, match="ratio"):
        n_kept(5000, ratio)


@pytest.mark.parametrize("ratio", [0.25, 0.05, 0.01])
def test_subsample_without_replacement(ratio):
    indices = subsample_indices(5000, ratio, seed=0)
    assert indices.size == n_kept(5000, ratio)
    assert np.unique(indices).size == indices.size
    assert indices.min() >= 0
    assert indices.max() < 5000


def test_subsample_same_seed_same_indices():
    np.testing.assert_array_equal(
        subsample_indices(5000, 0.05, 3), subsample_indices(5000, 0.05, 3)
    )


def test_subsample_other_seed_other_indices():
    assert not np.array_equal(subsample_indices(5000, 0.05, 3), subsample_indices(5000, 0.05, 4))


def test_subsample_ratio_one_keeps_all():
    np.testing.assert_array_equal(subsample_indices(7, 1.0, 0), np.arange(7))


@pytest.mark.parametrize(
    ("n_positive", "n_negative", "expected"),
    [(5000, 5000, 0.5), (1250, 5000, 0.2), (250, 5000, 250 / 5250), (50, 5000, 50 / 5050)],
)
def test_positive_share_values(n_positive, n_negative, expected):
    assert positive_share(n_positive, n_negative) == pytest.approx(expected, abs=1e-15)


def _images(n: int, value_seed: int) -> np.ndarray:
    rng = np.random.default_rng(value_seed)
    return rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)


def test_training_set_counts_and_labels():
    positives, negatives = _images(200, 0), _images(200, 1)
    result = imbalanced_training_set(positives, negatives, 0.25, seed=0)
    assert result.n_positive == 50
    assert result.n_negative == 200
    assert result.positive_share == pytest.approx(0.2, abs=1e-15)
    np.testing.assert_array_equal(result.y, np.repeat([1, 0], [50, 200]))


def test_training_set_keeps_chosen_images():
    positives, negatives = _images(200, 0), _images(200, 1)
    result = imbalanced_training_set(positives, negatives, 0.25, seed=0)
    restored = np.rint(result.x * 255).astype(np.uint8)
    np.testing.assert_array_equal(restored[:50], positives[result.positive_indices])
    np.testing.assert_array_equal(restored[50:], negatives)


def test_training_set_scaled_float32():
    result = imbalanced_training_set(_images(20, 0), _images(20, 1), 1.0, seed=0)
    assert result.x.dtype == np.float32
    assert result.x.min() >= 0.0
    assert result.x.max() <= 1.0


def test_training_set_rejects_shape_mismatch():
    with pytest.raises(InvalidArgumentError, match="same image shape"):
        imbalanced_training_set(_images(4, 0), np.zeros((4, 5, 5, 3), np.uint8), 1.0, seed=0)


def test_derive_seed_depends_on_keys():
    assert derive_seed(0, "shuffle", "0.25") != derive_seed(0, "shuffle", "0.05")


def test_derive_seed_is_stable():
    assert derive_seed(5, "init") == derive_seed(5, "init")


def test_config_resolves_cifar_defaults():
    config = StudyConfig().resolved()
    assert (config.positive, config.negative, config.concept) == ("ship", "bird", "sea")
    assert config.concept_set_size == config.random_set_size


def test_config_resolves_synthetic_defaults():
    config = StudyConfig(data="synthetic").resolved()
    assert config.concept == "texture"
    assert config.synthetic["train_per_class"] > 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("protocol", "notebook"),
        ("ratios", (0.5, 2.0)),
        ("ratios", ()),
        ("seeds", (-1,)),
        ("random_runs", 1),
        ("alpha", 1.0),
        ("epochs", 0),
        ("layers", (1, 18)),
        ("layers", ("relu9",)),
    ],
)
def test_config_rejects_bad_values(name, value):
    with pytest.raises(InvalidArgumentError, match=name):
        StudyConfig(**{name: value})


def test_cell_key_ignores_ratios_and_seeds():
    base = StudyConfig().cell_key()
    assert StudyConfig(ratios=(0.5,), seeds=(3, 4)).cell_key() == base


def test_cell_key_tracks_epochs():
    assert StudyConfig(epochs=1).cell_key() != StudyConfig().cell_key()


def test_config_round_trip():
    config = StudyConfig(data="synthetic", ratios=(1.0, 0.1), layers=(1, "relu3")).resolved()
    assert StudyConfig.from_dict(config.to_dict()) == config

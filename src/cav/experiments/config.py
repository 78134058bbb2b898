"""Settings of the class-imbalance study, with the defaults of each dataset."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from cav.errors import InvalidArgumentError
from cav.experiments.networks import LAYER_NAMES, NOTEBOOK_LAYERS
from cav.experiments.sampling import check_ratio

DATASETS = ("cifar", "synthetic")
PROTOCOLS = ("tcav", "cav-keras")
TESTS = ("calibrated", "ttest")
CAV_METHODS = ("logistic", "sgd", "perceptron", "mean_difference")

NOTEBOOK_RATIOS: tuple[float, ...] = (1.0, 0.25, 0.05, 0.01)
"""Fractions of the positive class kept in the cav-keras notebook."""

# Defaults that depend on the dataset. R = 20 random sets: with a single sigmoid unit the
# gradient has nearly one direction for all inputs of a class, so each random run scores
# close to 0 or 1 and the tests need many runs to separate a concept from chance (see
# docs/imbalance.md). Extra random sets cost little: the gradient pass is shared by all
# CAVs of a layer. docs/imbalance.md records the measured times.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar": {
        "positive": "ship",
        "negative": "bird",
        "concept": "sea",
        "random_runs": 20,
        "random_set_size": 100,
    },
    "synthetic": {
        "positive": "positive",
        "negative": "negative",
        "concept": "texture",
        "random_runs": 20,
        "random_set_size": 40,
        "train_per_class": 500,
        "test_per_class": 200,
        "concept_images": 100,
        "random_images": 1000,
    },
}


@dataclass(frozen=True)
class StudyConfig:
    """Settings of one class-imbalance study.

    ``None`` means "the default of the dataset" (see :data:`DATASET_DEFAULTS`);
    :meth:`resolved` fills those in.

    Attributes
    ----------
    data : {"cifar", "synthetic"}
        CIFAR-10 classes with a CIFAR-100 concept, or the embedded synthetic dataset.
    data_dir : str or None
        Folder or archive holding CIFAR-10 and CIFAR-100 (``data="cifar"`` only).
    positive, negative : str or int or None
        Positive (label 1, subsampled) and negative (label 0, kept whole) classes, by name
        or CIFAR-10 index.
    concept : str or int or None
        Concept class, by name or CIFAR-100 fine-label index.
    ratios : tuple of float
        Fractions of positive training images kept, each in (0, 1].
    seeds : tuple of int
        One study cell per (ratio, seed).
    layers : tuple of int or str
        Layers tested, by index into the 18 layers of the CNN or by name.
    epochs, batch_size, learning_rate
        Training of the CNN (Adam, binary cross-entropy).
    protocol : {"tcav", "cav-keras"}
        ``"tcav"``: random natural images as negatives, R runs, logit gradients on the test
        images, a statistical test. ``"cav-keras"``: the notebook's procedure, once per cell.
    random_runs : int or None
        R, the number of random counterexample sets (``"tcav"`` only).
    random_set_size : int or None
        Images per random set.
    concept_set_size : int or None
        Images in the concept set; ``None`` uses ``random_set_size`` so that concept and
        random sets are exchangeable under the null hypothesis.
    max_test_images : int or None
        Cap on the test images of each class that are scored; ``None`` scores all.
    test : {"calibrated", "ttest"}
        Statistical test of ``cav.run_tcav``.
    alpha : float
        Significance level after the Holm correction over the layers and classes of a cell.
    method : str
        CAV classifier for ``"tcav"`` (``"cav-keras"`` always uses the perceptron).
    gradient_batch_size : int
        Images per forward/backward pass when computing activations and gradients.
    cache_dir : str or None
        Folder for decoded CIFAR arrays and activations; ``None`` disables caching.
    synthetic : dict
        Sizes of the synthetic dataset (``train_per_class``, ``test_per_class``,
        ``concept_images``, ``random_images``), filled by :meth:`resolved`.
    """

    data: str = "cifar"
    data_dir: str | None = None
    positive: str | int | None = None
    negative: str | int | None = None
    concept: str | int | None = None
    ratios: tuple[float, ...] = NOTEBOOK_RATIOS
    seeds: tuple[int, ...] = (0,)
    layers: tuple[int | str, ...] = NOTEBOOK_LAYERS
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-3
    protocol: str = "tcav"
    random_runs: int | None = None
    random_set_size: int | None = None
    concept_set_size: int | None = None
    max_test_images: int | None = None
    test: str = "calibrated"
    alpha: float = 0.05
    method: str = "logistic"
    gradient_batch_size: int = 64
    cache_dir: str | None = None
    synthetic: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("data", self.data, DATASETS)
        _check_choice("protocol", self.protocol, PROTOCOLS)
        _check_choice("test", self.test, TESTS)
        _check_choice("method", self.method, CAV_METHODS)

        if not self.ratios:
            raise InvalidArgumentError("ratios is empty; give at least one ratio in (0, 1]")
        try:
            ratios = tuple(check_ratio(r) for r in self.ratios)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"ratios: {exc}") from None
        if len(set(ratios)) != len(ratios):
            raise InvalidArgumentError(f"ratios must be distinct, got {self.ratios!r}")
        object.__setattr__(self, "ratios", ratios)

        if not self.seeds:
            raise InvalidArgumentError("seeds is empty; give at least one seed")
        seeds = tuple(_check_int("seeds", s, minimum=0) for s in self.seeds)
        if len(set(seeds)) != len(seeds):
            raise InvalidArgumentError(f"seeds must be distinct, got {self.seeds!r}")
        object.__setattr__(self, "seeds", seeds)

        if not self.layers:
            raise InvalidArgumentError("layers is empty; give at least one layer")
        for layer in self.layers:
            _check_layer(layer)

        for name in ("epochs", "batch_size", "gradient_batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("random_set_size", "concept_set_size", "max_test_images"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=2)
        if self.random_runs is not None:
            _check_int("random_runs", self.random_runs, minimum=2)
        if not (0.0 < float(self.alpha) < 1.0):
            raise InvalidArgumentError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InvalidArgumentError(
                f"learning_rate must be a positive number, got {self.learning_rate!r}"
            )

    def resolved(self) -> StudyConfig:
        """Return a copy with every ``None`` default replaced by the dataset's default."""
        defaults = DATASET_DEFAULTS[self.data]
        changes: dict[str, Any] = {}
        for name in ("positive", "negative", "concept", "random_runs", "random_set_size"):
            if getattr(self, name) is None:
                changes[name] = defaults[name]
        set_size = changes.get("random_set_size", self.random_set_size)
        if self.concept_set_size is None:
            changes["concept_set_size"] = set_size
        if self.data == "synthetic":
            sizes = {
                key: defaults[key]
                for key in ("train_per_class", "test_per_class", "concept_images", "random_images")
            }
            sizes.update(self.synthetic)
            changes["synthetic"] = sizes
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-compatible values (tuples become lists)."""
        values = asdict(self)
        for item in fields(self):
            if isinstance(values[item.name], tuple):
                values[item.name] = list(values[item.name])
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StudyConfig:
        """Rebuild a configuration written by :meth:`to_dict`."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidArgumentError(f"unknown study settings {unknown}; known: {sorted(known)}")
        converted: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value for key, value in values.items()
        }
        return cls(**converted)

    def cell_key(self) -> str:
        """Hash the settings that change a cell's result (not ratios, seeds or paths).

        A finished cell is reused by ``--resume`` only when this key matches.
        """
        values = self.resolved().to_dict()
        for name in ("ratios", "seeds", "cache_dir", "data_dir"):
            values.pop(name)
        text = json.dumps(values, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def derive_seed(seed: int, *keys: str) -> int:
    """Derive an independent 32-bit seed from a study seed and text keys.

    The derived seed depends on the keys' text (for example ``"shuffle"`` and the ratio),
    never on the position of a cell in the study, so adding a ratio leaves the other
    cells unchanged.
    """
    entropy = [int(seed)] + [
        int.from_bytes(hashlib.sha256(k.encode()).digest()[:4], "big") for k in keys
    ]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        choices = ", ".join(repr(item) for item in allowed)
        raise InvalidArgumentError(f"{name}={value!r} is not supported; use one of {choices}")


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidArgumentError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_layer(layer: object) -> None:
    """Raise unless ``layer`` is an index or a name of a layer of the study CNN."""
    if isinstance(layer, int | np.integer) and not isinstance(layer, bool):
        if 0 <= layer < len(LAYER_NAMES):
            return
        raise InvalidArgumentError(
            f"layers: index {layer} is out of range; the CNN has layers 0 to {len(LAYER_NAMES) - 1}"
        )
    if layer not in LAYER_NAMES:
        raise InvalidArgumentError(
            f"layers: {layer!r} is not a layer of the CNN; use an index 0 to "
            f"{len(LAYER_NAMES) - 1} or one of {', '.join(LAYER_NAMES)}"
        )

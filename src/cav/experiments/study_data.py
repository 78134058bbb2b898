"""Images of the class-imbalance study: two classes, a concept and a random pool."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cav.errors import InvalidArgumentError
from cav.experiments.config import StudyConfig, derive_seed

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "CAV_DATA_DIR"
"""Environment variable read when no data folder is given."""


@dataclass(frozen=True)
class StudyData:
    """The uint8 NHWC images of one study.

    Attributes
    ----------
    positive, negative, concept : str
        Class names (e.g. ``"ship"``, ``"bird"``, ``"sea"``).
    train_positive, train_negative : numpy.ndarray of shape (n, h, w, c), uint8
        Training images of each class before subsampling.
    test_positive, test_negative : numpy.ndarray of shape (m, h, w, c), uint8
        Held-out images of each class: the metrics and the TCAV scores use them.
    concept_images : numpy.ndarray of shape (k, h, w, c), uint8
        Every available image of the concept.
    random_pool : numpy.ndarray of shape (p, h, w, c), uint8
        Natural images of other classes, from which the random sets are drawn.
    source : str
        Where the images came from, for the log and the report.
    """

    positive: str
    negative: str
    concept: str
    train_positive: np.ndarray
    train_negative: np.ndarray
    test_positive: np.ndarray
    test_negative: np.ndarray
    concept_images: np.ndarray
    random_pool: np.ndarray
    source: str

    @property
    def class_names(self) -> dict[int, str]:
        """Target index to class name: 1 is the positive class, 0 the negative class."""
        return {1: self.positive, 0: self.negative}


def check_study_data(data: StudyData) -> None:
    """Raise unless every image set of the study has at least 2 images of one shape.

    Raises
    ------
    InvalidArgumentError
        Naming the set, its class and its count, or the two differing image shapes.
    """
    sets = {
        f"training images of class {data.positive!r}": data.train_positive,
        f"training images of class {data.negative!r}": data.train_negative,
        f"test images of class {data.positive!r}": data.test_positive,
        f"test images of class {data.negative!r}": data.test_negative,
        f"images of concept {data.concept!r}": data.concept_images,
        "images of the random pool": data.random_pool,
    }
    first_name, first = next(iter(sets.items()))
    for name, images in sets.items():
        if len(images) < 2:
            raise InvalidArgumentError(f"found {len(images)} {name}; at least 2 are needed")
        if images.shape[1:] != first.shape[1:]:
            raise InvalidArgumentError(
                f"the {name} have shape {images.shape[1:]}, but the {first_name} have shape "
                f"{first.shape[1:]}; every image set of the study must share one image shape"
            )


def load_study_data(config: StudyConfig) -> StudyData:
    """Load the images that ``config`` names (resolved defaults are applied first)."""
    config = config.resolved()
    start = time.perf_counter()
    data = _load_synthetic(config) if config.data == "synthetic" else _load_cifar(config)
    logger.info(
        "loaded %s in %.1f s: %d/%d train, %d/%d test images of %s/%s, %d %s images, "
        "random pool of %d",
        data.source,
        time.perf_counter() - start,
        len(data.train_positive),
        len(data.train_negative),
        len(data.test_positive),
        len(data.test_negative),
        data.positive,
        data.negative,
        len(data.concept_images),
        data.concept,
        len(data.random_pool),
    )
    return data


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """Return ``data_dir``, else the path in ``$CAV_DATA_DIR``, else ``None``."""
    if data_dir is not None:
        return Path(data_dir)
    from_env = os.environ.get(DATA_DIR_ENV)
    return Path(from_env) if from_env else None


def _load_synthetic(config: StudyConfig) -> StudyData:
    from cav.data import make_synthetic

    for name, value in (("positive", config.positive), ("negative", config.negative)):
        if value not in ("positive", "negative"):
            raise InvalidArgumentError(
                f"{name}={value!r} does not exist in the synthetic dataset; its classes are "
                "'positive' and 'negative'"
            )
    if config.positive == config.negative:
        raise InvalidArgumentError("positive and negative must be different classes")
    if config.concept != "texture":
        raise InvalidArgumentError(
            f"concept={config.concept!r} does not exist in the synthetic dataset; its concept "
            "is 'texture'"
        )
    sizes = config.synthetic
    dataset = make_synthetic(
        seed=derive_seed(0, "synthetic-data"),
        n_train_per_class=sizes["train_per_class"],
        n_test_per_class=sizes["test_per_class"],
        n_concept=sizes["concept_images"],
        n_random=sizes["random_images"],
    )
    positive, negative = str(config.positive), str(config.negative)
    return StudyData(
        positive=positive,
        negative=negative,
        concept="texture",
        train_positive=dataset.train[positive],
        train_negative=dataset.train[negative],
        test_positive=dataset.test[positive],
        test_negative=dataset.test[negative],
        concept_images=dataset.concept,
        random_pool=dataset.random,
        source="the synthetic dataset (cav.data.synthetic)",
    )


def _load_cifar(config: StudyConfig) -> StudyData:
    from cav.data import load_classes, resolve_class

    data_dir = resolve_data_dir(config.data_dir)
    logger.info("reading CIFAR from %s", data_dir if data_dir else "the default locations")
    _, positive = resolve_class("cifar10", _class_of(config.positive))
    _, negative = resolve_class("cifar10", _class_of(config.negative))
    if positive == negative:
        raise InvalidArgumentError(
            f"positive and negative must be different classes, both are {positive!r}"
        )
    _, concept = resolve_class("cifar100", _class_of(config.concept))
    cache_dir = config.cache_dir

    train = load_classes("cifar10", [positive, negative], "train", data_dir, cache_dir=cache_dir)
    test = load_classes("cifar10", [positive, negative], "test", data_dir, cache_dir=cache_dir)
    concept_images = load_classes("cifar100", [concept], "train", data_dir, cache_dir=cache_dir)
    random_pool = _cifar100_random_pool(config, concept, data_dir)
    return StudyData(
        positive=positive,
        negative=negative,
        concept=concept,
        train_positive=train[positive],
        train_negative=train[negative],
        test_positive=test[positive],
        test_negative=test[negative],
        concept_images=concept_images[concept],
        random_pool=random_pool,
        source="CIFAR-10 and CIFAR-100",
    )


def _cifar100_random_pool(config: StudyConfig, concept: str, data_dir: Path | None) -> np.ndarray:
    """Load the random pool: CIFAR-100 train images of every class but the concept."""
    from cav.data import class_names, load_classes

    others = [name for name in class_names("cifar100") if name != concept]
    images = load_classes("cifar100", others, "train", data_dir, cache_dir=config.cache_dir)
    return np.concatenate([images[name] for name in others])


def _class_of(value: str | int | None) -> str | int:
    # StudyConfig.resolved() fills every class, so None here is a programming error.
    if value is None:
        raise InvalidArgumentError("a class is missing; call StudyConfig.resolved() first")
    return value

"""CIFAR class names in label order, and lookup of a class by name or index."""

from __future__ import annotations

import difflib
import numbers
from typing import Literal

from cav.errors import InvalidArgumentError, InvalidTypeError

DatasetName = Literal["cifar10", "cifar100"]
Split = Literal["train", "test"]

DATASETS: tuple[DatasetName, ...] = ("cifar10", "cifar100")
SPLITS: tuple[Split, ...] = ("train", "test")

#: CIFAR-10 label names; position i is label i.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: CIFAR-100 fine label names; position i is label i. The official order is alphabetical.
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
    "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower",
    "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit",
    "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower",
    "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train",
    "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

_CLASSES: dict[DatasetName, tuple[str, ...]] = {
    "cifar10": CIFAR10_CLASSES,
    "cifar100": CIFAR100_CLASSES,
}

#: Display names, for messages.
DATASET_TITLES: dict[DatasetName, str] = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def normalize_dataset(dataset: str) -> DatasetName:
    """Return the canonical dataset name for spellings such as ``"CIFAR-10"`` or ``"cifar_100"``.

    Raises
    ------
    InvalidTypeError
        If `dataset` is not a string.
    InvalidArgumentError
        If `dataset` names neither CIFAR-10 nor CIFAR-100.
    """
    if not isinstance(dataset, str):
        raise InvalidTypeError(
            f"dataset must be a string such as 'cifar10', got {type(dataset).__name__}"
        )
    key = dataset.lower().replace("-", "").replace("_", "")
    if key == "cifar10":
        return "cifar10"
    if key == "cifar100":
        return "cifar100"
    raise InvalidArgumentError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")


def normalize_split(split: str) -> Split:
    """Return `split` checked against ``"train"`` and ``"test"``.

    Raises
    ------
    InvalidArgumentError
        If `split` is neither ``"train"`` nor ``"test"``.
    """
    if split == "train":
        return "train"
    if split == "test":
        return "test"
    raise InvalidArgumentError(f"split must be one of {list(SPLITS)}, got {split!r}")


def class_names(dataset: str) -> tuple[str, ...]:
    """Return the class names of `dataset` in label order.

    Parameters
    ----------
    dataset : str
        ``"cifar10"`` or ``"cifar100"`` (CIFAR-100 fine labels).

    Returns
    -------
    tuple of str
        10 or 100 names; position ``i`` is label ``i``.
    """
    return _CLASSES[normalize_dataset(dataset)]


def resolve_class(dataset: str, name_or_index: str | int) -> tuple[int, str]:
    """Return the label index and the official name of one class.

    Names match case-insensitively, with spaces and hyphens read as underscores
    (``"Aquarium fish"`` is ``aquarium_fish``). A string of digits is read as an index.

    Parameters
    ----------
    dataset : str
        ``"cifar10"`` or ``"cifar100"``.
    name_or_index : str or int
        Class name, or label index in ``[0, n_classes)``.

    Returns
    -------
    tuple of (int, str)
        The label index and the official class name.

    Raises
    ------
    InvalidArgumentError
        If the index is out of range or the name is unknown; the message lists close names.
    InvalidTypeError
        If `name_or_index` is neither a string nor an integer.
    """
    names = class_names(dataset)
    title = DATASET_TITLES[normalize_dataset(dataset)]
    if isinstance(name_or_index, str) and name_or_index.strip().isdigit():
        name_or_index = int(name_or_index.strip())

    if isinstance(name_or_index, numbers.Integral) and not isinstance(name_or_index, bool):
        index = int(name_or_index)
        if not 0 <= index < len(names):
            raise InvalidArgumentError(
                f"class index {index} is out of range for {title}; "
                f"allowed indices are 0 to {len(names) - 1}"
            )
        return index, names[index]

    if not isinstance(name_or_index, str):
        raise InvalidTypeError(
            f"class must be a name (str) or a label index (int), "
            f"got {type(name_or_index).__name__}: {name_or_index!r}"
        )
    key = name_or_index.strip().lower().replace(" ", "_").replace("-", "_")
    if key in names:
        return names.index(key), key

    close = difflib.get_close_matches(key, names, n=5, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise InvalidArgumentError(
        f"unknown {title} class {name_or_index!r}{hint}. "
        f"Valid names are listed by cav.data.class_names({normalize_dataset(dataset)!r})"
    )

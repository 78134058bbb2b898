"""Images and model weights of the benchmark workload W1.

W1 is the TCAV experiment of the class-imbalance study at full size: the study's CNN,
CIFAR-10 ship test images as targets, CIFAR-100 sea training images as the concept and
random sets of other CIFAR-100 training images. :func:`prepare_workload` loads and decodes
the images once, trains the Keras CNN briefly, and writes everything to one ``.npz`` file
that every timed subprocess reads, so no timed variant pays for JPEG decoding or training.
"""

from __future__ import annotations

import io
import logging
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

TARGET_CLASS = "ship"
CONCEPT_CLASS = "sea"
CIFAR10_ARCHIVE = "cifar-10-jpg.tar.gz"
CIFAR100_ARCHIVE = "cifar-100-jpg.tar.gz"
IMAGE_SHAPE = (32, 32, 3)


@dataclass(frozen=True)
class WorkloadSpec:
    """Size and sources of one workload.

    Attributes
    ----------
    targets : int
        Number of target (ship) images. CIFAR-10 has 1,000 ship test images; larger
        numbers repeat them in order.
    random_runs : int
        Number of random sets R: the experiment has R concept runs and R null runs.
    set_size : int
        Images in the concept set and in each random set.
    seed : int
        Seed of the image draws, of the CNN's initial weights and of its training.
    train_images : int
        Images of the briefly trained CNN (half ship, half other CIFAR-10 classes, from
        the training split); 0 keeps the random initial weights.
    train_epochs : int
        Training epochs of the CNN.
    data_dir : str
        Folder with the two CIFAR JPEG archives.
    synthetic : bool
        Use uniform-noise images instead of CIFAR (no archives needed).
    """

    targets: int = 1000
    random_runs: int = 20
    set_size: int = 200
    seed: int = 0
    train_images: int = 2000
    train_epochs: int = 1
    data_dir: str = ""
    synthetic: bool = False


@dataclass(frozen=True)
class Workload:
    """The images of a workload as float32 NHWC arrays in [0, 1], and the CNN's weights.

    Attributes
    ----------
    targets : numpy.ndarray of shape (n, 32, 32, 3)
        Target images.
    concept : numpy.ndarray of shape (set_size, 32, 32, 3)
        Concept images.
    random_sets : list of numpy.ndarray of shape (set_size, 32, 32, 3)
        One array per random set.
    keras_weights : list of numpy.ndarray
        ``keras_model.get_weights()`` of the CNN.
    """

    targets: np.ndarray
    concept: np.ndarray
    random_sets: list[np.ndarray]
    keras_weights: list[np.ndarray]

    @property
    def n_images(self) -> int:
        """Number of concept and random images together."""
        return len(self.concept) + sum(len(images) for images in self.random_sets)


def prepare_workload(spec: WorkloadSpec, path: Path) -> dict[str, float]:
    """Load the images, train the CNN and write the workload to ``path`` (an ``.npz`` file).

    Returns
    -------
    dict of str to float
        Seconds spent loading images and training, for the log.
    """
    start = time.perf_counter()
    images = _synthetic_images(spec) if spec.synthetic else _cifar_images(spec)
    loaded = time.perf_counter()
    weights = _train_weights(spec, images.pop("train_x"), images.pop("train_y"))
    trained = time.perf_counter()
    arrays = {f"weight_{i}": weight for i, weight in enumerate(weights)}
    np.savez(path, **images, **arrays)
    model_step = "training" if spec.train_images > 0 else "model built (not trained)"
    logger.info(
        "workload written to %s: images %.1f s, %s %.1f s",
        path,
        loaded - start,
        model_step,
        trained - loaded,
    )
    return {"load_images_s": loaded - start, "train_model_s": trained - loaded}


def load_workload(path: Path) -> Workload:
    """Read a workload written by :func:`prepare_workload`."""
    with np.load(path) as arrays:
        n_weights = sum(1 for name in arrays.files if name.startswith("weight_"))
        weights = [arrays[f"weight_{i}"] for i in range(n_weights)]
        targets = _to_unit_float(arrays["targets"])
        concept = _to_unit_float(arrays["concept"])
        random_sets = [_to_unit_float(images) for images in arrays["random"]]
    return Workload(targets, concept, random_sets, weights)


def spec_as_dict(spec: WorkloadSpec) -> dict[str, Any]:
    """Return the spec as a JSON-ready dict."""
    return asdict(spec)


def _to_unit_float(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images, dtype=np.float32) / np.float32(255.0)


def _cifar_images(spec: WorkloadSpec) -> dict[str, np.ndarray]:
    data_dir = Path(spec.data_dir)
    rng = np.random.default_rng(spec.seed)
    cifar10 = data_dir / CIFAR10_ARCHIVE
    cifar100 = data_dir / CIFAR100_ARCHIVE
    for archive in (cifar10, cifar100):
        if not archive.is_file():
            raise FileNotFoundError(
                f"CIFAR archive {archive} not found; pass --data-dir with the folder that "
                f"holds {CIFAR10_ARCHIVE} and {CIFAR100_ARCHIVE}, or use --synthetic"
            )

    names10 = _member_names(cifar10)
    ship_test = _class_members(names10, "test", TARGET_CLASS)
    targets = [ship_test[i % len(ship_test)] for i in range(spec.targets)]
    ship_train = _class_members(names10, "train", TARGET_CLASS)
    other_train = [
        name
        for name in names10
        if _split_of(name) == "train" and _class_of(name) not in ("", TARGET_CLASS)
    ]
    n_train = spec.train_images // 2
    train_positive = _draw(rng, ship_train, n_train)
    train_negative = _draw(rng, other_train, n_train)

    names100 = _member_names(cifar100)
    sea = _class_members(names100, "train", CONCEPT_CLASS)
    others = [
        name
        for name in names100
        if _split_of(name) == "train" and _class_of(name) not in ("", CONCEPT_CLASS)
    ]
    concept = _draw(rng, sea, spec.set_size)
    random_members = _draw(rng, others, spec.random_runs * spec.set_size)

    decoded10 = _decode_members(cifar10, set(targets) | set(train_positive) | set(train_negative))
    decoded100 = _decode_members(cifar100, set(concept) | set(random_members))
    random = np.stack([decoded100[name] for name in random_members])
    train_members = train_positive + train_negative
    train_x = np.zeros((len(train_members), *IMAGE_SHAPE), np.uint8)
    for row, name in enumerate(train_members):
        train_x[row] = decoded10[name]
    train_y = np.concatenate([np.ones(len(train_positive)), np.zeros(len(train_negative))])
    return {
        "targets": np.stack([decoded10[name] for name in targets]),
        "concept": np.stack([decoded100[name] for name in concept]),
        "random": random.reshape(spec.random_runs, spec.set_size, *IMAGE_SHAPE),
        "train_x": train_x,
        "train_y": train_y,
    }


def _synthetic_images(spec: WorkloadSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed)

    def draw(*shape: int) -> np.ndarray:
        return rng.integers(0, 256, size=(*shape, *IMAGE_SHAPE), dtype=np.uint8)

    n_train = spec.train_images // 2 * 2
    return {
        "targets": draw(spec.targets),
        "concept": draw(spec.set_size),
        "random": draw(spec.random_runs, spec.set_size),
        "train_x": draw(n_train),
        "train_y": np.arange(n_train) % 2,
    }


def _member_names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return [member.name for member in tar if member.isfile()]


def _split_of(name: str) -> str:
    parts = name.split("/")
    return parts[-3] if len(parts) >= 3 else ""


def _class_of(name: str) -> str:
    parts = name.split("/")
    return parts[-2] if len(parts) >= 3 else ""


def _class_members(names: list[str], split: str, class_name: str) -> list[str]:
    members = sorted(
        name for name in names if _split_of(name) == split and _class_of(name) == class_name
    )
    if not members:
        raise FileNotFoundError(f"no {split} images of class {class_name!r} in the archive")
    return members


def _draw(rng: np.random.Generator, names: list[str], count: int) -> list[str]:
    if count > len(names):
        raise ValueError(f"{count} images requested from a pool of {len(names)}")
    chosen = rng.choice(len(names), size=count, replace=False)
    return [names[i] for i in chosen]


def _decode_members(archive: Path, requested: set[str]) -> dict[str, np.ndarray]:
    from PIL import Image

    decoded: dict[str, np.ndarray] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name not in requested:
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            with Image.open(io.BytesIO(handle.read())) as image:
                decoded[member.name] = np.asarray(image.convert("RGB"), dtype=np.uint8)
    missing = requested - decoded.keys()
    if missing:
        raise FileNotFoundError(f"{len(missing)} images not found in {archive}")
    return decoded


def _train_weights(spec: WorkloadSpec, train_x: np.ndarray, train_y: np.ndarray) -> list[Any]:
    from cav.experiments.networks import build_keras_cnn, train_keras_cnn

    model = build_keras_cnn(IMAGE_SHAPE, seed=spec.seed)
    if spec.train_images > 0 and spec.train_epochs > 0:
        log = train_keras_cnn(
            model,
            _to_unit_float(train_x),
            train_y,
            epochs=spec.train_epochs,
            seed=spec.seed,
        )
        logger.info("CNN trained: accuracy per epoch %s", log.accuracy)
    return [np.asarray(weight) for weight in model.get_weights()]

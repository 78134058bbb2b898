"""Datasets: CIFAR-10/100 readers, image folders, download, noise and synthetic images.

Every loader returns uint8 images in NHWC layout on the 0-255 scale; scaling them the
way a model expects is left to the caller.
"""

from __future__ import annotations

from cav.data.cifar import load_cifar, load_classes
from cav.data.classes import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    class_names,
    resolve_class,
)
from cav.data.download import ChecksumMismatchError, DownloadError, download, file_md5
from cav.data.noise import noise_like
from cav.data.readers import load_image_folder
from cav.data.sources import DataSource, default_data_dirs, locate
from cav.data.synthetic import SyntheticDataset, make_synthetic

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "ChecksumMismatchError",
    "DataSource",
    "DownloadError",
    "SyntheticDataset",
    "class_names",
    "default_data_dirs",
    "download",
    "file_md5",
    "load_cifar",
    "load_classes",
    "load_image_folder",
    "locate",
    "make_synthetic",
    "noise_like",
    "resolve_class",
]

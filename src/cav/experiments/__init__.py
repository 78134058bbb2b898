"""The class-imbalance study of the cav-keras notebook, run by ``cav imbalance``.

- :mod:`cav.experiments.networks`: the notebook's CNN in Keras 3 and PyTorch, weight copy.
- :mod:`cav.experiments.sampling`: training sets that keep a fraction of one class.
- :mod:`cav.experiments.config`: the study's settings and their defaults.
- :mod:`cav.experiments.study_data`: the images (CIFAR or synthetic).
- :mod:`cav.experiments.protocols`: scoring with the TCAV or the cav-keras protocol.
- :mod:`cav.experiments.imbalance`: the runner (:func:`run_study`, :func:`run_cell`).
- :mod:`cav.experiments.results`, :mod:`cav.experiments.report`: results and output files.
"""

from __future__ import annotations

from cav.experiments.config import StudyConfig
from cav.experiments.imbalance import run_cell, run_study
from cav.experiments.networks import (
    build_keras_cnn,
    build_torch_cnn,
    copy_keras_weights_to_torch,
    train_keras_cnn,
)
from cav.experiments.report import plot_study, summary_markdown, summary_table, write_outputs
from cav.experiments.results import CellResult, StudyResult

__all__ = [
    "CellResult",
    "StudyConfig",
    "StudyResult",
    "build_keras_cnn",
    "build_torch_cnn",
    "copy_keras_weights_to_torch",
    "plot_study",
    "run_cell",
    "run_study",
    "summary_markdown",
    "summary_table",
    "train_keras_cnn",
    "write_outputs",
]

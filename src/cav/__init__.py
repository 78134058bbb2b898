"""Concept Activation Vectors and TCAV for PyTorch and Keras models.

The public names are loaded on first access, so ``import cav`` needs neither PyTorch
nor Keras, and stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cav.errors import (
    CAVError,
    CAVWarning,
    DataNotFoundError,
    InvalidArgumentError,
    InvalidTypeError,
    LayerNotFoundError,
    MissingDependencyError,
    NonFiniteError,
    OutputNotFoundError,
    ValueRangeWarning,
    WeakCAVWarning,
    ZeroGradientWarning,
)

if TYPE_CHECKING:
    from cav.core.cav import CAV, fit_cav, fit_cavs
    from cav.core.scores import (
        directional_derivatives,
        magnitude_score,
        tcav_score,
        zero_fraction,
    )
    from cav.models import ModelAdapter, wrap
    from cav.pipeline.run import run_tcav
    from cav.report.result import TCAVResult

__version__ = "0.1.0"

_LAZY_NAMES = {
    "CAV": "cav.core.cav",
    "fit_cav": "cav.core.cav",
    "fit_cavs": "cav.core.cav",
    "directional_derivatives": "cav.core.scores",
    "magnitude_score": "cav.core.scores",
    "tcav_score": "cav.core.scores",
    "zero_fraction": "cav.core.scores",
    "ModelAdapter": "cav.models",
    "wrap": "cav.models",
    "run_tcav": "cav.pipeline.run",
    "TCAVResult": "cav.report.result",
}

__all__ = [
    "CAV",
    "CAVError",
    "CAVWarning",
    "DataNotFoundError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "LayerNotFoundError",
    "MissingDependencyError",
    "ModelAdapter",
    "NonFiniteError",
    "OutputNotFoundError",
    "TCAVResult",
    "ValueRangeWarning",
    "WeakCAVWarning",
    "ZeroGradientWarning",
    "directional_derivatives",
    "fit_cav",
    "fit_cavs",
    "magnitude_score",
    "run_tcav",
    "tcav_score",
    "wrap",
    "zero_fraction",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'cav' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

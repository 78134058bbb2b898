"""Exceptions and warnings raised by ``cav``.

Every error derives from :class:`CAVError`, and each subclass also derives from the
built-in exception a caller would expect (``ValueError``, ``TypeError``, ``ImportError``),
so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class CAVError(Exception):
    """Base class of every error raised by ``cav``."""


class InvalidArgumentError(CAVError, ValueError):
    """An argument has an invalid value, shape or range."""


class InvalidTypeError(CAVError, TypeError):
    """An argument has a type that ``cav`` cannot use."""


class LayerNotFoundError(InvalidArgumentError):
    """A layer name or index does not exist in the model."""


class NonFiniteError(InvalidArgumentError):
    """Inputs, activations or gradients contain NaN or infinite values."""


class OutputNotFoundError(InvalidArgumentError):
    """The requested model output (for example the logit) cannot be located."""


class MissingDependencyError(CAVError, ImportError):
    """An optional framework needed for the request is not installed."""


class DataNotFoundError(CAVError, FileNotFoundError):
    """A dataset file or folder is missing."""


class CAVWarning(UserWarning):
    """Base class of the warnings emitted by ``cav``."""


class WeakCAVWarning(CAVWarning):
    """A CAV separates concept and negatives no better than chance on held-out data."""


class ZeroGradientWarning(CAVWarning):
    """Every directional derivative is exactly zero, so the TCAV score is undefined."""


class ValueRangeWarning(CAVWarning):
    """Two image sets that should share preprocessing lie on different value ranges."""

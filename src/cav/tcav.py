"""The cav-keras ``TCAV`` class, rebuilt on :func:`cav.wrap` and :func:`cav.fit_cav`.

The cav-keras package (P. Xenopoulos) and its class-imbalance notebook call::

    tcav_obj = TCAV()
    tcav_obj.set_model(model)
    tcav_obj.split_model(bottleneck=1, conv_layer=True)
    tcav_obj.train_cav(x_concept)
    tcav_obj.calculate_sensitivity(x_train, y_train)
    tcav_obj.print_sensitivity()

and this module runs that code unchanged, with the cav-keras protocol:

1. The counterexamples are uniform noise with the shape of the concept images,
   ``rint(U * 255)`` with ``U ~ Uniform[0, 1)``, as many as there are concept images.
   The concept images are used as given (the notebook passes them unscaled, 0-255).
2. The CAV is the normal of a perceptron fitted on all activations, with no held-out
   split (``fit_cav(..., method="perceptron", holdout=0)``).
3. The sensitivity of example ``i`` is ``S_i = grad_a [-BCE(y_i, p(a))] . v``: the
   gradient at the bottleneck of the negated binary cross-entropy against the example's
   own label, on Keras' clipped probabilities, projected on the unit CAV ``v``. A
   positive value means that moving toward the concept raises the probability of the
   example's own class. cav-keras negates the perceptron's coefficients and takes the
   gradient of the loss itself. The two negations cancel, and its coefficients differ
   from ``v`` only by a positive factor, so the signs agree.
4. The sensitivity of class ``k`` is the fraction of class-``k`` examples with
   ``S_i > 0``.

Unlike cav-keras, a class whose sensitivities are all exactly zero (a saturated sigmoid
makes the clipped loss flat) gets NaN instead of 0.0, because the fraction then carries
no information about the concept. :attr:`TCAV.zero_fraction` shows how many are zero.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np

from cav.core import scores
from cav.core.cav import CAV, fit_cav
from cav.data.noise import noise_like
from cav.errors import InvalidArgumentError, InvalidTypeError
from cav.models import ModelAdapter, wrap
from cav.models.base import as_index

logger = logging.getLogger(__name__)

__all__ = ["TCAV"]

_SEED_BOUND = 2**31 - 1
CONCEPT_NAME = "concept"
NEGATIVE_NAME = "uniform noise"


class TCAV:
    """Concept sensitivity of a classifier at one layer, with the cav-keras protocol.

    Parameters
    ----------
    model : keras.Model or torch.nn.Module, optional
        The classifier; it can also be given later with :meth:`set_model`.
    seed : int, optional
        Seed of a generator that draws the noise images and the perceptron's seed of
        every :meth:`train_cav` call without its own ``seed``, so a whole sequence of
        calls repeats. Without it those draws come from numpy's global random state
        (``np.random.seed`` makes them repeat), as cav-keras's did.

    Attributes
    ----------
    layer : str or None
        Name of the bottleneck layer chosen by :meth:`split_model`.
    cav : CAV or None
        The last CAV fitted by :meth:`train_cav`.
    counterexamples : numpy.ndarray or None
        The noise images of the last :meth:`train_cav` call, shape of ``x_concept``.
    sensitivity : numpy.ndarray of shape (n,) or None
        Per-example sensitivities of the last :meth:`calculate_sensitivity` call.
    y_labels : numpy.ndarray of shape (n,) or None
        The labels of that call.
    tcav_score : dict of int to float
        Sensitivity of each class: the fraction of its examples with ``S > 0``; NaN when
        all of its sensitivities are exactly zero, the CAV is undefined, or the class has
        no examples.
    zero_fraction : dict of int to float
        Fraction of each class's sensitivities that are exactly zero.
    """

    def __init__(self, model: Any = None, seed: int | None = None) -> None:
        self._adapter: ModelAdapter | None = None
        self._rng = np.random.default_rng(_check_seed(seed)) if seed is not None else None
        self.seed = seed
        self.layer: str | None = None
        self.cav: CAV | None = None
        self.counterexamples: np.ndarray | None = None
        self.sensitivity: np.ndarray | None = None
        self.y_labels: np.ndarray | None = None
        self.tcav_score: dict[int, float] = {}
        self.zero_fraction: dict[int, float] = {}
        if model is not None:
            self.set_model(model)

    @property
    def model(self) -> Any:
        """The classifier, or None before :meth:`set_model`."""
        return None if self._adapter is None else self._adapter.model

    @property
    def adapter(self) -> ModelAdapter:
        """The :class:`~cav.models.ModelAdapter` of the classifier."""
        if self._adapter is None:
            raise InvalidArgumentError("no model is set; call set_model(model) first")
        return self._adapter

    def set_model(self, model: Any) -> None:
        """Set the classifier, a Keras 3 model or a ``torch.nn.Module``."""
        self._adapter = wrap(model)
        self.layer = None
        self._reset_cav()

    def split_model(self, bottleneck: int | str, conv_layer: bool = True) -> None:
        """Choose the bottleneck layer whose activations the CAV is fitted on.

        Parameters
        ----------
        bottleneck : int or str
            Index into ``model.layers`` (Keras) or the children of an ``nn.Sequential``,
            or a layer name. The activations are that layer's outputs.
        conv_layer : bool
            Kept for cav-keras compatibility and unused: cav-keras flattened
            convolutional outputs, and the adapters flatten every layer's output anyway.
        """
        if not isinstance(conv_layer, bool | np.bool_):
            raise InvalidTypeError(f"conv_layer must be a bool, got {conv_layer!r}")
        self.layer = self.adapter.resolve_layer(bottleneck)
        self._reset_cav()
        logger.debug("bottleneck %r resolved to layer %r", bottleneck, self.layer)

    def train_cav(self, x_concept: Any, seed: int | None = None, batch_size: int = 64) -> CAV:
        """Fit the CAV of a concept against as many uniform-noise images.

        The noise images are ``rint(rng.random(x_concept.shape) * 255)`` and the
        perceptron's seed is ``rng.integers(2**31 - 1)``, drawn in that order from
        ``rng = numpy.random.default_rng(seed)``. Without ``seed``, ``rng`` is the
        generator of the constructor's seed, or, without that either, a generator seeded
        from numpy's global random state. The CAV is then
        ``fit_cav(concept_acts, noise_acts, method="perceptron", seed=that_seed,
        holdout=0.0, concept="concept", negative="uniform noise", layer=self.layer)``
        (the set names enter the seed of the perceptron).

        Parameters
        ----------
        x_concept : array, shape (n, ...)
            Concept images in the model's input layout, used as given.
        seed : int, optional
            Seed of this call alone.
        batch_size : int, default 64
            Images per forward pass.

        Returns
        -------
        CAV
            The fitted CAV, also stored as :attr:`cav`. Its ``direction`` points toward
            the concept; its ``accuracy`` is NaN because nothing is held out.
        """
        layer = self._require_layer()
        concept = np.asarray(x_concept)
        if concept.ndim < 1 or concept.shape[0] < 1:
            raise InvalidArgumentError(
                f"x_concept must hold at least one image, got shape {concept.shape}"
            )
        rng = self._generator(seed)
        noise = noise_like(concept, rng)
        fit_seed = int(rng.integers(_SEED_BOUND))

        concept_acts = self.adapter.activations(concept, layer, batch_size=batch_size)[layer]
        noise_acts = self.adapter.activations(noise, layer, batch_size=batch_size)[layer]
        self.cav = fit_cav(
            concept_acts,
            noise_acts,
            method="perceptron",
            seed=fit_seed,
            holdout=0.0,
            concept=CONCEPT_NAME,
            negative=NEGATIVE_NAME,
            layer=layer,
        )
        self.counterexamples = noise
        self._reset_sensitivity()
        return self.cav

    def calculate_sensitivity(self, x_train: Any, y_train: Any, batch_size: int = 64) -> np.ndarray:
        """Compute each example's sensitivity to the concept and each class's score.

        ``S_i = grad_a [y_i log q_i + (1 - y_i) log(1 - q_i)] . v`` at the bottleneck,
        with ``q_i`` the model's probability of class 1 clipped to ``[1e-7, 1 - 1e-7]``
        (the ``"loss"`` output of :meth:`cav.models.ModelAdapter.gradients`) and ``v`` the
        CAV direction. For a model with several softmax units the loss is ``log q_{y_i}``.

        Parameters
        ----------
        x_train : array, shape (n, ...)
            Inputs in the model's layout.
        y_train : sequence of int, shape (n,)
            Each input's class label.
        batch_size : int, default 64
            Inputs per forward and backward pass.

        Returns
        -------
        numpy.ndarray of shape (n,)
            The sensitivities, also stored as :attr:`sensitivity`; :attr:`tcav_score`
            and :attr:`zero_fraction` are updated.
        """
        layer = self._require_layer()
        if self.cav is None:
            raise InvalidArgumentError("no CAV is trained; call train_cav(x_concept) first")
        labels = np.asarray(y_train).reshape(-1)
        if labels.dtype.kind not in "iub" and not (
            labels.dtype.kind == "f" and np.all(labels == np.round(labels))
        ):
            raise InvalidArgumentError(
                f"y_train must hold integer class labels, got dtype {labels.dtype}"
            )
        labels = labels.astype(np.int64)
        # Each batch of gradients is projected and dropped, so memory keeps one batch of
        # gradients, not all of them (1.3 GB for 10,000 inputs at a 32x32x32 layer).
        batches = self.adapter.iter_gradients(
            x_train,
            layer,
            target=0,
            output="loss",
            labels=labels,
            batch_size=batch_size,
        )
        self.sensitivity = np.concatenate(
            [scores.directional_derivatives(batch[layer], self.cav) for batch in batches]
        )
        self.y_labels = labels
        self._score_classes(self.sensitivity, labels)
        return self.sensitivity

    def print_sensitivity(self) -> None:
        """Print each class's sensitivity as cav-keras does, from the highest class down.

        Each line reads ``The sensitivity of class 1 is  0.989`` (two spaces, as
        ``print("... is ", value)`` writes). A NaN score is followed by a line that
        explains why it is undefined.
        """
        sensitivity, labels = self.sensitivity, self.y_labels
        if sensitivity is None or labels is None:
            raise InvalidArgumentError(
                "no sensitivities yet; call calculate_sensitivity(x_train, y_train) first"
            )
        for label in sorted(self.tcav_score, reverse=True):
            score = self.tcav_score[label]
            print(f"The sensitivity of class {label} is ", str(float(score)), file=sys.stdout)
            if np.isnan(score):
                print(f"  ({self._nan_reason(label, sensitivity, labels)})", file=sys.stdout)

    # Helpers -------------------------------------------------------------------------

    def _require_layer(self) -> str:
        if self.layer is None:
            raise InvalidArgumentError(
                "no bottleneck layer is chosen; call split_model(bottleneck) first"
            )
        return self.layer

    def _generator(self, seed: int | None) -> np.random.Generator:
        if seed is not None:
            return np.random.default_rng(_check_seed(seed))
        if self._rng is not None:
            return self._rng
        # cav-keras drew its noise from numpy's global state, so np.random.seed(...) at
        # the top of a notebook made its runs repeat. A seed drawn from it keeps that.
        return np.random.default_rng(int(np.random.randint(_SEED_BOUND)))  # noqa: NPY002

    def _score_classes(self, sensitivity: np.ndarray, labels: np.ndarray) -> None:
        classes = set(np.unique(labels).tolist())
        if self.adapter.n_classes == 2:
            classes |= {0, 1}
        self.tcav_score = {}
        self.zero_fraction = {}
        for label in sorted(classes):
            values = sensitivity[labels == label]
            if values.size == 0:
                self.tcav_score[label] = float("nan")
                self.zero_fraction[label] = float("nan")
                continue
            self.tcav_score[label] = float(scores.tcav_score(values))
            self.zero_fraction[label] = float(scores.zero_fraction(values))

    def _nan_reason(self, label: int, sensitivity: np.ndarray, labels: np.ndarray) -> str:
        values = sensitivity[labels == label]
        if values.size == 0:
            return f"no example has label {label}"
        if self.cav is not None and self.cav.degenerate:
            return "the CAV is undefined: concept and noise activations are identical"
        return (
            f"all {values.size} sensitivities of class {label} are exactly 0: the loss "
            "gradient vanished, as it does when the sigmoid saturates, so the score is undefined"
        )

    def _reset_cav(self) -> None:
        self.cav = None
        self.counterexamples = None
        self._reset_sensitivity()

    def _reset_sensitivity(self) -> None:
        self.sensitivity = None
        self.y_labels = None
        self.tcav_score = {}
        self.zero_fraction = {}


def _check_seed(seed: int) -> int:
    value = as_index(seed, "seed")
    if value < 0:
        raise InvalidArgumentError(f"seed={value} is negative; use a non-negative integer")
    return value

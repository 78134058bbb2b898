"""``run_tcav``: concepts x random sets x layers x classes -> :class:`TCAVResult`.

The work is done in four steps, each over all layers at once:

1. activations: one forward pass over every image set (concepts and random sets);
2. CAVs: one :func:`cav.core.cav.fit_cavs` call per layer fits the concept runs and the
   null runs, sharing the inner products of the image sets;
3. derivatives: one gradient pass per target class over its inputs. Each batch of
   gradients is projected on the stacked directions of every CAV of the layer and then
   dropped, so memory holds only the (n_inputs, n_cavs) derivatives;
4. scores and statistics from the derivatives.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController

import cav
from cav._checks import check_choice
from cav.core.cav import CAV, FIT_REVISION, METHODS, fit_cavs
from cav.core.scores import directional_derivatives, magnitude_score, tcav_score, zero_fraction
from cav.core.stats import CORRECTIONS, STATISTICS, TESTS, TTEST_VARIANTS
from cav.errors import (
    InvalidArgumentError,
    InvalidTypeError,
    WeakCAVWarning,
    ZeroGradientWarning,
)
from cav.pipeline import sets as image_sets
from cav.pipeline.cache import DiskCache, cache_key, hash_array
from cav.report.result import TCAVResult
from cav.report.summary import RUN_COLUMNS, make_table, summarize_runs

logger = logging.getLogger(__name__)

OUTPUTS = ("logit", "probability", "loss")
_ADAPTER_METHODS = ("activations", "iter_gradients", "resolve_layer")

_Item = TypeVar("_Item")


def run_tcav(
    model: Any,
    inputs: Any,
    target: int | Sequence[int],
    concepts: Mapping[str, Any],
    *,
    random_sets: Sequence[Any] | Mapping[str, Any] | None = None,
    random_pool: Any = None,
    layers: str | int | Sequence[str | int],
    n_random: int = 10,
    random_set_size: int | None = None,
    method: str = "logistic",
    output: str = "logit",
    test: str = "calibrated",
    statistic: str = "cosine",
    ttest: str = "welch",
    correction: str = "holm",
    alpha: float = 0.05,
    labels: Any = None,
    seed: int | np.random.Generator = 0,
    holdout: float = 0.33,
    batch_size: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> TCAVResult:
    """Test how sensitive model classes are to concepts, against random image sets.

    For each concept ``C``, layer and random set ``N_i`` (``i = 1..R``), a CAV separates
    the layer's activations of ``C`` from those of ``N_i``; its TCAV score for class
    ``k`` is the fraction of class-``k`` inputs whose directional derivative
    ``S = grad h_k . v`` is positive. CAVs of random sets against each other give the
    null runs. Each (concept, layer, target) is tested with ``test`` and the p-values of
    the call are corrected together.

    Parameters
    ----------
    model : torch.nn.Module, keras.Model or adapter
        The model, or an object with the adapter API (``activations``,
        ``iter_gradients``, ``resolve_layer``; see :func:`cav.wrap`).
    inputs : array, tensor, or mapping of int to array
        Inputs to score, in the model's layout: one array for every target, or one array
        per target class.
    target : int or sequence of int
        Class index or indices whose sensitivity is measured.
    concepts : mapping of str to images
        Concept name to its images (array, tensor, or iterable of batches), preprocessed
        like ``inputs``.
    random_sets : sequence or mapping of images, optional
        The R random (negative) image sets; a sequence is named ``random_00``, ...
    random_pool : images, optional
        Images from which ``n_random`` disjoint sets of ``random_set_size`` are drawn,
        seeded. Give exactly one of ``random_sets`` and ``random_pool``.
    layers : str, int or sequence of them
        Layer names or indices (see ``adapter.resolve_layer``).
    n_random : int
        Number of random sets drawn from ``random_pool``.
    random_set_size : int, optional
        Images per drawn random set; default: the size of the largest concept.
    method : {"logistic", "sgd", "perceptron", "mean_difference"}
        CAV classifier (:func:`cav.fit_cav`).
    output : {"logit", "probability", "loss"}
        Model output differentiated for each target.
    test : {"calibrated", "ttest"}
        ``"calibrated"``: round-robin test of the concept against the random sets used
        as pseudo-concepts, R(R-1)/2 null CAVs per layer, needs R >= 3; its
        false-positive rate holds when the concept is a random set.
        ``"ttest"``: the TCAV paper's t-test of R concept scores against R null scores,
        R null CAVs per layer, needs R >= 2; too liberal when concept sets vary.
        See :mod:`cav.core.stats`.
    statistic : {"cosine", "score"}
        Pair statistic the calibrated test compares between sets. ``"cosine"``: the
        mean cosine between the inputs' gradients and the CAV, weighted by gradient norm
        (the ``cosine`` column of ``runs``). It carries the sign information of the TCAV
        score but does not saturate at 0 or 1, which matters where every input's gradient
        points the same way (layers below a single output unit): there the TCAV scores of
        the concept and of many random sets are all 0 or 1 and cannot be told apart.
        ``"score"``: the TCAV score itself. Both keep the test's false-positive rate,
        because any statistic that treats every set alike keeps the sets exchangeable.
    ttest : {"welch", "student"}
        Variance assumption of the t-test.
    correction : {"holm", "bonferroni", "none"}
        Multiple-testing correction over every (concept, layer, target) of the call.
    alpha : float
        Level at which a corrected p-value is ``significant``.
    labels : array or mapping of int to array, optional
        Labels for ``output="loss"``; default: each input's label is its target.
    seed : int or numpy.random.Generator
        Seed of the random-set draw and of every CAV fit (each pair's seed derives from
        this seed and the two set names).
    holdout : float
        Fraction of each pair's images held out to measure CAV accuracy.
    batch_size : int
        Images per forward or backward pass.
    cache_dir : path, optional
        Folder caching activations and CAVs by content; results are the same with and
        without it.
    progress : bool
        Show tqdm progress bars.

    Returns
    -------
    TCAVResult
        ``runs`` (one row per run and target) and ``summary()`` (one row per concept,
        layer and target).
    """
    _check_options(method, output, test, statistic, ttest, correction, alpha, holdout, batch_size)
    seed_value = image_sets.resolve_seed(seed)
    adapter = _as_adapter(model)
    layer_names = _resolve_layers(adapter, layers)
    plan = _plan_runs(
        concepts, random_sets, random_pool, n_random, random_set_size, test, seed_value
    )
    targets = image_sets.prepare_targets(target, inputs, labels)
    image_sets.check_image_shapes(targets, plan.all_sets)
    image_sets.warn_value_ranges(targets, plan.all_sets)
    context = _make_cache_context(adapter, cache_dir, plan.all_sets, batch_size)

    activations = _compute_activations(adapter, plan.all_sets, layer_names, context, progress)
    cavs = _fit_all_cavs(activations, plan.pairs, layer_names, method, seed_value, holdout, context)
    del activations
    runs, input_zero = _score_targets(
        adapter, targets, layer_names, cavs, plan.concepts, output, holdout, batch_size, progress
    )
    summary = summarize_runs(
        runs,
        concepts=plan.concepts,
        layers=layer_names,
        targets=[item.target for item in targets],
        random_names=plan.random_names,
        input_zero_shares=input_zero,
        test=test,
        ttest=ttest,
        correction=correction,
        alpha=alpha,
        statistic=statistic,
    )
    _warn_about_summary(summary)

    params = {
        "targets": [item.target for item in targets],
        "n_inputs": [len(item.inputs) for item in targets],
        "layers": layer_names,
        "concepts": plan.concepts,
        "random_sets": plan.random_names,
        "set_sizes": {name: len(images) for name, images in plan.all_sets.items()},
        "random_source": "random_sets" if random_sets is not None else "random_pool",
        "n_random": len(plan.random_names),
        "random_set_size": random_set_size,
        "method": method,
        "holdout": holdout,
        "output": output,
        "test": test,
        "statistic": statistic,
        "ttest": ttest,
        "correction": correction,
        "alpha": alpha,
        "seed": seed_value,
        "batch_size": batch_size,
        "framework": getattr(adapter, "framework", type(adapter).__name__),
        "model_fingerprint": context.fingerprint,
        "cav_version": cav.__version__,
    }
    return TCAVResult(runs, summary, params)


@dataclass(frozen=True)
class _RunPlan:
    """Image sets of a call by name, and the (concept, negative) pairs to fit."""

    all_sets: dict[str, np.ndarray]
    concepts: list[str]
    random_names: list[str]
    pairs: list[tuple[str, str]]


def _plan_runs(
    concepts: Mapping[str, Any],
    random_sets: Sequence[Any] | Mapping[str, Any] | None,
    random_pool: Any,
    n_random: int,
    random_set_size: int | None,
    test: str,
    seed: int,
) -> _RunPlan:
    concept_sets = image_sets.prepare_concepts(concepts)
    concept_sizes = [len(images) for images in concept_sets.values()]
    random = image_sets.prepare_random_sets(
        random_sets, random_pool, n_random, random_set_size, concept_sizes, seed
    )
    pairs = image_sets.concept_pairs(list(concept_sets), list(random))
    pairs += image_sets.null_pairs(list(random), test)
    return _RunPlan({**concept_sets, **random}, list(concept_sets), list(random), pairs)


def _make_cache_context(
    adapter: Any,
    cache_dir: str | os.PathLike[str] | None,
    sets: Mapping[str, np.ndarray],
    batch_size: int,
) -> _CacheContext:
    cache = DiskCache(cache_dir) if cache_dir is not None else None
    fingerprint = _fingerprint(adapter, required=cache is not None)
    hashes = {name: hash_array(images) for name, images in sets.items()} if cache else {}
    return _CacheContext(cache, fingerprint, hashes, batch_size)


def _check_options(
    method: str,
    output: str,
    test: str,
    statistic: str,
    ttest: str,
    correction: str,
    alpha: float,
    holdout: float,
    batch_size: int,
) -> None:
    check_choice("method", method, METHODS)
    check_choice("output", output, OUTPUTS)
    check_choice("test", test, TESTS)
    check_choice("statistic", statistic, STATISTICS)
    check_choice("ttest", ttest, TTEST_VARIANTS)
    check_choice("correction", correction, CORRECTIONS)
    if not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise InvalidArgumentError(f"alpha={alpha!r} must lie in (0, 1)")
    if not isinstance(holdout, (int, float)) or not 0.0 <= holdout < 1.0:
        raise InvalidArgumentError(f"holdout={holdout!r} must lie in [0, 1)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size={batch_size!r} must be a positive int")


def _as_adapter(model: Any) -> Any:
    """Return ``model`` if it has the adapter API, else ``cav.wrap(model)``."""
    if all(callable(getattr(model, name, None)) for name in _ADAPTER_METHODS):
        return model
    from cav.models import wrap

    return wrap(model)


def _resolve_layers(adapter: Any, layers: str | int | Sequence[str | int]) -> list[str]:
    if isinstance(layers, (str, int, np.integer)):
        requested: list[str | int] = [layers]
    elif isinstance(layers, Sequence):
        requested = list(layers)
    else:
        raise InvalidTypeError(
            f"layers must be a layer name, an index or a list of them; got {type(layers).__name__}"
        )
    if not requested:
        raise InvalidArgumentError("layers is empty; give at least one layer name or index")
    names = [adapter.resolve_layer(layer) for layer in requested]
    return list(dict.fromkeys(names))


def _fingerprint(adapter: Any, required: bool) -> str | None:
    fingerprint = getattr(adapter, "fingerprint", None)
    if callable(fingerprint):
        return str(fingerprint())
    if required:
        raise InvalidArgumentError(
            f"cache_dir needs a model fingerprint, but {type(adapter).__name__} has no "
            "fingerprint() method; pass cache_dir=None or a model wrapped by cav.wrap"
        )
    return None


class _CacheContext:
    """Cache, model fingerprint and image hashes shared by the cache keys of one call."""

    def __init__(
        self,
        cache: DiskCache | None,
        fingerprint: str | None,
        hashes: Mapping[str, str],
        batch_size: int,
    ) -> None:
        self.cache = cache
        self.fingerprint = fingerprint
        self.hashes = hashes
        self.batch_size = batch_size

    def activation_key(self, name: str, layer: str) -> str:
        # The batch size is part of the key because batched kernels may round differently.
        return cache_key(
            kind="activations",
            model=self.fingerprint,
            layer=layer,
            images=self.hashes[name],
            batch_size=self.batch_size,
        )

    def cav_key(
        self, pair: tuple[str, str], layer: str, method: str, seed: int, holdout: float
    ) -> str:
        concept, negative = pair
        return cache_key(
            kind="cav",
            activations=[self.activation_key(concept, layer), self.activation_key(negative, layer)],
            names=[concept, negative],
            method=method,
            seed=seed,
            holdout=holdout,
            cav_version=cav.__version__,
            fit_revision=FIT_REVISION,
            sklearn_version=_sklearn_version(),
        )


def _compute_activations(
    adapter: Any,
    sets: Mapping[str, np.ndarray],
    layers: Sequence[str],
    context: _CacheContext,
    progress: bool,
) -> dict[str, dict[str, np.ndarray]]:
    """Return activations[layer][set name], one forward pass per image set."""
    by_layer: dict[str, dict[str, np.ndarray]] = {layer: {} for layer in layers}
    for name, images in _progress(sets.items(), len(sets), "activations", progress):
        missing = list(layers)
        if context.cache is not None:
            for layer in layers:
                stored = context.cache.load_activations(
                    context.activation_key(name, layer), len(images)
                )
                if stored is not None:
                    by_layer[layer][name] = stored
            missing = [layer for layer in layers if name not in by_layer[layer]]
        if not missing:
            logger.debug("activations of %s read from the cache", name)
            continue
        computed = adapter.activations(images, missing, batch_size=context.batch_size)
        for layer in missing:
            by_layer[layer][name] = computed[layer]
            if context.cache is not None:
                context.cache.save_activations(context.activation_key(name, layer), computed[layer])
    return by_layer


def _fit_all_cavs(
    activations: Mapping[str, Mapping[str, np.ndarray]],
    pairs: Sequence[tuple[str, str]],
    layers: Sequence[str],
    method: str,
    seed: int,
    holdout: float,
    context: _CacheContext,
) -> dict[str, list[CAV]]:
    """Return the CAVs of every pair at every layer, in the order of ``pairs``."""
    cavs = {}
    for layer in layers:
        found: dict[tuple[str, str], CAV] = {}
        if context.cache is not None:
            for pair in pairs:
                stored = context.cache.load_cav(context.cav_key(pair, layer, method, seed, holdout))
                if stored is not None:
                    found[pair] = stored
        missing = [pair for pair in pairs if pair not in found]
        if missing:
            with warnings.catch_warnings():
                # Degenerate CAVs are reported once per layer below, not once per pair.
                warnings.simplefilter("ignore", WeakCAVWarning)
                fitted = fit_cavs(activations[layer], missing, method, seed, holdout, layer)
            _warn_about_degenerate(fitted, layer)
            for pair, fitted_cav in zip(missing, fitted, strict=True):
                found[pair] = fitted_cav
                if context.cache is not None:
                    key = context.cav_key(pair, layer, method, seed, holdout)
                    context.cache.save_cav(key, fitted_cav)
        logger.info(
            "layer %s: %d CAVs fitted, %d from the cache",
            layer,
            len(missing),
            len(pairs) - len(missing),
        )
        cavs[layer] = [found[pair] for pair in pairs]
    return cavs


def _score_targets(
    adapter: Any,
    targets: Sequence[image_sets.TargetInputs],
    layers: Sequence[str],
    cavs: Mapping[str, Sequence[CAV]],
    concepts: Sequence[str],
    output: str,
    holdout: float,
    batch_size: int,
    progress: bool,
) -> tuple[pd.DataFrame, dict[tuple[str, str, int], float]]:
    """Score every CAV on every target; return the runs table and per-input zero shares."""
    directions = {layer: np.stack([item.direction for item in cavs[layer]]) for layer in layers}
    concept_rows: list[dict[str, Any]] = []
    null_rows: list[dict[str, Any]] = []
    input_zero: dict[tuple[str, str, int], float] = {}
    for item in targets:
        derivatives, mean_norms = _stream_derivatives(
            adapter, item, layers, directions, output, batch_size, progress
        )
        for layer in layers:
            layer_derivatives = derivatives[layer]
            rows = _run_rows(
                layer_derivatives, mean_norms[layer], cavs[layer], concepts, item.target, holdout
            )
            for row in rows:
                (concept_rows if row["kind"] == "concept" else null_rows).append(row)
            for concept in concepts:
                columns = [i for i, fitted in enumerate(cavs[layer]) if fitted.concept == concept]
                all_zero = np.all(layer_derivatives[:, columns] == 0, axis=1)
                input_zero[(concept, layer, item.target)] = float(all_zero.mean())
    target_order = [item.target for item in targets]
    ordered = _order_rows(concept_rows, null_rows, concepts, layers, target_order)
    runs = make_table(ordered, RUN_COLUMNS)
    return runs, input_zero


def _stream_derivatives(
    adapter: Any,
    item: image_sets.TargetInputs,
    layers: Sequence[str],
    directions: Mapping[str, np.ndarray],
    output: str,
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Return derivatives[layer] of shape (n_inputs, n_cavs) from one gradient pass.

    The mean L2 norm of the inputs' gradients at each layer is returned beside them, for
    the cosine statistic (:func:`_run_rows`).
    """
    n_inputs = len(item.inputs)
    derivatives = {layer: np.empty((n_inputs, len(directions[layer]))) for layer in layers}
    norm_sums = dict.fromkeys(layers, 0.0)
    batches = adapter.iter_gradients(
        item.inputs, layers, item.target, output=output, labels=item.labels, batch_size=batch_size
    )
    n_batches = -(-n_inputs // batch_size)
    # One float64 buffer per layer is reused by every batch. The products and norms are
    # taken in float64, and a fresh float64 copy of each batch would cost page faults.
    buffers: dict[str, np.ndarray] = {}
    # The projections are small products that alternate with the model's passes. With
    # several BLAS threads, the idle BLAS threads spin while the model's threads work: on
    # the 2-core benchmark machine that made this loop take twice as long (1.3 s against
    # 0.6 s for 1,000 inputs).
    blas = ThreadpoolController()
    offset = 0
    for batch in _progress(batches, n_batches, f"gradients, class {item.target}", progress):
        size = len(batch[layers[0]])
        with blas.limit(limits=1, user_api="blas"):
            for layer in layers:
                values = batch[layer]
                if layer not in buffers or len(buffers[layer]) < size:
                    buffers[layer] = np.empty((max(size, batch_size), values.shape[1]))
                block = buffers[layer][:size]
                np.copyto(block, values)
                derivatives[layer][offset : offset + size] = directional_derivatives(
                    block, directions[layer]
                )
                norm_sums[layer] += float(np.sqrt(np.einsum("ij,ij->i", block, block)).sum())
        offset += size
    if offset != n_inputs:
        raise InvalidArgumentError(
            f"the model's gradients covered {offset} of {n_inputs} inputs for target {item.target}"
        )
    mean_norms = {layer: norm_sums[layer] / n_inputs for layer in layers}
    return derivatives, mean_norms


def _run_rows(
    derivatives: np.ndarray,
    mean_norm: float,
    cavs: Sequence[CAV],
    concepts: Sequence[str],
    target: int,
    holdout: float,
) -> list[dict[str, Any]]:
    """Return one row per CAV (column of ``derivatives``) for one layer and target.

    ``cosine = mean_i S_i / mean_i ||g_i||``: the mean cosine between each input's
    gradient ``g_i`` and the CAV, weighted by the gradient norms, in [-1, 1]. It is NaN
    when every gradient is zero.
    """
    scores = np.atleast_1d(tcav_score(derivatives, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.atleast_1d(derivatives.mean(axis=0) / mean_norm)
    if mean_norm == 0.0:
        cosines = np.full(derivatives.shape[1], np.nan)
    magnitudes = np.atleast_1d(magnitude_score(derivatives, axis=0))
    zeros = np.atleast_1d(zero_fraction(derivatives, axis=0))
    concept_set = set(concepts)
    # Concept runs are numbered per concept, null runs in one sequence of their own.
    counters: dict[str | None, int] = {}
    rows = []
    for column, fitted in enumerate(cavs):
        kind = "concept" if fitted.concept in concept_set else "null"
        counter = fitted.concept if kind == "concept" else None
        run = counters.get(counter, 0)
        counters[counter] = run + 1
        n_images = fitted.n_concept + fitted.n_negative
        rows.append(
            {
                "concept": fitted.concept,
                "negative": fitted.negative,
                "layer": fitted.layer,
                "target": target,
                "run": run,
                "kind": kind,
                "score": float(scores[column]),
                "magnitude": float(magnitudes[column]),
                "cosine": float(cosines[column]),
                "zero_share": float(zeros[column]),
                "cav_accuracy": float(fitted.accuracy),
                "n_heldout": image_sets.heldout_size(n_images, holdout),
                "n_inputs": len(derivatives),
            }
        )
    return rows


def _order_rows(
    concept_rows: list[dict[str, Any]],
    null_rows: list[dict[str, Any]],
    concepts: Sequence[str],
    layers: Sequence[str],
    targets: Sequence[int],
) -> list[dict[str, Any]]:
    """Sort concept runs by (concept, layer, target, run), then null runs likewise."""
    concept_index = {name: i for i, name in enumerate(concepts)}
    layer_index = {name: i for i, name in enumerate(layers)}
    target_index = {value: i for i, value in enumerate(targets)}
    concept_rows = sorted(
        concept_rows,
        key=lambda row: (
            concept_index[row["concept"]],
            layer_index[row["layer"]],
            target_index[row["target"]],
            row["run"],
        ),
    )
    null_rows = sorted(
        null_rows,
        key=lambda row: (layer_index[row["layer"]], target_index[row["target"]], row["run"]),
    )
    return concept_rows + null_rows


def _warn_about_degenerate(fitted: Sequence[CAV], layer: str) -> None:
    degenerate = [f"{item.concept}/{item.negative}" for item in fitted if item.degenerate]
    if degenerate:
        more = f" and {len(degenerate) - 5} more" if len(degenerate) > 5 else ""
        warnings.warn(
            f"{len(degenerate)} of {len(fitted)} CAVs at layer {layer!r} are undefined because "
            f"every activation of both sets is the same vector ({', '.join(degenerate[:5])}"
            f"{more}); their TCAV scores are NaN",
            WeakCAVWarning,
            stacklevel=4,
        )


def _warn_about_summary(summary: pd.DataFrame) -> None:
    """Warn once about weak CAVs and once about undefined scores, naming a few groups."""
    for mask, category, message in (
        (
            summary["weak_cav"],
            WeakCAVWarning,
            "CAVs separate the concept from the random sets hardly better than chance "
            "(held-out accuracy below 0.6 or not above 0.5 by a binomial test)",
        ),
        (
            summary["undefined"] & (summary["zero_share"] == 1.0),
            ZeroGradientWarning,
            "every directional derivative is exactly zero, so the TCAV scores are undefined "
            "(NaN); check for dead units or a saturated output at these layers",
        ),
    ):
        flagged = summary[mask.to_numpy(dtype=bool)]
        if flagged.empty:
            continue
        groups = [
            f"{row.concept!r} at {row.layer!r} for class {row.target}"
            for row in flagged.head(5).itertuples(index=False)
        ]
        more = f" and {len(flagged) - 5} more" if len(flagged) > 5 else ""
        warnings.warn(f"{message}: {', '.join(groups)}{more}", category, stacklevel=3)


def _progress(
    items: Iterable[_Item], total: int, description: str, enabled: bool
) -> Iterator[_Item]:
    """Wrap ``items`` in a tqdm progress bar when ``enabled`` and tqdm is installed."""
    if not enabled:
        return iter(items)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        logger.debug("tqdm is not installed; progress is not shown")
        return iter(items)
    return iter(tqdm(items, total=total, desc=description, leave=False))


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)

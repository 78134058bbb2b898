"""Tests of the on-disk cache: keys, atomic entries, and run_tcav with and without it."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cav.pipeline.run as run_module
from cav.core.cav import CAV, fit_cav
from cav.errors import InvalidArgumentError, WeakCAVWarning
from cav.pipeline.cache import DiskCache, cache_key, hash_array
from cav.pipeline.toy import make_toy_mlp

torch = pytest.importorskip("torch")

import cav  # noqa: E402

IMAGE_SHAPE = (3, 6, 6)


class CountingAdapter:
    """Forwards to an adapter and records the layers of each activations call."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.activation_calls: list[list[str]] = []

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def activations(self, x, layers, batch_size=64):
        self.activation_calls.append(list(layers))
        return self.adapter.activations(x, layers, batch_size=batch_size)


@pytest.fixture
def fit_calls(monkeypatch):
    """Record the pairs passed to each fit_cavs call of run_tcav."""
    calls: list[list[tuple[str, str]]] = []
    original = run_module.fit_cavs

    def counting(activations, pairs, *args, **kwargs):
        calls.append(list(pairs))
        return original(activations, pairs, *args, **kwargs)

    monkeypatch.setattr(run_module, "fit_cavs", counting)
    return calls


@pytest.fixture(scope="module")
def setting():
    generator = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32, 2)
    ).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    rng = np.random.default_rng(3)
    inputs = rng.normal(size=(30, *IMAGE_SHAPE))
    concepts = {"a": rng.normal(size=(12, *IMAGE_SHAPE)), "b": rng.normal(size=(12, *IMAGE_SHAPE))}
    pool = rng.normal(size=(60, *IMAGE_SHAPE))
    return model.eval(), inputs, concepts, pool


def run(setting, cache_dir, adapter=None, concepts=None, **options):
    model, inputs, default_concepts, pool = setting
    arguments = {"random_pool": pool, "layers": "1", "n_random": 3, "cache_dir": cache_dir}
    arguments.update(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakCAVWarning)
        return cav.run_tcav(
            adapter if adapter is not None else model,
            inputs,
            [0, 1],
            concepts if concepts is not None else default_concepts,
            **arguments,
        )


def entries(root: Path, kind: str) -> list[Path]:
    return sorted((root / kind).rglob("*.np*"))


def test_hash_array_sees_dtype_shape_bytes():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    changed = array.copy()
    changed[2, 3] = 12.5
    digests = {
        hash_array(array),
        hash_array(array.astype(np.float64)),
        hash_array(array.reshape(4, 3)),
        hash_array(changed),
    }
    assert len(digests) == 4
    assert hash_array(array) == hash_array(array.copy(order="F"))


def test_cache_key_ignores_argument_order():
    assert cache_key(a=1, b="x") == cache_key(b="x", a=1)
    assert cache_key(a=1, b="x") != cache_key(a=2, b="x")


def test_activations_round_trip(tmp_path):
    cache = DiskCache(tmp_path)
    values = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    cache.save_activations("ab" * 32, values)
    loaded = cache.load_activations("ab" * 32, 5)
    np.testing.assert_array_equal(loaded, values)
    assert loaded.dtype == np.float32


def test_missing_entry_is_none(tmp_path):
    assert DiskCache(tmp_path).load_activations("cd" * 32, 5) is None
    assert DiskCache(tmp_path).load_cav("cd" * 32) is None


def test_cav_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    fitted = fit_cav(rng.normal(size=(10, 4)) + 1, rng.normal(size=(10, 4)), holdout=0.0, layer="x")
    cache = DiskCache(tmp_path)
    cache.save_cav("ef" * 32, fitted)
    loaded = cache.load_cav("ef" * 32)
    assert isinstance(loaded, CAV)
    np.testing.assert_array_equal(loaded.direction, fitted.direction)
    assert np.isnan(loaded.accuracy)
    for name in ("method", "concept", "negative", "layer", "seed", "intercept", "degenerate"):
        assert getattr(loaded, name) == getattr(fitted, name)


def test_truncated_entry_ignored_then_rewritten(tmp_path, caplog):
    cache = DiskCache(tmp_path)
    values = np.ones((4, 3), dtype=np.float32)
    cache.save_activations("12" * 32, values)
    path = entries(tmp_path, "activations")[0]
    path.write_bytes(path.read_bytes()[:40])
    with caplog.at_level(logging.WARNING, logger="cav.pipeline.cache"):
        assert cache.load_activations("12" * 32, 4) is None
    assert "unreadable cache entry" in caplog.text
    cache.save_activations("12" * 32, values)
    np.testing.assert_array_equal(cache.load_activations("12" * 32, 4), values)


def test_wrong_row_count_ignored(tmp_path):
    cache = DiskCache(tmp_path)
    cache.save_activations("34" * 32, np.ones((4, 3), dtype=np.float32))
    assert cache.load_activations("34" * 32, 5) is None


def test_failed_write_leaves_nothing(tmp_path):
    cache = DiskCache(tmp_path)

    class Broken:
        direction = np.ones(3)

    with pytest.raises(TypeError):
        cache.save_cav("56" * 32, Broken())  # type: ignore[arg-type]
    assert list(tmp_path.rglob("*")) == [tmp_path / "cavs", tmp_path / "cavs" / "56"]


def test_no_temporary_files_left(setting, tmp_path):
    run(setting, tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_hit_identical(setting, tmp_path, fit_calls):
    uncached = run(setting, None)
    first = run(setting, tmp_path)
    counting = CountingAdapter(cav.wrap(setting[0]))
    second = run(setting, tmp_path, adapter=counting)
    pd.testing.assert_frame_equal(first.runs, uncached.runs, check_exact=True)
    pd.testing.assert_frame_equal(second.runs, uncached.runs, check_exact=True)
    pd.testing.assert_frame_equal(second.summary(), uncached.summary(), check_exact=True)
    assert counting.activation_calls == []
    assert len(fit_calls) == 2


def test_cache_stores_each_set_and_pair(setting, tmp_path):
    run(setting, tmp_path)
    assert len(entries(tmp_path, "activations")) == 2 + 3
    assert len(entries(tmp_path, "cavs")) == 2 * 3 + 3


def test_altered_image_invalidates_its_set(setting, tmp_path, fit_calls):
    run(setting, tmp_path)
    concepts = dict(setting[2])
    altered = concepts["a"].copy()
    altered[0, 0, 0, 0] += 1e-3
    concepts["a"] = altered
    counting = CountingAdapter(cav.wrap(setting[0]))
    result = run(setting, tmp_path, adapter=counting, concepts=concepts)
    assert counting.activation_calls == [["1"]]
    assert fit_calls[-1] == [("a", "random_00"), ("a", "random_01"), ("a", "random_02")]
    pd.testing.assert_frame_equal(
        result.runs, run(setting, None, concepts=concepts).runs, check_exact=True
    )


def test_other_layer_invalidates(setting, tmp_path):
    run(setting, tmp_path)
    counting = CountingAdapter(cav.wrap(setting[0]))
    run(setting, tmp_path, adapter=counting, layers=["1", "0"])
    assert counting.activation_calls == [["0"]] * 5


def test_other_method_refits_only(setting, tmp_path, fit_calls):
    run(setting, tmp_path)
    counting = CountingAdapter(cav.wrap(setting[0]))
    result = run(setting, tmp_path, adapter=counting, method="mean_difference")
    assert counting.activation_calls == []
    assert len(fit_calls[-1]) == 2 * 3 + 3
    pd.testing.assert_frame_equal(
        result.runs, run(setting, None, method="mean_difference").runs, check_exact=True
    )


def test_other_fit_revision_refits_only(setting, tmp_path, fit_calls, monkeypatch):
    # CAVs stored by another revision of the fitting code are fitted again, and the
    # activations still come from the cache.
    run(setting, tmp_path)
    monkeypatch.setattr(run_module, "FIT_REVISION", run_module.FIT_REVISION + 1)
    counting = CountingAdapter(cav.wrap(setting[0]))
    run(setting, tmp_path, adapter=counting)
    assert counting.activation_calls == []
    assert len(fit_calls) == 2
    assert fit_calls[1] == fit_calls[0]


def test_other_seed_refits(setting, tmp_path, fit_calls):
    run(
        setting,
        tmp_path,
        random_sets=[setting[3][:12], setting[3][12:24], setting[3][24:36]],
        random_pool=None,
    )
    run(
        setting,
        tmp_path,
        random_sets=[setting[3][:12], setting[3][12:24], setting[3][24:36]],
        random_pool=None,
        seed=5,
    )
    assert len(fit_calls) == 2
    assert len(fit_calls[1]) == 2 * 3 + 3


def test_corrupt_cav_entry_rewritten(setting, tmp_path):
    first = run(setting, tmp_path)
    victim = entries(tmp_path, "cavs")[0]
    victim.write_bytes(b"not a zip file")
    second = run(setting, tmp_path)
    pd.testing.assert_frame_equal(first.runs, second.runs, check_exact=True)
    assert DiskCache(tmp_path).load_cav(victim.stem) is not None


def test_cache_needs_fingerprint(tmp_path):
    toy = make_toy_mlp(4, hidden=3)

    class NoFingerprint:
        framework = "numpy"

        def __getattr__(self, name):
            if name == "fingerprint":
                raise AttributeError(name)
            return getattr(toy, name)

    rng = np.random.default_rng(0)
    with pytest.raises(InvalidArgumentError, match="fingerprint"):
        cav.run_tcav(
            NoFingerprint(),
            rng.normal(size=(5, 4)),
            1,
            {"c": rng.normal(size=(6, 4))},
            random_pool=rng.normal(size=(30, 4)),
            layers=0,
            n_random=3,
            cache_dir=tmp_path,
        )

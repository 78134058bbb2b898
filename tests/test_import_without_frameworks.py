"""``import cav`` needs neither PyTorch nor Keras, and ``cav.wrap`` names the missing extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from cav.errors import InvalidTypeError

# A meta-path finder that makes every framework import fail, then the checks. Fake model
# classes claim the frameworks' module names, as a real model's classes would.
SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = {"torch", "keras", "tensorflow", "jax", "tf_keras"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, Blocker())

    import cav
    import cav.models
    import cav.tcav
    from cav.errors import InvalidTypeError, MissingDependencyError

    loaded = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    assert callable(cav.wrap)
    assert callable(cav.fit_cav)

    FakeModule = type("Module", (), {"__module__": "torch.nn.modules.module"})
    FakeNet = type("Net", (FakeModule,), {"__module__": "__main__"})
    FakeKeras = type("Sequential", (), {"__module__": "keras.src.models.sequential"})

    for model, extra in [(FakeNet(), "cav[torch]"), (FakeKeras(), "cav[keras]")]:
        try:
            cav.wrap(model)
        except MissingDependencyError as error:
            assert isinstance(error, ImportError)
            assert f'pip install "{extra}"' in str(error), str(error)
        else:
            raise AssertionError(f"wrap accepted {model!r}")

    try:
        cav.wrap(object())
    except InvalidTypeError as error:
        assert "torch.nn.Module or a Keras 3 model" in str(error), str(error)
    else:
        raise AssertionError("wrap accepted object()")
    print("ok")
    """
)


def test_import_without_frameworks() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_wrap_rejects_plain_object() -> None:
    import cav

    with pytest.raises(InvalidTypeError, match=r"cannot wrap a builtins\.object"):
        cav.wrap(object())


def test_wrap_rejects_keras2_model() -> None:
    import cav

    legacy = type("Sequential", (), {"__module__": "tf_keras.src.engine.sequential"})
    with pytest.raises(InvalidTypeError, match="Keras 2"):
        cav.wrap(legacy())

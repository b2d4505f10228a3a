"""Access to the compiled extension with an actionable error when it is missing."""

from __future__ import annotations

from types import ModuleType


def core() -> ModuleType:
    try:
        from . import _core
    except ImportError as e:
        raise ImportError(
            f"flas_cpp._core (the C++ extension) cannot be imported ({e}). Install the package with "
            "`pip install .` (which compiles it against llama-cpp-python==0.3.36), and run from outside "
            "the source tree so that the installed package, not the sources, is imported.") from e
    return _core

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


def record(obj: object) -> dict:
    """A record of the extension (one of flas.h's structs as a class: Stats, MemoryRow, FlowInfo)
    as a dict of its fields, named and ordered as in flas.h: the public API's dicts."""
    return {name: getattr(obj, name) for name, attr in vars(type(obj)).items() if isinstance(attr, property)}


def model_params(**fields: object) -> object:
    """A ModelParams (flas_model_default_params()) with these fields set."""
    p = core().ModelParams()
    for name, value in fields.items():
        setattr(p, name, value)
    return p

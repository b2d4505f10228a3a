"""flas-cpp: FLAS (Flow-based Activation Steering) on llama.cpp."""

from __future__ import annotations

from importlib import metadata

from ._native import core

__version__ = "0.1.0"


def build_info() -> dict:
    """The llama.cpp/ggml this package runs on: versions, backends, devices, loaded library paths.

    `libllama`/`libggml` are the files actually mapped into this process; they are the ones
    llama-cpp-python ships, so `import llama_cpp` beside `import flas_cpp` shares one ggml.
    """
    info = core().build_info()
    info["flas_cpp"] = __version__
    info["llama_cpp_python"] = metadata.version("llama-cpp-python")
    return info


__all__ = ["build_info", "__version__"]

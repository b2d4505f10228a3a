"""flas-cpp: FLAS (Flow-based Activation Steering) on llama.cpp.

    from flas_cpp import FlasModel
    m = FlasModel(base="gemma-2-2b-it-Q4_K_M.gguf", flow="flas-gemma-2-2b-it.gguf")
    print(m.generate("Tell me about your day.", concept="Talk like a pirate", flowtime=2.0).text)
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from ._native import core
from .generation import (ContextLengthError, DeviceLostError, Generation, Handle, Request, RequestNotFoundError,
                         TokenLogprob, TokenTelemetry)
from .model import FlasModel

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


def get_include() -> str:
    """The directory holding flas.h, the C API (compile C programs with -I it)."""
    return str(Path(__file__).resolve().parent / "include")


def get_library() -> str:
    """The path of libflas, the core with its C API (link C programs against it)."""
    lib = Path(__file__).resolve().parent / "libflas.so"
    if not lib.is_file():
        raise FileNotFoundError(f"{lib} is missing: install the package (pip install .) rather than importing the sources")
    return str(lib)


__all__ = ["ContextLengthError", "DeviceLostError", "FlasModel", "Generation", "Handle", "Request", "RequestNotFoundError", "TokenLogprob", "TokenTelemetry", "build_info", "get_include", "get_library", "__version__"]

"""The extension is built and wired to the llama.cpp that llama-cpp-python ships."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import util

import flas_cpp

LLAMA_LIB_DIR = os.path.realpath(os.path.join(os.path.dirname(util.find_spec("llama_cpp").origin), "lib"))


def test_build_info_reports_versions_backends_and_libraries():
    info = flas_cpp.build_info()
    assert info["llama_cpp_python"] == "0.3.36"
    assert info["ggml_version"] and info["ggml_commit"]
    assert "CPU" in info["backends"]
    assert any(d["type"] == "cpu" for d in info["devices"])
    for key in ("libllama", "libggml", "libggml_base"):
        assert os.path.dirname(os.path.realpath(info[key])) == LLAMA_LIB_DIR, info[key]


def test_one_copy_of_ggml_with_llama_cpp_imported_too():
    # A fresh interpreter: import both packages, make llama_cpp load its libraries, then
    # count the distinct libggml files mapped into the process.
    code = (
        "import flas_cpp, llama_cpp\n"
        "llama_cpp.llama_backend_init()\n"
        "import os\n"
        "paths = set()\n"
        "for line in open('/proc/self/maps'):\n"
        "    p = line.split()[-1]\n"
        "    if 'libggml' in p or 'libllama' in p:\n"
        "        paths.add(os.path.realpath(p))\n"
        "print('\\n'.join(sorted(paths)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    names = [os.path.basename(p).split(".so")[0] for p in out]
    assert sorted(names) == sorted(set(names)), f"a library is loaded twice: {out}"
    assert {"libggml", "libggml-base", "libllama"} <= set(names)
    assert all(os.path.dirname(p) == LLAMA_LIB_DIR for p in out), out


def test_default_threads_count_physical_cores():
    """n_threads 0 (the default of C, pybind and Python alike) is one thread per physical core this
    process may run on: hyper-thread siblings (same package and core id in /sys) counted once."""
    from pathlib import Path

    from flas_cpp._native import core

    cores = set()
    for cpu in os.sched_getaffinity(0):
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo / "physical_package_id").read_text().strip() + ":" + (topo / "core_id").read_text().strip())
        except OSError:
            cores.add(f"cpu{cpu}")
    assert core().default_threads() == len(cores)
    assert core().ModelParams().n_threads == 0


def test_flas_model_defaults_are_the_c_api_defaults():
    """One set of defaults: FlasModel's keyword defaults are flas_model_default_params()'s
    (n_threads None there is 0 here: one per physical core)."""
    import inspect

    from flas_cpp import FlasModel
    from flas_cpp._native import core

    c = core().ModelParams()
    sig = inspect.signature(FlasModel).parameters
    for name in ("n_ctx", "n_batch", "n_seq", "concept_cache", "n_gpu_layers", "main_gpu", "exact", "verbose"):
        assert sig[name].default == getattr(c, name), name
    assert sig["n_threads"].default is None and c.n_threads == 0

"""The flow GGUF's names are defined twice (Python converter, C++ loader): they must agree."""

from __future__ import annotations

import re
from pathlib import Path

from flas_cpp import gguf_names as N

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "flas-names.h"


def test_cpp_and_python_name_the_same_keys_and_tensors():
    defines = dict(re.findall(r'#define\s+(FLAS_\w+)\s+"([^"]*)"', HEADER.read_text()))
    cpp_keys = {v for k, v in defines.items() if k.startswith("FLAS_KEY_")}
    py_keys = {v for k, v in vars(N).items() if k.startswith("KEY_")}
    assert cpp_keys == py_keys
    cpp_tensors = {v.replace("%d", "{b}") for k, v in defines.items() if k.startswith("FLAS_TN_")}
    py_tensors = {gg for _, gg, *_ in N.flow_tensor_table(8, 8, 2, 1, 4, family="qwen3")} | {N.TN_ROPE_FREQS}
    assert cpp_tensors == py_tensors
    assert defines["FLAS_ARCH"] == N.ARCH
    assert re.search(rf"#define\s+FLAS_FORMAT_VERSION\s+{N.FORMAT_VERSION}\b", HEADER.read_text())

"""libflas built on its own (CMake, no Python extension) with AddressSanitizer and
UndefinedBehaviorSanitizer: CTest's C tests, then the C example and the attach test steering the
tiny models, all without a sanitizer report."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import llama_cpp
import pytest

from conftest import convert_tiny_flow
from flas_cpp import FlasModel

REPO = Path(__file__).resolve().parents[1]
SAN = "-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0",
       "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
PROMPT, PIRATE = "Tell me about your day.", "Talk like a pirate"


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    assert shutil.which("cmake") and shutil.which("ninja"), "cmake and ninja come with the test extra"
    d = tmp_path_factory.mktemp("asan")
    configure = ["cmake", "-S", str(REPO), "-B", str(d), "-G", "Ninja", "-DFLAS_PYTHON=OFF", "-DFLAS_TESTS=ON",
                 "-DCMAKE_BUILD_TYPE=RelWithDebInfo", f"-DCMAKE_C_FLAGS={SAN}", f"-DCMAKE_CXX_FLAGS={SAN}",
                 f"-DCMAKE_EXE_LINKER_FLAGS={SAN}", f"-DCMAKE_SHARED_LINKER_FLAGS={SAN}"]
    for cmd in (configure, ["cmake", "--build", str(d)]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return d


@pytest.fixture(scope="module")
def models(tiny, tiny_base_f32, tmp_path_factory) -> tuple[Path, Path, list[int]]:
    flow = convert_tiny_flow(tiny, tmp_path_factory.mktemp("asan-flow") / "flow-f32.gguf", "f32")
    with FlasModel(tiny_base_f32, flow, n_ctx=1024) as m:
        expected = m.generate(PROMPT, concept=PIRATE, flowtime=2.0, temperature=0.0, max_tokens=16).tokens
    return tiny_base_f32, flow, expected


def compile_sanitized(build: Path, source: Path, out: Path) -> None:
    pkg = Path(llama_cpp.__file__).resolve().parent
    cmd = ["cc", "-std=c99", *SAN.split(), str(source), "-I", str(REPO / "include"), "-I", str(pkg.parent / "include"),
           str(build / "libflas.so"), str(pkg / "lib" / "libllama.so"), f"-Wl,-rpath,{build}:{pkg / 'lib'}", "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def run_clean(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV, cwd=tempfile.gettempdir())
    report = out.stderr
    assert out.returncode == 0 and "ERROR: AddressSanitizer" not in report and "runtime error:" not in report, report[-4000:]
    return out.stdout


def test_ctest_passes_under_sanitizers(build):
    out = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"], capture_output=True, text=True,
                         env=ENV, timeout=600)
    assert out.returncode == 0 and "100% tests passed" in out.stdout, out.stdout + out.stderr


def test_the_c_example_steers_under_sanitizers(build, models, tmp_path):
    base, flow, expected = models
    exe = tmp_path / "simple"
    compile_sanitized(build, REPO / "examples" / "simple.c", exe)
    out = run_clean([str(exe), str(base), str(flow), PIRATE, PROMPT, "16", "--ids"])
    assert [int(t) for t in out.split()] == expected


def test_attaching_under_sanitizers(build, models, tmp_path):
    base, flow, expected = models
    exe = tmp_path / "attach"
    compile_sanitized(build, REPO / "tests" / "c" / "attach.c", exe)
    *tokens, seen = run_clean([str(exe), str(base), str(flow), PIRATE, PROMPT, "16"]).split("\n")[:-1]
    assert [int(t) for t in tokens] == expected and seen == "result_norm 16"


def test_flas_cli_under_sanitizers(build, models):
    base, flow, _ = models
    out = run_clean([str(build / "flas-cli"), "-m", str(base), "-f", str(flow), "-c", PIRATE, "-p", PROMPT,
                     "--compare", "--n-predict", "8", "--n-ctx", "512"])
    assert "--- baseline (no steering)" in out and "--- steered:" in out

"""Decode speed through the C API against FlasModel, side by side in one run.

    python benchmarks/c_api_bench.py [--out docs/PERFORMANCE.md]

benchmarks/c/decode.c (compiled here against libflas) and FlasModel generate the same steered
greedy reply on the full-size test models (Q4_K_M base, q8_0 flow, N = 2), alternating round by
round; tokens per second from the first token to the last. Also the size libflas adds to the wheel.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import flas_cpp
from flas_cpp import FlasModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CONCEPT, machine, prepare_models  # noqa: E402
from sections import replace_section  # noqa: E402

TITLE = "## The C API"
PROMPT = "Tell me about your day."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=Path.home() / ".cache" / "flas-cpp" / "bench-full")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md")
    a = ap.parse_args(argv)
    paths = prepare_models(a.models, "full", ["Q4_K_M"], ["q8_0"])
    base, flow = paths["base-Q4_K_M"], paths["flow-q8_0"]
    lib = Path(flas_cpp.get_library())
    exe = Path(tempfile.mkdtemp()) / "decode"
    subprocess.run(["cc", "-std=c99", "-O2", str(Path(__file__).resolve().parent / "c" / "decode.c"), "-I",
                    flas_cpp.get_include(), str(lib), f"-Wl,-rpath,{lib.parent}", "-o", str(exe)], check=True)
    c_tps, py_tps = [], []
    for r in range(a.rounds):
        for which in (("c", "py") if r % 2 == 0 else ("py", "c")):
            if which == "c":
                out = subprocess.run([str(exe), str(base), str(flow), CONCEPT, PROMPT, str(a.tokens), "2",
                                      str(a.threads)], capture_output=True, text=True, check=True)
                c_tps.append(float(out.stdout.split()[3]))
            else:
                with FlasModel(base, flow, n_ctx=2048, n_threads=a.threads) as m:
                    g = m.generate(PROMPT, concept=CONCEPT, flowtime=2.0, n_steps=2, temperature=0.0,
                                   max_tokens=a.tokens)
                    py_tps.append((len(g.tokens) - 1) / (g.seconds - g.prompt_seconds) if len(g.tokens) > 1 else 0.0)
        print(f"round {r + 1}: C {c_tps[-1]:.2f} tok/s, FlasModel {py_tps[-1]:.2f} tok/s", file=sys.stderr)
    ratio = float(np.median(np.array(c_tps) / np.array(py_tps)))
    size = lib.stat().st_size
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": "python " + " ".join(sys.argv),
              "c_tps": c_tps, "py_tps": py_tps, "ratio": ratio, "libflas_bytes": size, "tokens": a.tokens}
    md = "\n".join([
        "", TITLE, "",
        f"Measured {result['date']} on {result['machine']}, command `{result['command']}`: Q4_K_M base + q8_0 flow "
        f"(full-size test models), one steered greedy request (T = 2, N = 2) of {a.tokens} tokens, "
        f"benchmarks/c/decode.c through libflas against FlasModel, alternating ({a.rounds} rounds, a fresh load each); "
        "tokens per second from the first token to the last.", "",
        "| measure | value | target | met |", "|---|---|---|---|",
        f"| decode, C API / FlasModel | {np.median(c_tps):.2f} / {np.median(py_tps):.2f} tok/s = {ratio:.3f} | "
        f"equal within noise | {'yes' if abs(ratio - 1) <= 0.03 else 'NO'} |",
        f"| libflas in the wheel | {size / 2**20:.2f} MiB | <= 2 MB | {'yes' if size <= 2e6 else 'NO'} |", ""])
    print(md)
    a.out.with_name("PERFORMANCE-c-api.json").write_text(json.dumps(result, indent=2) + "\n")
    a.out.write_text(replace_section(a.out.read_text(), TITLE, md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

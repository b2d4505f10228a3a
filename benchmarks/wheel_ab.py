"""Decode speed of two builds of flas-cpp side by side: steered/plain of each, in one run.

    python benchmarks/wheel_ab.py --old /tmp/vold/bin/python --new python --rounds 8

(a build in a venv made with --system-site-packages finds libllama with LD_LIBRARY_PATH set to
llama_cpp/lib of the site-packages that holds llama-cpp-python)

Each build runs in a process of its own (its Python, its wheel) holding the same base and flow;
the parent asks them in turn, round after round (the first build rotating), for one plain and
one steered greedy generation, so that machine drift falls on both alike. A round's figure is
steered tokens/s over plain tokens/s (decode only, from Generation.tokens_per_second); the
result is each build's median and their ratio, new over old.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys
from flas_cpp import FlasModel
base, flow, n_steps, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m = FlasModel(base, flow, n_ctx=1024)
prompt = "Tell me about your day."
m.generate(prompt, concept="Talk like a pirate", max_tokens=4, temperature=0.0, n_steps=n_steps)  # warm
print("ready", flush=True)
for line in sys.stdin:
    steered = line.strip() == "steered"
    g = m.generate(prompt, concept="Talk like a pirate" if steered else None, flowtime=2.0 if steered else 0.0,
                   n_steps=n_steps, max_tokens=tokens, temperature=0.0)
    print(json.dumps({"tps": g.tokens_per_second, "n": len(g.tokens)}), flush=True)
"""


class Build:
    def __init__(self, name: str, python: str, base: Path, flow: Path, n_steps: int, tokens: int):
        self.name = name
        self.proc = subprocess.Popen([python, "-c", WORKER, str(base), str(flow), str(n_steps), str(tokens)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/tmp")
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {name} build did not start")
        self.ratios: list[float] = []

    def ask(self, what: str) -> float:
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["tps"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main() -> None:
    cache = Path.home() / ".cache" / "flas-cpp" / "bench-full"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the Python of the build before the change")
    ap.add_argument("--new", default=sys.executable, help="the Python of the build after it")
    ap.add_argument("--base", type=Path, default=cache / "base-Q4_K_M.gguf")
    ap.add_argument("--flow", type=Path, default=cache / "flow-q5_k_s-st.gguf")
    ap.add_argument("--n-steps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=8)
    a = ap.parse_args()
    builds = [Build("old", a.old, a.base, a.flow, a.n_steps, a.tokens), Build("new", a.new, a.base, a.flow, a.n_steps, a.tokens)]
    try:
        for r in range(a.rounds):
            for b in builds[r % 2:] + builds[:r % 2]:
                plain, steered = b.ask("plain"), b.ask("steered")
                b.ratios.append(steered / plain)
                print(f"round {r + 1} {b.name}: steered/plain {steered / plain:.3f} ({steered:.2f} / {plain:.2f} tok/s)",
                      flush=True)
    finally:
        for b in builds:
            b.close()
    old, new = (statistics.median(b.ratios) for b in builds)
    spread = {b.name: (min(b.ratios), max(b.ratios)) for b in builds}
    print(f"steered/plain median: old {old:.3f}, new {new:.3f}; new/old {new / old:.3f} "
          f"(ranges: old {spread['old'][0]:.3f}-{spread['old'][1]:.3f}, new {spread['new'][0]:.3f}-{spread['new'][1]:.3f})")


if __name__ == "__main__":
    main()

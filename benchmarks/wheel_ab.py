"""Decode speed of two builds of flas-cpp side by side: steered/plain of each, in one run.

    python benchmarks/wheel_ab.py --old /tmp/vold/bin/python --new python --rounds 8

(a build in a venv made with --system-site-packages finds libllama with LD_LIBRARY_PATH set to
llama_cpp/lib of the site-packages that holds llama-cpp-python)

Each build runs in a process of its own (its Python, its wheel) holding the same base and flow,
one plain and one steered sequence; the parent asks them in turn, round after round (the first
build rotating), for a few tokens of each sequence, decoded alternately, so that machine drift
falls on all four alike. A build's figure is steered over plain decode speed, from the summed
decode times of all its rounds (and the median of its rounds, with their range); the result is
new over old.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sections import replace_section  # noqa: E402

# The worker steps its sequences itself, as benchmarks/run.py does (flas_exclusive and the
# flas_seq_* calls: the runtime's decode alone, a token at a time): sequence 0 plain, sequence 1
# steered, greedy. It understands both extension APIs (Model(params) and the older keywords).
WORKER = r"""
import json, sys, time
import numpy as np
from flas_cpp import _native
base, flow, n_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
core = _native.core()
if hasattr(_native, "model_params"):
    m = core.Model(_native.model_params(base=base, flow=flow, n_ctx=4096, n_seq=2))
else:
    m = core.Model(base, flow, n_ctx=4096, n_seq=2)

def ex(fn):
    out = []
    m.exclusive(lambda: out.append(fn()))
    return out[0]

prompt = m.prompt_tokens("Tell me about your day.")
nxt = {}

def start():
    ex(lambda: m.seq_set_steering(0, "", 0.0, n_steps))
    ex(lambda: m.seq_set_steering(1, "Talk like a pirate", 2.0, n_steps))
    for s in (0, 1):
        ex(lambda: m.seq_decode([(s, prompt)]))
        nxt[s] = int(np.argmax(ex(lambda: m.seq_get(s, "logits"))))
    return len(prompt)

n_past = start()
print("ready", flush=True)
for line in sys.stdin:
    k, spent = int(line), {0: 0.0, 1: 0.0}
    if n_past + k >= 2000:  # a sequence holds 2048: start again, untimed
        n_past = start()
    for _ in range(k):
        for s in (0, 1):
            t0 = time.perf_counter()
            ex(lambda: m.seq_decode([(s, [nxt[s]])]))
            spent[s] += time.perf_counter() - t0
            nxt[s] = int(np.argmax(ex(lambda: m.seq_get(s, "logits"))))
    n_past += k
    print(json.dumps({"plain": spent[0], "steered": spent[1]}), flush=True)
"""


class Build:
    def __init__(self, name: str, python: str, base: Path, flow: Path, n_steps: int):
        self.name = name
        self.proc = subprocess.Popen([python, "-c", WORKER, str(base), str(flow), str(n_steps)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/tmp")
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {name} build did not start")
        self.plain, self.steered, self.ratios = 0.0, 0.0, []

    def step(self, k: int) -> float:
        self.proc.stdin.write(f"{k}\n")
        self.proc.stdin.flush()
        t = json.loads(self.proc.stdout.readline())
        self.plain += t["plain"]
        self.steered += t["steered"]
        self.ratios.append(t["plain"] / t["steered"])  # speed: steered over plain
        return self.ratios[-1]

    def ratio(self) -> float:
        return self.plain / self.steered

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
    ap.add_argument("--tokens", type=int, default=8, help="tokens of each sequence per round")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--labels", default="old,new", help="what the two builds are, for the report (e.g. two commits)")
    ap.add_argument("--out", type=Path, help="write the section '## Two builds side by side' of this markdown file")
    a = ap.parse_args()
    builds = [Build("old", a.old, a.base, a.flow, a.n_steps), Build("new", a.new, a.base, a.flow, a.n_steps)]
    try:
        for r in range(a.rounds):
            line = []
            for b in builds[r % 2:] + builds[:r % 2]:
                line.append(f"{b.name} {b.step(a.tokens):.3f}")
            print(f"round {r + 1}: steered/plain " + ", ".join(line), flush=True)
    finally:
        for b in builds:
            b.close()
    old, new = builds
    print(f"steered/plain, summed decode times: old {old.ratio():.4f}, new {new.ratio():.4f}; "
          f"new/old {new.ratio() / old.ratio():.4f}")
    print(f"round medians: old {statistics.median(old.ratios):.4f} ({min(old.ratios):.3f}-{max(old.ratios):.3f}), "
          f"new {statistics.median(new.ratios):.4f} ({min(new.ratios):.3f}-{max(new.ratios):.3f}); "
          f"new/old {statistics.median(new.ratios) / statistics.median(old.ratios):.4f}")
    if a.out:
        labels = a.labels.split(",")
        ms = {b.name: (1000 * b.plain / (a.rounds * a.tokens), 1000 * b.steered / (a.rounds * a.tokens)) for b in builds}
        md = "\n".join([
            "## Two builds side by side",
            "",
            f"`python benchmarks/wheel_ab.py --old OLD/bin/python --rounds {a.rounds} --tokens {a.tokens} "
            f"--labels {a.labels}` on {platform.machine()}, {os.cpu_count()} cores ({platform.processor() or 'cpu'}), "
            f"{a.base.name} + {a.flow.name}, N = {a.n_steps}, each build in its own process, {a.tokens} tokens of each "
            "sequence per round, the builds alternating round by round (runtime decode alone, as benchmarks/run.py).",
            "",
            "| build | plain ms/token | steered ms/token | steered/plain (summed) | round median (range) |",
            "|---|---|---|---|---|",
            *[f"| {label} | {ms[b.name][0]:.1f} | {ms[b.name][1]:.1f} | {b.ratio():.4f} | "
              f"{statistics.median(b.ratios):.4f} ({min(b.ratios):.3f}-{max(b.ratios):.3f}) |"
              for label, b in zip(labels, builds)],
            "",
            f"New over old: {new.ratio() / old.ratio():.4f} (summed times), "
            f"{statistics.median(new.ratios) / statistics.median(old.ratios):.4f} (medians).",
            ""])
        text = a.out.read_text() if a.out.exists() else ""
        a.out.write_text(replace_section(text, "## Two builds side by side", md))
    print(f"decode ms/token: old plain {1000 * old.plain / (a.rounds * a.tokens):.1f} steered "
          f"{1000 * old.steered / (a.rounds * a.tokens):.1f}; new plain {1000 * new.plain / (a.rounds * a.tokens):.1f} "
          f"steered {1000 * new.steered / (a.rounds * a.tokens):.1f}")


if __name__ == "__main__":
    main()

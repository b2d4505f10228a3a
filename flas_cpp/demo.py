"""`flas-demo`: baseline and steered generation side by side, on the bundled demo model by default.

With no arguments it builds (once, cached) the tiny demo models with the test-model
generator, converts them to GGUF, and generates. The demo model has random weights, so its
text is gibberish: what it shows is that the steering runs, what it changes, and what it costs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
from pathlib import Path

from .devices import add_device_args, device_kwargs, memory_table
from .model import FlasModel, Generation

DEFAULT_CACHE = Path(os.environ.get("FLAS_CPP_CACHE", Path.home() / ".cache" / "flas-cpp")) / "demo"


def demo_models(cache: Path, rebuild: bool = False) -> tuple[Path, Path]:
    """(base GGUF, flow GGUF) of the tiny demo models, built into `cache` on first use."""
    base, flow = cache / "demo-base-f16.gguf", cache / "demo-flow-bf16.gguf"
    if rebuild and cache.exists():
        shutil.rmtree(cache)
    if base.is_file() and flow.is_file():
        return base, flow
    from .convert import convert_base, convert_flow
    from .testing.make_models import make_models

    print(f"building the demo models in {cache} (once) ...", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / "checkpoints"
    hf_dir, flow_st = make_models(work, "tiny", seed=0, quiet=True)
    convert_base(hf_dir, base, "f16", force=True, progress=False)
    convert_flow(flow_st, flow, base_config=hf_dir / "config.json", outtype="bf16", force=True, progress=False)
    shutil.rmtree(work)
    return base, flow


def side_by_side(left: Generation, right: Generation, title_right: str, width: int = 38) -> str:
    def column(g: Generation) -> list[str]:
        lines = []
        for para in g.text.splitlines() or [""]:
            lines += textwrap.wrap(para, width) or [""]
        return lines + ["", f"{len(g.tokens)} tokens, {g.tokens_per_second:.1f} tok/s",
                        f"prefill {g.n_prompt_tokens} tokens in {g.prompt_seconds * 1000:.0f} ms"]

    a, b = column(left), column(right)
    rows = [f"{'baseline (no steering)':<{width}} | {title_right}", f"{'-' * width}-+-{'-' * width}"]
    for i in range(max(len(a), len(b))):
        rows.append(f"{a[i] if i < len(a) else '':<{width}} | {b[i] if i < len(b) else ''}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flas-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="base model GGUF (default: the demo model)")
    ap.add_argument("--flow", help="flow GGUF (default: the demo model's)")
    ap.add_argument("--prompt", default="Tell me about your day.")
    ap.add_argument("--concept", default="Talk like a pirate")
    ap.add_argument("--flowtime", type=float, default=2.0)
    ap.add_argument("--n-steps", type=int)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temp", type=float, default=0.0, help="0 = greedy (default), so the two columns differ only by steering")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"where the demo models live (default {DEFAULT_CACHE})")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the demo models")
    ap.add_argument("--memory", action="store_true", help="print what each device holds (after generating)")
    add_device_args(ap)
    a = ap.parse_args(argv)
    if (a.base is None) != (a.flow is None):
        ap.error("pass both --base and --flow, or neither for the demo model")
    try:
        base, flow = (a.base, a.flow) if a.base else demo_models(a.cache_dir, a.rebuild)
        model = FlasModel(base, flow, n_ctx=1024, n_threads=a.threads, **device_kwargs(a))
        kw = dict(n_steps=a.n_steps, max_tokens=a.max_tokens, temperature=a.temp, seed=a.seed)
        baseline, steered = model.compare(a.prompt, concept=a.concept, flowtime=a.flowtime, **kw)
    except (ValueError, RuntimeError) as e:
        print(f"flas-demo: error: {e}", file=sys.stderr)
        return 2
    print(f"base: {base}\nflow: {flow}  (layer {model.flow_info['layer']}, N = {steered.n_steps}, "
          f"on {model.flow_device})\nprompt: {a.prompt!r}\n")
    print(side_by_side(baseline, steered, f"steered: {a.concept!r}, T = {a.flowtime:g}"))
    if baseline.tokens_per_second > 0:
        print(f"\nsteered/baseline decode speed: {steered.tokens_per_second / baseline.tokens_per_second:.2f}")
    if a.memory:
        print("\n" + memory_table(model.memory()))
    if not a.base:
        print("\n(the demo model has random weights: its text is noise; the difference between the columns is "
              "the steering)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

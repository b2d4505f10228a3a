"""`flas-convert` (also `python convert_weights.py`): base model and FLAS flow checkpoints -> GGUF.

Base models: Gemma-2, Gemma-3 (text checkpoints, with or without linear RoPE scaling, and the language
model of a multimodal Gemma3ForConditionalGeneration checkpoint), and Qwen3/Llama with a
SentencePiece vocabulary.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .base import BASE_OUTTYPES, convert_base
from .common import ConversionError
from .flow import DEFAULT_FLOW_OUTTYPE, FLOW_OUTTYPES, convert_flow

EPILOG = """examples:
  flas-convert base gemma-2-2b-it/ -o gemma-2-2b-it-Q4_K_M.gguf --outtype Q4_K_M
  flas-convert flow flas-gemma-2-2b-it/flas-gemma-2-2b-it.safetensors -o flas-gemma-2-2b-it.gguf --outtype q8_0
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flas-convert", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{base,flow,pull,list,rm}")

    b = sub.add_parser("base", help="a Hugging Face gemma2, gemma3_text, gemma3 (multimodal: its language "
                                        "model), qwen3 or llama checkpoint directory (SentencePiece vocabulary) "
                                        "-> llama.cpp GGUF")
    b.add_argument("hf_dir", help="directory with config.json, *.safetensors, tokenizer.model, tokenizer_config.json")
    b.add_argument("--outtype", default="f16", metavar="TYPE",
                   help=f"one of {', '.join(BASE_OUTTYPES)} (K-quants through llama.cpp's quantizer); default f16")
    b.add_argument("--threads", type=int, default=0, help="quantizer threads (default: all cores)")

    f = sub.add_parser("flow", help="a FLAS flow checkpoint (.safetensors + config.json) -> flow GGUF")
    f.add_argument("flow", help="the flow .safetensors file")
    f.add_argument("--config", help="the flow's config.json (default: config.json beside the file)")
    f.add_argument("--base-config", help="the base model's HF config.json; needed unless the flow's model_id "
                                         "is a local checkpoint directory or a known base (google/gemma-2-2b-it, "
                                         "google/gemma-3-270m, ...)")
    f.add_argument("--outtype", default=DEFAULT_FLOW_OUTTYPE, choices=list(FLOW_OUTTYPES),
                   help="matrix type, or a K-quant recipe (q5_k_s: the MLP q5_k, the attention q6_k; q5_k_m, "
                        "q4_k_m: the MLP's inputs q5_k or q4_k, the rest of what decode reads q6_k; in each, what "
                        "decode never reads f16; docs/FLOW_GGUF.md); norms, gates and biases stay f32 (default "
                        f"{DEFAULT_FLOW_OUTTYPE}: within every speed and quality target of docs/PERFORMANCE.md; q6_k "
                        "for the closest match to f32 at 1-2%% slower decode)")

    for p in (b, f):
        p.add_argument("-o", "--out", required=True, help="output .gguf file")
        p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
        p.add_argument("--dry-run", action="store_true", help="check everything and print the summary; write nothing")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    pl = sub.add_parser("pull", help="download and convert a FLAS flow repository and its base into the cache "
                                     "(what --hf does on first use)")
    pl.add_argument("repo", help="a FLAS flow repository, e.g. flas-ai/flas-gemma-2-2b-it")
    pl.add_argument("--hf-base", metavar="REPO[:QUANT]", help="the base instead of the flow's model_id")
    pl.add_argument("--outtype", default=DEFAULT_FLOW_OUTTYPE, choices=list(FLOW_OUTTYPES), help="the flow's type")
    sub.add_parser("list", help="the converted models in the cache: source, commit, type, size")
    r = sub.add_parser("rm", help="remove what was converted from a repository")
    r.add_argument("repo")
    return ap


def hub_command(args) -> int:
    from ..hub import INTERRUPTED, HubError, cache_root, cached, pull, remove

    try:
        if args.command == "pull":
            base, flow = pull(args.repo, base=args.hf_base, flow_outtype=args.outtype)
            print(f"base: {base}\nflow: {flow}")
        elif args.command == "list":
            entries = cached()
            for e in entries:
                print(f"{e['repo']:<40} {e['commit'][:12]}  {e['outtype']:<7} {e['bytes'] / 2**20:9.1f} MiB  {e['path']}")
            total = sum(e["bytes"] for e in entries)
            print(f"{len(entries)} file{'' if len(entries) == 1 else 's'}, {total / 2**20:.1f} MiB in {cache_root()}")
        else:
            print(f"removed {args.repo}: {remove(args.repo) / 2**20:.1f} MiB freed")
    except (HubError, ConversionError) as e:
        print(f"flas-convert {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flas-convert {args.command}: {INTERRUPTED}", file=sys.stderr)
        return 130
    return 0


def _terminate(signum, frame):
    raise KeyboardInterrupt  # unwinds through the converters' cleanup, like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)  # a killed conversion removes its temporary files too
    if args.command in ("pull", "list", "rm"):
        return hub_command(args)
    try:
        if args.command == "base":
            line = convert_base(args.hf_dir, args.out, args.outtype, args.force, args.dry_run,
                                not args.no_progress, args.threads)
        else:
            line = convert_flow(args.flow, args.out, args.config, args.base_config, args.outtype, args.force,
                                args.dry_run, not args.no_progress)
    except ConversionError as e:
        print(f"flas-convert {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flas-convert {args.command}: interrupted; no output written", file=sys.stderr)
        return 130
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

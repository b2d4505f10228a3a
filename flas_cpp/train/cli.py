"""flas-train: train a FLAS flow for a base GGUF on this machine.

The default recipe trains the built-in concepts (writing in French, Spanish, German, Italian)
for a pretrained base such as Gemma-3 270M in under an hour on 2 cores: the teacher's
continuations come from the base itself through the runtime, the flow learns to make the
student write them at flowtime T, and OUT receives flow.safetensors + config.json (the released
format) and the flow GGUF for flas-cpp."""

from __future__ import annotations

import argparse
import sys

from .concepts import LANGUAGES, PROMPTS, load_concepts, load_prompts
from .recipe import Recipe

_R = Recipe()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flas-train", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="the base model GGUF the flow is for (gemma2, gemma3, qwen3 or llama)")
    ap.add_argument("--out", required=True, help="output directory: the flow, its checkpoint and its teacher data")
    ap.add_argument("--concepts", help="JSON list of concepts: {\"name\", \"wordings\": [...], \"teacher\": \"... "
                                       "{prompt} ...\", \"judge\": \"fr\"} (default: the built-in languages)")
    ap.add_argument("--prompts", help="training prompts, one per line or a JSON list (default: 120 built-in "
                                      "instructions, 20 topics x 6 forms)")
    ap.add_argument("--layer", type=int, help="decoder layer L to steer (default: two thirds of the way up)")
    ap.add_argument("--steps", type=int, default=_R.steps, help=f"optimizer steps, concepts taken in turn "
                                                                 f"(default {_R.steps})")
    ap.add_argument("--batch", type=int, default=_R.batch, help=f"examples per step (default {_R.batch})")
    ap.add_argument("--lr", type=float, default=_R.lr, help=f"AdamW learning rate (default {_R.lr})")
    ap.add_argument("--flowtime", type=float, default=_R.flowtime,
                    help=f"the strength T at which the flow reaches the teacher's style; T = 2 then steers a "
                         f"little short of it (default {_R.flowtime})")
    ap.add_argument("--n-steps", type=int, default=_R.n_steps,
                    help=f"Euler steps, as the runtime will integrate (default {_R.n_steps})")
    ap.add_argument("--max-tokens", type=int, default=_R.max_tokens,
                    help=f"length of each teacher continuation (default {_R.max_tokens})")
    ap.add_argument("--samples", type=int, default=_R.samples,
                    help=f"teacher continuations per prompt: the greedy one and samples - 1 sampled at "
                         f"--sample-temperature, each kept if it shows the concept (default {_R.samples})")
    ap.add_argument("--sample-temperature", type=float, default=_R.sample_temperature,
                    help=f"temperature of the sampled teacher continuations (default {_R.sample_temperature})")
    ap.add_argument("--kl-weight", type=float, default=_R.kl_weight,
                    help=f"weight of the KL divergence to the teacher's next-token distributions, beside the "
                         f"cross-entropy of its tokens: more fluent, and as often in the concept as the teacher "
                         f"(docs/QUALITY.md); 0: the tokens alone (default {_R.kl_weight:g})")
    ap.add_argument("--seed", type=int, default=_R.seed, help=f"seeds the flow's initial weights, the sampled "
                                                              f"teacher continuations and every batch (default {_R.seed})")
    ap.add_argument("--checkpoint-every", type=int, default=_R.checkpoint_every,
                    help=f"steps between checkpoints (default {_R.checkpoint_every})")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                                                          "(same arguments; the result equals an uninterrupted run)")
    ap.add_argument("--outtype", default="q8_0", help="the flow GGUF's type: f32, f16, bf16, q8_0, ... (default q8_0)")
    ap.add_argument("--threads", type=int, default=0, help="PyTorch threads (default: every core)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    try:
        from .trainer import train
    except ImportError as e:
        ap.exit(2, f"flas-train: error: {e.name or e} is missing: install the trainer's extra, "
                   "pip install 'flas-cpp[train]'\n")
    try:
        concepts = load_concepts(a.concepts) if a.concepts else LANGUAGES
        prompts = load_prompts(a.prompts) if a.prompts else PROMPTS
        recipe = Recipe(layer=a.layer, steps=a.steps, batch=a.batch, lr=a.lr, flowtime=a.flowtime, n_steps=a.n_steps,
                        max_tokens=a.max_tokens, samples=a.samples, sample_temperature=a.sample_temperature,
                        kl_weight=a.kl_weight, seed=a.seed, checkpoint_every=a.checkpoint_every)
        path = train(a.base, a.out, concepts, prompts, recipe, resume=a.resume, outtype=a.outtype,
                     threads=a.threads, progress=not a.quiet)
    except (ValueError, OSError) as e:
        ap.exit(2, f"flas-train: error: {e}\n")
    except KeyboardInterrupt:
        ap.exit(130, "\nflas-train: interrupted; continue with the same command and --resume\n")
    print(f"flow: {path}\nrun it: flas-chat {a.base} {path}   (or FlasModel({a.base!r}, {str(path)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Steering quality (issue 21): how often a flow makes the base write in its concept's style on
prompts it never trained on, at each strength T, beside the in-context teacher, and how fluent
that text is.

    python benchmarks/quality.py BASE.gguf FLOW.gguf [--concepts FILE] [--out docs/QUALITY-results.md]

Judges need no model (flas_cpp.train.judges: stop-word language identification). Prompts: the
20 held-out prompts of ../shared/data/concepts_prompts.json (never used by flas-train). For each
concept, its trained wordings' first and a wording that no training string has (--unseen).
Greedy, 32 tokens, stopping at a blank line. Fluency: the text's mean token log-likelihood under
the unsteered base given the same (student) prompt, scored by llama-cpp-python on the base GGUF,
an evaluator independent of flas-cpp. Run it from outside the source tree.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import llama_cpp
import numpy as np

from flas_cpp import FlasModel
from flas_cpp.train import LANGUAGES
from flas_cpp.train.judges import JUDGES

HELD_OUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "concepts_prompts.json"
# Wordings that no training string has (the built-in languages are trained on "Write in French",
# "Answer in French.", "Respond in French", "Use the French language", "French").
UNSEEN = {"french": "Please reply to me in French", "spanish": "Your answer should be in Spanish",
          "german": "Could you say that in German?", "italian": "I would like the reply in Italian"}
FLOWTIMES = (0.0, 0.5, 1.0, 2.0, 3.0)


class Scorer:
    """Mean log-likelihood per token of a continuation under the unsteered base (llama-cpp-python)."""

    def __init__(self, base: str):
        self.llm = llama_cpp.Llama(model_path=base, n_ctx=1024, logits_all=True, verbose=False, n_threads=2)

    def __call__(self, prompt: list[int], tokens: list[int]) -> float | None:
        if not tokens:
            return None
        self.llm.reset()
        self.llm.eval(prompt + tokens)
        logits = np.asarray(self.llm.scores[len(prompt) - 1:len(prompt) + len(tokens) - 1], dtype=np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        return float(np.mean(logp[np.arange(len(tokens)), tokens]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("flow")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args()
    prompts = json.loads(HELD_OUT.read_text())["prompts"]
    started = time.time()
    m = FlasModel(a.base, a.flow, n_seq=4, n_ctx=4096)
    scorer = Scorer(a.base)
    gen = dict(max_tokens=a.max_tokens, temperature=0.0, stop=["\n\n"])
    student = [m.prompt_tokens(p) for p in prompts]
    rows = []
    for c in LANGUAGES:
        judge = JUDGES[c.judge]
        teacher = [m.tokenize(c.teacher.format(prompt=p, concept=c.wordings[0]), add_bos=True) for p in prompts]
        tg = m.generate_many([dict(gen, prompt=t, flowtime=0.0) for t in teacher])
        row = {"concept": c.name, "teacher": np.mean([judge(g.text) for g in tg]),
               "fluency_teacher": np.mean([s for s in (scorer(p, g.tokens) for p, g in zip(student, tg)) if s is not None])}
        for label, wording in (("trained", c.wordings[0]), ("unseen", UNSEEN[c.name])):
            for T in FLOWTIMES:
                gs = m.generate_many([dict(gen, prompt=p, concept=wording, flowtime=T) for p in prompts])
                row[f"{label} T={T:g}"] = np.mean([judge(g.text) for g in gs])
                if T in (0.0, 2.0):
                    scores = [s for s in (scorer(p, g.tokens) for p, g in zip(student, gs)) if s is not None]
                    row[f"fluency_{label} T={T:g}"] = float(np.mean(scores))
                    row[f"example_{label} T={T:g}"] = gs[0].text
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        rows.append(row)
    lines = [f"Base {Path(a.base).name}, flow {Path(a.flow).name}; {len(prompts)} held-out prompts; greedy, "
             f"{a.max_tokens} tokens; {platform.machine()}, {time.time() - started:.0f} s.", "",
             "| concept | wording | " + " | ".join(f"T = {T:g}" for T in FLOWTIMES) + " | teacher |",
             "|---|---|" + "---|" * (len(FLOWTIMES) + 1)]
    for r in rows:
        for label in ("trained", "unseen"):
            wording = LANGUAGES[[c.name for c in LANGUAGES].index(r["concept"])].wordings[0] if label == "trained" \
                else UNSEEN[r["concept"]]
            lines.append(f"| {r['concept']} | {wording} ({label}) | "
                         + " | ".join(f"{100 * r[f'{label} T={T:g}']:.0f} %" for T in FLOWTIMES)
                         + f" | {100 * r['teacher']:.0f} % |")
    lines += ["", "Fluency (mean token log-likelihood under the unsteered base, given the student prompt; higher is "
              "more fluent):", "", "| concept | baseline (T = 0) | steered T = 2, trained wording | steered T = 2, "
              "unseen wording | teacher |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['concept']} | {r['fluency_trained T=0']:.2f} | {r['fluency_trained T=2']:.2f} | "
                     f"{r['fluency_unseen T=2']:.2f} | {r['fluency_teacher']:.2f} |")
    lines += ["", "First held-out prompt, trained wording at T = 2:", ""]
    lines += [f"- {r['concept']}: {r['example_trained T=2']!r}" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()

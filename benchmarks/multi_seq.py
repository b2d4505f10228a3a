"""Several sequences decoded together: the steering runtime, each sequence with its own concept,
against plain llama.cpp decoding the same number of sequences in one batch (same library, same
unified KV cache, same batch layout), decode steps interleaved token by token; and the peak RSS
of n_seq sequences holding their whole context."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from direct import DirectModel

CONCEPTS = ["Talk like a pirate", "Respond as a noir detective", "Use legal terminology", "Speak like Shakespeare",
            "Answer as a pirate captain", "Use mathematical notation", "Speak in programming terms",
            "Talk like a cowboy"]


def tokens(n: int, n_vocab: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(300, min(n_vocab, 30000), size=n)]


class PlainBatch:
    """llama.cpp with no eval callback, n sequences in one unified KV cache, one llama_batch per step."""

    def __init__(self, base: Path, n_seq: int, n_ctx_seq: int, n_batch: int, n_threads: int):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(base).encode(), L.llama_model_default_params())
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_seq * n_ctx_seq, n_batch, n_batch, n_seq
        cp.kv_unified = True
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.n_past = [0] * n_seq
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))

    def decode(self, entries: list[tuple[int, list[int]]]) -> None:
        b, row = self.batch, 0
        for seq, toks in entries:
            for j, t in enumerate(toks):
                b.token[row], b.pos[row], b.n_seq_id[row] = t, self.n_past[seq] + j, 1
                b.seq_id[row][0], b.logits[row] = seq, j == len(toks) - 1
                row += 1
            self.n_past[seq] += len(toks)
        b.n_tokens = row
        if self.L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


class SteeredBatch:
    """The runtime with n sequences, each steered by its own concept (T, N)."""

    def __init__(self, base: Path, flow: Path, n_seq: int, n_ctx_seq: int, n_batch: int, n_threads: int,
                 flowtime: float, n_steps: int):
        self.rt = DirectModel(base, flow, n_ctx=n_seq * n_ctx_seq, n_batch=n_batch, n_seq=n_seq, n_threads=n_threads)
        for seq in range(n_seq):
            self.rt.set_steering(seq, CONCEPTS[seq % len(CONCEPTS)], flowtime, n_steps)
        self.n_vocab = self.rt.n_vocab

    def decode(self, entries: list[tuple[int, list[int]]]) -> None:
        self.rt.decode(entries)

    def close(self) -> None:
        self.rt.close()


def prefill(cfg, n_seq: int, n_prompt: int, n_batch: int) -> None:
    for seq in range(n_seq):
        prompt = tokens(n_prompt, cfg.n_vocab, 100 + seq)
        for i in range(0, n_prompt, n_batch):
            cfg.decode([(seq, prompt[i:i + n_batch])])


def measure_multi(base: Path, flow: Path, counts: list[int], n_ctx_seq: int, n_batch: int, threads: int,
                  n_prompt: int, n_gen: int, rounds: int, flowtime: float, n_steps: int) -> list[dict]:
    """Aggregate decode tokens/s at each sequence count, plain and steered side by side."""
    rows = []
    for n in counts:
        configs = {"plain": PlainBatch(base, n, n_ctx_seq, n_batch, threads),
                   "steered": SteeredBatch(base, flow, n, n_ctx_seq, n_batch, threads, flowtime, n_steps)}
        gen = [tokens(n_gen * rounds + 2, configs["plain"].n_vocab, 200 + s) for s in range(n)]
        for cfg in configs.values():
            prefill(cfg, n, n_prompt, n_batch)
            for k in range(2):  # warm-up steps
                cfg.decode([(s, [gen[s][k]]) for s in range(n)])
        tps = {name: [] for name in configs}
        for r in range(rounds):
            order = list(configs.items()) if r % 2 == 0 else list(configs.items())[::-1]
            spent = {name: 0.0 for name in configs}
            for k in range(2 + r * n_gen, 2 + (r + 1) * n_gen):
                step = [(s, [gen[s][k]]) for s in range(n)]
                for name, cfg in order:
                    t0 = time.perf_counter()
                    cfg.decode(step)
                    spent[name] += time.perf_counter() - t0
            for name in configs:
                tps[name].append(n * n_gen / spent[name])
            print(f"multi n_seq={n} round {r + 1}: plain {tps['plain'][-1]:.2f} tok/s, "
                  f"steered {tps['steered'][-1]:.2f} tok/s", file=sys.stderr)
        for cfg in configs.values():
            cfg.close()
        del configs
        ratio = np.array(tps["steered"]) / np.array(tps["plain"])
        rows.append({"n_seq": n, "plain_tps": float(np.median(tps["plain"])),
                     "steered_tps": float(np.median(tps["steered"])), "ratio": float(np.median(ratio)),
                     "rounds": {k: v for k, v in tps.items()}})
    one = {r["n_seq"]: r for r in rows}
    if 1 in one and 4 in one:
        for r in rows:
            r["speedup_plain_vs_1"] = r["plain_tps"] / one[1]["plain_tps"]
            r["speedup_steered_vs_1"] = r["steered_tps"] / one[1]["steered_tps"]
    return rows


def rss_multi_child(args: list[str]) -> int:
    """Child process: n_seq sequences each filled to n_fill tokens, then n_gen steps together; prints peak RSS MB."""
    base, flow = args[0], args[1]
    n_seq, n_ctx_seq, n_batch, threads, n_fill, n_gen, n_steps = map(int, args[2:9])
    flowtime = float(args[9])
    cfg = PlainBatch(Path(base), n_seq, n_ctx_seq, n_batch, threads) if flow == "-" else \
        SteeredBatch(Path(base), Path(flow), n_seq, n_ctx_seq, n_batch, threads, flowtime, n_steps)
    prefill(cfg, n_seq, n_fill, n_batch)
    gen = [tokens(n_gen, cfg.n_vocab, 300 + s) for s in range(n_seq)]
    for k in range(n_gen):
        cfg.decode([(s, [gen[s][k]]) for s in range(n_seq)])
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(hwm_kb / 1024.0)
    return 0


def measure_rss_multi(script: str, base: Path, flow: Path, n_seq: int, n_ctx_seq: int, n_batch: int, threads: int,
                      n_gen: int, flowtime: float, n_steps: int) -> dict:
    """Peak RSS with every sequence holding its whole context (the flow caches fully touched)."""
    out = {"n_seq": n_seq, "n_ctx_seq": n_ctx_seq, "n_steps": n_steps}
    for name, f in (("plain", "-"), ("steered", str(flow))):
        cmd = [sys.executable, script, "--rss-multi-child", str(base), f, str(n_seq), str(n_ctx_seq), str(n_batch),
               str(threads), str(n_ctx_seq - n_gen), str(n_gen), str(n_steps), str(flowtime)]
        out[f"{name}_mb"] = float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
        print(f"peak RSS, {n_seq} sequences of {n_ctx_seq} tokens, {name}: {out[f'{name}_mb']:.0f} MB", file=sys.stderr)
    out["over_plain_mb"] = out["steered_mb"] - out["plain_mb"]
    return out


def markdown_multi(result: dict) -> list[str]:
    lines = []
    if result.get("multi"):
        m = result["multi_args"]
        lines += ["", "## Several sequences decoded together", "",
                  f"Each sequence steered by its own concept (T = {m['flowtime']}, N = {m['n_steps']}, "
                  f"{m['flow']} flow, {m['base']} base) against plain llama.cpp decoding the same number of sequences "
                  f"in one batch; one unified KV cache, {m['n_prompt']}-token prompt per sequence, {m['n_gen']} decode "
                  f"steps per round, {m['rounds']} rounds interleaved step by step; aggregate tokens/s over all "
                  "sequences, medians over rounds.", "",
                  "| sequences | plain tok/s | steered tok/s | steered/plain | plain speed-up vs 1 | steered speed-up vs 1 |",
                  "|---|---|---|---|---|---|"]
        for r in result["multi"]:
            lines.append(f"| {r['n_seq']} | {r['plain_tps']:.2f} | {r['steered_tps']:.2f} | {r['ratio']:.3f} | "
                         f"{r.get('speedup_plain_vs_1', float('nan')):.2f} | {r.get('speedup_steered_vs_1', float('nan')):.2f} |")
    if result.get("rss_multi"):
        r = result["rss_multi"]
        lines += ["", f"Peak RSS, {r['n_seq']} sequences each holding {r['n_ctx_seq']} tokens (prefilled to the end of "
                      f"their context, so every page of the flow caches is touched), N = {r['n_steps']}: plain "
                      f"{r['plain_mb']:.0f} MB, steered {r['steered_mb']:.0f} MB ({r['over_plain_mb']:+.0f} MB)."]
    return lines


def targets_multi(result: dict) -> list[tuple[str, str, str, bool]]:
    checks = []
    for r in result.get("multi", []):
        checks.append((f"{r['n_seq']} sequences, each its own concept: aggregate decode steered/plain", ">= 0.85",
                       f"{r['ratio']:.3f}", r["ratio"] >= 0.85))
    one = [r for r in result.get("multi", []) if r["n_seq"] == 1]
    if one:
        checks.append(("n_seq = 1: decode steered/plain, N = 2", ">= 0.88", f"{one[0]['ratio']:.3f}",
                       one[0]["ratio"] >= 0.88))
    if result.get("rss_multi"):
        got = result["rss_multi"]["over_plain_mb"]
        checks.append((f"peak RSS over plain llama.cpp, {result['rss_multi']['n_seq']} sequences x "
                       f"{result['rss_multi']['n_ctx_seq']} tokens", "<= +300 MB", f"{got:+.0f} MB", got <= 300))
    return checks

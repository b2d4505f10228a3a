"""flas-cpp benchmark: steering cost against plain llama.cpp, measured side by side in one run.

    python benchmarks/run.py                 # full-size models (exact Gemma-2-2B dimensions), ~30 min on 2 cores
    python benchmarks/run.py --size tiny     # the tiny test models, a smoke run of the benchmark itself

Speed configurations alternate inside one process, round after round, so machine drift
cancels; peak memory is measured in one child process per configuration. Results are
printed as a table and written as JSON and markdown (docs/PERFORMANCE.md by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import flas_cpp
from flas_cpp import FlasModel
from flas_cpp.convert import convert_base, convert_flow
from flas_cpp.testing.make_models import make_models

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multi_seq import markdown_multi, measure_multi, measure_rss_multi, rss_multi_child, targets_multi  # noqa: E402
from direct import DirectModel  # noqa: E402
from sections import kept_sections  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "concepts_prompts.json"
CONCEPT = "Talk like a pirate"
FLOWTIME = 2.0


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

def prepare_models(root: Path, size: str, base_types: list[str], flow_types: list[str]) -> dict[str, Path]:
    """Generated checkpoints converted to every benchmarked format (cached in root)."""
    ckpt = root / "checkpoints"
    if not (ckpt / "flow" / "flow.safetensors").is_file():
        print(f"generating the {size} test models in {ckpt} ...", file=sys.stderr)
        make_models(ckpt, size, seed=0, quiet=False)
    paths = {}
    for t in base_types:
        out = root / f"base-{t}.gguf"
        if not out.is_file():
            print(f"converting the base to {t} ...", file=sys.stderr)
            convert_base(ckpt / "base", out, t)
        paths[f"base-{t}"] = out
    for t in flow_types:
        out = root / f"flow-{t}.gguf"
        if not out.is_file():
            convert_flow(ckpt / "flow" / "flow.safetensors", out, base_config=ckpt / "base" / "config.json", outtype=t)
        paths[f"flow-{t}"] = out
    return paths


# ---------------------------------------------------------------------------------------------
# one configuration: plain llama.cpp, or the steering runtime
# ---------------------------------------------------------------------------------------------

class Plain:
    """llama.cpp with no eval callback at all, through llama-cpp-python's C API (same library)."""

    def __init__(self, base: Path, n_ctx: int, n_batch: int, n_threads: int):
        import llama_cpp as L

        self.L = L
        t0 = time.perf_counter()
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(base).encode(), mp)
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, 1
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.load_seconds = time.perf_counter() - t0
        self.n_batch = n_batch
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))

    def reset(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def decode(self, tokens: list[int]) -> None:
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i:i + self.n_batch]
            arr = (self.L.llama_token * len(chunk))(*chunk)
            if self.L.llama_decode(self.ctx, self.L.llama_batch_get_one(arr, len(chunk))) != 0:
                raise RuntimeError("llama_decode failed")


class Steered:
    """The steering runtime through the C API's direct sequence calls (no scheduler between steps),
    one sequence, timed like plain llama.cpp."""

    def __init__(self, base: Path, flow: Path, n_ctx: int, n_batch: int, n_threads: int, n_steps: int, flowtime: float):
        t0 = time.perf_counter()
        self.rt = DirectModel(base, flow, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads)
        self.load_seconds = time.perf_counter() - t0
        self.n_vocab = self.rt.n_vocab
        t0 = time.perf_counter()
        self.rt.set_steering(0, CONCEPT, flowtime, n_steps)  # encodes the concept
        self.concept_seconds = time.perf_counter() - t0

    def reset(self) -> None:
        self.rt.reset(0)

    def decode(self, tokens: list[int]) -> None:
        self.rt.decode([(0, tokens)])


def token_stream(n: int, n_vocab: int, seed: int = 0) -> list[int]:
    """Fixed ordinary tokens: every configuration decodes the very same sequence."""
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(300, min(n_vocab, 30000), size=n)]


def time_prefill(cfg, prompt: list[int]) -> float:
    """Prompt tokens/s from an empty sequence (the sequence is left holding the prompt)."""
    cfg.reset()
    t0 = time.perf_counter()
    cfg.decode(prompt)
    return len(prompt) / (time.perf_counter() - t0)


def time_config(cfg, prompt: list[int], gen: list[int]) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) for one pass: prompt in batches, then one token at a time."""
    cfg.reset()
    t0 = time.perf_counter()
    cfg.decode(prompt)
    t1 = time.perf_counter()
    for tok in gen:
        cfg.decode([tok])
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), len(gen) / (t2 - t1)


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------

@dataclass
class Args:
    size: str
    models: Path
    n_ctx: int
    n_batch: int
    threads: int
    prompt_tokens: int
    gen_tokens: int
    rounds: int


def measure_speed(a: Args, paths: dict, bases: list[str], flows: list[str], steps: list[int]) -> list[dict]:
    """One base at a time (memory), its configurations alternating within every round."""
    rows = []
    for b in bases:
        configs = [{"base": b, "flow": None, "n_steps": 0, "cfg": Plain(paths[f"base-{b}"], a.n_ctx, a.n_batch, a.threads)}]
        for f in flows:
            for n in steps:
                cfg = Steered(paths[f"base-{b}"], paths[f"flow-{f}"], a.n_ctx, a.n_batch, a.threads, n, FLOWTIME)
                configs.append({"base": b, "flow": f, "n_steps": n, "cfg": cfg})
        n_vocab = configs[0]["cfg"].n_vocab
        prompt, gen = token_stream(a.prompt_tokens, n_vocab, 1), token_stream(a.gen_tokens, n_vocab, 2)
        for c in configs:  # warm-up: page in the weights
            c["cfg"].reset()
            c["cfg"].decode(prompt[:8])
            c["prefill"], c["decode"] = [], []
        for r in range(a.rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for c in order:
                c["prefill"].append(time_prefill(c["cfg"], prompt))
            # decode token by token, the configurations interleaved, so drift hits all alike
            spent = {id(c): 0.0 for c in configs}
            for tok in gen:
                for c in order:
                    t0 = time.perf_counter()
                    c["cfg"].decode([tok])
                    spent[id(c)] += time.perf_counter() - t0
            for c in order:
                c["decode"].append(len(gen) / spent[id(c)])
                print(f"round {r + 1}: {label(c):28s} prefill {c['prefill'][-1]:8.1f} tok/s  "
                      f"decode {c['decode'][-1]:7.2f} tok/s", file=sys.stderr)
        plain = configs[0]
        for c in configs:
            row = {"base": b, "flow": c["flow"], "n_steps": c["n_steps"],
                   "prefill_tps": float(np.median(c["prefill"])), "decode_tps": float(np.median(c["decode"])),
                   "load_s": c["cfg"].load_seconds}
            # the ratio within each round (decode steps interleaved), then the median over rounds
            row["prefill_ratio"] = float(np.median(np.array(c["prefill"]) / np.array(plain["prefill"])))
            row["decode_ratio"] = float(np.median(np.array(c["decode"]) / np.array(plain["decode"])))
            row["rounds"] = {"prefill_tps": c["prefill"], "decode_tps": c["decode"]}
            if c["flow"]:
                row["concept_s"] = c["cfg"].concept_seconds
            rows.append(row)
        del configs
    return rows


def label(c: dict) -> str:
    return f"{c['base']} plain" if c["flow"] is None else f"{c['base']} + {c['flow']} flow, N={c['n_steps']}"


def concept_switch(a: Args, paths: dict, base: str, flow: str) -> dict:
    """Encoding a new concept, against one 128-token steered generation (N = 3)."""
    m = FlasModel(paths[f"base-{base}"], paths[f"flow-{flow}"], n_ctx=a.n_ctx, n_batch=a.n_batch, n_threads=a.threads)
    m.generate("Warm up.", concept=CONCEPT, max_tokens=4, temperature=0.0)
    times = []
    concepts = ["Respond as a noir detective", "Use mathematical notation", "Speak in programming terms"]

    for concept in concepts:  # each a new text: encoded, not found in the concept cache
        t0 = time.perf_counter()
        m.encode_concept(concept)
        times.append(time.perf_counter() - t0)
    g = m.generate("Tell me about your day.", concept=concepts[-1], flowtime=FLOWTIME, n_steps=3,
                   max_tokens=a.gen_tokens, temperature=0.0)
    gen_seconds = g.seconds / max(len(g.tokens), 1) * a.gen_tokens  # scaled to exactly gen_tokens if it stopped early
    return {"base": base, "flow": flow, "concept_s": float(np.median(times)), "generation_s": gen_seconds,
            "ratio": float(np.median(times)) / gen_seconds}


def rss_child(args: list[str]) -> int:
    """Child process: load one configuration, prefill, decode, print the peak RSS in MB."""
    base, flow, n_ctx, n_batch, threads, n_prompt, n_gen = args[0], args[1], *map(int, args[2:])
    cfg = Plain(Path(base), n_ctx, n_batch, threads) if flow == "-" else \
        Steered(Path(base), Path(flow), n_ctx, n_batch, threads, 3, FLOWTIME)
    time_config(cfg, token_stream(n_prompt, cfg.n_vocab, 1), token_stream(n_gen, cfg.n_vocab, 2))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the forking parent
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(hwm_kb / 1024.0)
    return 0


def measure_rss(a: Args, paths: dict, base: str, flows: list[str]) -> list[dict]:
    out = []
    for flow in [None, *flows]:
        cmd = [sys.executable, __file__, "--rss-child", str(paths[f"base-{base}"]),
               str(paths[f"flow-{flow}"]) if flow else "-", str(a.n_ctx), str(a.n_batch), str(a.threads),
               str(a.prompt_tokens), str(a.gen_tokens)]
        mb = float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
        out.append({"base": base, "flow": flow, "n_steps": 3 if flow else 0, "peak_rss_mb": mb})
        print(f"peak RSS {base} {flow or 'plain'}: {mb:.0f} MB", file=sys.stderr)
    plain = out[0]["peak_rss_mb"]
    for r in out:
        r["over_plain_mb"] = r["peak_rss_mb"] - plain
    return out


def measure_quality(a: Args, paths: dict, base: str, flows: list[str], prompts: list[str], concepts: list[str]) -> list[dict]:
    """Cosine and relative error of the steered displacement (steered - unsteered rows) against the f32 flow."""
    def displacements(flow: str) -> list[np.ndarray]:
        m = FlasModel(paths[f"base-{base}"], paths[f"flow-{flow}"], n_ctx=1024, n_threads=a.threads)
        out = []
        for concept in concepts:
            for p in prompts:
                t = m.trace(p, concept=concept, flowtime=FLOWTIME, n_steps=3)
                out.append((t["steered"] - t["unsteered"]).astype(np.float64))
        return out

    ref = displacements("f32")
    rows = []
    for flow in flows:
        got = displacements(flow)
        cos = [float((g * r).sum() / np.linalg.norm(g) / np.linalg.norm(r)) for g, r in zip(got, ref)]
        rel = [float(np.linalg.norm(g - r) / np.linalg.norm(r)) for g, r in zip(got, ref)]
        rows.append({"flow": flow, "cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos)),
                     "rel_err_mean": float(np.mean(rel)), "rel_err_max": float(np.max(rel)), "n_prompts": len(ref)})
        print(f"quality {flow}: cosine mean {np.mean(cos):.6f} min {np.min(cos):.6f}, rel err mean {np.mean(rel):.4f}",
              file=sys.stderr)
    return rows


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = flas_cpp.build_info()
    return (f"{cpu}, {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
            f"llama.cpp via llama-cpp-python {info['llama_cpp_python']} (ggml {info['ggml_version']}, "
            f"{info['ggml_commit']}), backends {', '.join(info['backends'])}")


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [f"Measured {result['date']} on {result['machine']}.", "",
             f"Command: `{result['command']}`", ""]
    earlier = {}
    for part, where in result.get("measured", {}).items():
        if where != f"{result['date']} `{result['command']}`":
            earlier.setdefault(where, []).append(part)
    if earlier:
        lines += ["Parts from earlier runs (kept when a run skips them): " +
                  "; ".join(f"{', '.join(parts)}: {where}" for where, parts in earlier.items()) + ".", ""]
    lines += [
             f"Models: {result['size']} test models (random weights, exact shapes); n_ctx {a['n_ctx']}, "
             f"n_batch {a['n_batch']}, {a['threads']} threads, prompt {a['prompt_tokens']} tokens, "
             f"{a['gen_tokens']} decoded tokens, {a['rounds']} rounds (prefills alternating, decode steps interleaved token by token); speeds are medians over rounds, ratios the median of the per-round ratios; "
             f"steering T = {FLOWTIME}.", "",
             "Prefill runs are minutes apart (alternating order), so their ratios carry more drift than the "
             "decode ratios, whose steps are interleaved token by token.", "",
             "| base | flow | N | prefill tok/s | decode tok/s | prefill steered/plain | decode steered/plain | load s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["speed"]:
        lines.append(f"| {r['base']} | {r['flow'] or 'plain llama.cpp'} | {r['n_steps'] or '-'} | {r['prefill_tps']:.1f} | "
                     f"{r['decode_tps']:.2f} | {r['prefill_ratio']:.3f} | {r['decode_ratio']:.3f} | {r['load_s']:.2f} |")
    if result.get("concept"):
        c = result["concept"]
        lines += ["", f"Concept switch ({c['base']} + {c['flow']} flow): {c['concept_s'] * 1000:.0f} ms to encode a new "
                      f"concept = {c['ratio'] * 100:.1f}% of one {a['gen_tokens']}-token steered generation "
                      f"({c['generation_s']:.1f} s)."]
    if result.get("rss"):
        lines += ["", "| peak RSS (separate processes, prefill + decode) | MB | over plain |", "|---|---|---|"]
        for r in result["rss"]:
            lines.append(f"| {r['base']} + {r['flow'] + ' flow, N=3' if r['flow'] else 'plain llama.cpp'} | "
                         f"{r['peak_rss_mb']:.0f} | {r['over_plain_mb']:+.0f} |")
    if result.get("quality"):
        lines += ["", "Flow quantization quality: steered displacement (steered - unsteered layer-L rows) against the "
                      "f32 flow, T = 2, N = 3.", "",
                  "| flow | cosine mean | cosine min | relative error mean | max | prompts |", "|---|---|---|---|---|---|"]
        for q in result["quality"]:
            lines.append(f"| {q['flow']} | {q['cosine_mean']:.6f} | {q['cosine_min']:.6f} | {q['rel_err_mean']:.4f} | "
                         f"{q['rel_err_max']:.4f} | {q['n_prompts']} |")
        lines += ["", "With random weights the displacement is dominated by the time-embedding term, which is the "
                      "same for every row, so the per-prompt figures barely vary; re-measure with the released flow."]
    lines += markdown_multi(result)
    lines += targets(result)
    return "\n".join(lines) + "\n"


def targets(result: dict) -> list[str]:
    """The targets of the performance issue, checked against these figures (Q4_K_M base)."""
    speed = {(r["flow"], r["n_steps"]): r for r in result.get("speed", []) if r["base"] == "Q4_K_M"}
    rss = {r["flow"]: r for r in result.get("rss", []) if r["base"] == "Q4_K_M"}
    quality = {q["flow"]: q for q in result.get("quality", [])}
    checks = []
    for flow, n, key, limit, what in [("q8_0", 2, "decode_ratio", 0.85, "decode steered/plain, q8_0 flow, N = 2"),
                                      ("q8_0", 3, "decode_ratio", 0.80, "decode steered/plain, q8_0 flow, N = 3"),
                                      ("bf16", 3, "decode_ratio", 0.70, "decode steered/plain, bf16 flow, N = 3"),
                                      ("q8_0", 3, "prefill_ratio", 0.80, "prefill steered/plain, q8_0 flow, N = 3"),
                                      ("bf16", 3, "prefill_ratio", 0.80, "prefill steered/plain, bf16 flow, N = 3")]:
        if (flow, n) in speed:
            got = speed[(flow, n)][key]
            checks.append((what, f">= {limit}", f"{got:.3f}", got >= limit))
    for flow, limit in (("q8_0", 300), ("bf16", 400)):
        if flow in rss:
            got = rss[flow]["over_plain_mb"]
            checks.append((f"peak RSS over plain llama.cpp, {flow} flow, n_ctx {result['args']['n_ctx']}",
                           f"<= +{limit} MB", f"{got:+.0f} MB", got <= limit))
    if result.get("concept"):
        got = result["concept"]["ratio"]
        checks.append(("concept switch / one 128-token generation", "< 10%", f"{got * 100:.1f}%", got < 0.10))
    if "q8_0" in quality:
        got = quality["q8_0"]["cosine_min"]
        checks.append(("q8_0 flow: cosine of the steered displacement vs f32 (min)", ">= 0.999", f"{got:.6f}", got >= 0.999))
    checks += targets_multi(result)
    if not checks:
        return []
    out = ["", f"## Targets (Q4_K_M base, {result['size']} models; the targets are set for the full size on 2 cores)",
           "", "| target | limit | measured | met |", "|---|---|---|---|"]
    out += [f"| {w} | {lim} | {got} | {'yes' if ok else 'NO'} |" for w, lim, got, ok in checks]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--rss-child":
        return rss_child(argv[1:])
    if argv and argv[0] == "--rss-multi-child":
        return rss_multi_child(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["full", "tiny"], default="full")
    ap.add_argument("--models", type=Path, help="model cache (default ~/.cache/flas-cpp/bench-SIZE)")
    ap.add_argument("--bases", default="Q4_K_M,Q8_0", help="base types to time (comma-separated)")
    ap.add_argument("--flows", default="q8_0,bf16", help="flow types to time")
    ap.add_argument("--steps", default="1,2,3")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--counts", default="1,2,4,8", help="sequence counts decoded together (part multi)")
    ap.add_argument("--multi-steps", type=int, default=2, help="N of every sequence in part multi")
    ap.add_argument("--multi-ctx", type=int, default=4096, help="tokens per sequence in part rss_multi")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: speed,concept,rss,quality,multi,rss_multi")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "PERFORMANCE.md")
    a = ap.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    bases, flows, steps = a.bases.split(","), a.flows.split(","), [int(s) for s in a.steps.split(",")]
    root = a.models or Path.home() / ".cache" / "flas-cpp" / f"bench-{a.size}"
    args = Args(a.size, root, a.n_ctx, a.n_batch, a.threads, a.prompt_tokens, a.gen_tokens, a.rounds)
    paths = prepare_models(root, a.size, bases, sorted(set(flows) | {"f32"}))
    data = json.loads(DATA.read_text()) if DATA.is_file() else {}
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "size": a.size,
              "command": "python benchmarks/run.py " + " ".join(argv), "args": {k: str(v) if isinstance(v, Path) else v
                                                                               for k, v in vars(args).items()}}
    if "speed" not in skip:
        result["speed"] = measure_speed(args, paths, bases, flows, steps)
    if "concept" not in skip:
        result["concept"] = concept_switch(args, paths, bases[0], flows[0])
    if "rss" not in skip:
        result["rss"] = measure_rss(args, paths, bases[0], flows)
    if "multi" not in skip:
        counts = [int(c) for c in a.counts.split(",")]
        result["multi_args"] = {"base": bases[0], "flow": flows[0], "flowtime": FLOWTIME, "n_steps": a.multi_steps,
                                "n_prompt": 128, "n_gen": a.gen_tokens // 2, "rounds": a.rounds}
        result["multi"] = measure_multi(paths[f"base-{bases[0]}"], paths[f"flow-{flows[0]}"], counts, 1024, a.n_batch,
                                        a.threads, 128, a.gen_tokens // 2, a.rounds, FLOWTIME, a.multi_steps)
    if "rss_multi" not in skip:
        result["rss_multi"] = measure_rss_multi(__file__, paths[f"base-{bases[0]}"], paths[f"flow-{flows[0]}"], 4,
                                                a.multi_ctx, a.n_batch, a.threads, 16, FLOWTIME, a.multi_steps)
    if "quality" not in skip:
        prompts = data.get("prompts", ["Tell me about your day.", "Why is the sky blue?"])
        concepts = data.get("concepts", [CONCEPT])[:2]
        result["quality"] = measure_quality(args, paths, bases[0], [f for f in flows if f != "f32"], prompts, concepts)
    parts = ("speed", "concept", "rss", "quality", "multi", "rss_multi")
    here = f"{result['date']} `{result['command']}`"
    result["measured"] = {k: here for k in parts if k in result}
    json_path = a.out.with_suffix(".json")
    if skip and json_path.is_file():  # a partial re-run keeps the parts it did not measure, with their origin
        previous = json.loads(json_path.read_text())
        for k in parts:
            if k in previous and k not in result:
                result[k] = previous[k]
                result["measured"][k] = previous.get("measured", {}).get(k, f"{previous['date']} `{previous['command']}`")
        if "multi" in previous and "multi_args" not in result:
            result["multi_args"] = previous["multi_args"]
    md = markdown(result)
    print(md)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    kept = kept_sections(a.out.read_text()) if a.out.is_file() else ""  # server_bench's, device_bench's
    a.out.write_text("# Performance\n\n" + md + kept)
    print(f"wrote {a.out} and {a.out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

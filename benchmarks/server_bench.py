"""flas-server over HTTP against FlasModel in the same run: one streaming client against
FlasModel.stream, four concurrent clients against generate_many, time to first token at 1 and
8 clients, and the idle server's RSS against a process holding the same model.

    python benchmarks/server_bench.py [--models DIR] [--out docs/PERFORMANCE.md]

Both are loaded at once (the idle one waits on a condition variable and costs no CPU) and
measured alternately, round after round, so drift hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from flas_cpp import FlasModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sections import replace_section  # noqa: E402

PROMPTS = ["Tell me about your day.", "Why is the sky blue?", "Write a limerick about a cat.", "What is a flow?",
           "Plan a dinner for four.", "Explain rain to a child.", "Describe a ship.", "Name three colours."]
CONCEPTS = ["Talk like a pirate", "Respond as a noir detective", "Use legal terminology", "Speak like Shakespeare"]
STEERING = {"flowtime": 2.0, "n_steps": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    return next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")) / 1024.0


def stream_http(url: str, i: int, max_tokens: int) -> dict:
    """One streamed chat completion: tokens, time to first token, tokens/s after it, wall time."""
    body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            "steering": {"concept": CONCEPTS[i % len(CONCEPTS)], **STEERING}}
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if obj.get("usage"):
                tokens = obj["usage"]["completion_tokens"]
            elif obj["choices"] and obj["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
    return {"tokens": tokens, "ttft": first - t0, "tps": (tokens - 1) / (last - first) if last > first else 0.0,
            "wall": last - t0}


def stream_model(m: FlasModel, i: int, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first = last = None
    n = 0
    h = m.submit(prompt=PROMPTS[i % len(PROMPTS)], concept=CONCEPTS[i % len(CONCEPTS)], max_tokens=max_tokens,
                 temperature=0.0, **STEERING)
    for _ in h:
        last = time.perf_counter()
        first = first or last
    n = len(h.result().tokens)
    return {"tokens": n, "ttft": first - t0, "tps": (n - 1) / (last - first) if last > first else 0.0,
            "wall": last - t0}


def generate_many(m: FlasModel, n: int, max_tokens: int) -> float:
    """Aggregate tokens/s of n requests through FlasModel.generate_many."""
    reqs = [dict(prompt=PROMPTS[i % len(PROMPTS)], concept=CONCEPTS[i % len(CONCEPTS)], max_tokens=max_tokens,
                 temperature=0.0, **STEERING) for i in range(n)]
    t0 = time.perf_counter()
    gens = m.generate_many(reqs)
    return sum(len(g.tokens) for g in gens) / (time.perf_counter() - t0)


def concurrent(fn, n: int) -> tuple[float, list[dict]]:
    """n requests at once: (aggregate tokens/s over the wall time, per-request results)."""
    out: list[dict] = [{}] * n
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, fn(i))) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(r["tokens"] for r in out) / (time.perf_counter() - t0), out


def model_rss_child(args: list[str]) -> int:
    """The server's workload (warm-up, then per round 1, 4 and 8 requests) on FlasModel alone; prints its RSS."""
    base, flow, n_ctx, n_seq, threads, max_tokens, rounds = args[0], args[1], *map(int, args[2:])
    m = FlasModel(base, flow, n_ctx=n_ctx, n_seq=n_seq, n_threads=threads)
    for i in range(4):
        stream_model(m, i, 4)
    for r in range(rounds):
        stream_model(m, r, max_tokens)
        generate_many(m, 4, max_tokens)
        generate_many(m, 8, max_tokens)
    time.sleep(1.0)
    print(rss_mb(os.getpid()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--model-rss-child":
        return model_rss_child(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=Path.home() / ".cache" / "flas-cpp" / "bench-full")
    ap.add_argument("--base", default="Q4_K_M")
    ap.add_argument("--flow", default="q8_0")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--n-ctx", type=int, default=8 * 1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md")
    a = ap.parse_args(argv)
    base, flow = a.models / f"base-{a.base}.gguf", a.models / f"flow-{a.flow}.gguf"

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([shutil.which("flas-server"), "--base", str(base), "--flow", str(flow), "--port",
                               str(port), "--parallel", str(a.parallel), "--n-ctx", str(a.n_ctx), "--threads",
                               str(a.threads)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        m = FlasModel(base, flow, n_ctx=a.n_ctx, n_seq=a.parallel, n_threads=a.threads)
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, "flas-server exited"
            time.sleep(0.2)
        for i in range(4):  # warm-up: concepts encoded, weights paged in
            stream_http(url, i, 4)
            stream_model(m, i, 4)
        res: dict[str, list] = {k: [] for k in ("http1", "model1", "http4", "model4", "ttft1", "ttft8")}
        for r in range(a.rounds):
            pairs = [("http", lambda i: stream_http(url, i, a.max_tokens)), ("model", lambda i: stream_model(m, i, a.max_tokens))]
            for name, fn in (pairs if r % 2 == 0 else pairs[::-1]):
                one = fn(r)
                res[name + "1"].append(one["tps"])
                if name == "http":
                    res["ttft1"].append(one["ttft"])
                res[name + "4"].append(concurrent(fn, 4)[0] if name == "http" else generate_many(m, 4, a.max_tokens))
            _, eight = concurrent(lambda i: stream_http(url, i, a.max_tokens), 8)
            res["ttft8"] += [e["ttft"] for e in eight]
            print(f"round {r + 1}: 1 client {res['http1'][-1]:.2f} tok/s (stream {res['model1'][-1]:.2f}); "
                  f"4 clients {res['http4'][-1]:.2f} tok/s (generate_many {res['model4'][-1]:.2f})", file=sys.stderr)
        # idle RSS: the server after its requests, against a process holding the same model after one request
        time.sleep(1.0)
        server_rss = rss_mb(server.pid)
        child = subprocess.run([sys.executable, __file__, "--model-rss-child", str(base), str(flow), str(a.n_ctx),
                                str(a.parallel), str(a.threads), str(a.max_tokens), str(a.rounds)],
                               capture_output=True, text=True, check=True)
        model_rss = float(child.stdout.split()[-1])
    finally:
        server.terminate()
        server.wait(timeout=60)

    ratio1 = np.array(res["http1"]) / np.array(res["model1"])
    ratio4 = np.array(res["http4"]) / np.array(res["model4"])
    result = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/server_bench.py " + " ".join(argv or sys.argv[1:]),
              "base": a.base, "flow": a.flow, "parallel": a.parallel, "n_ctx": a.n_ctx, "max_tokens": a.max_tokens,
              "rounds": res, "one_client_ratio": float(np.median(ratio1)), "four_clients_ratio": float(np.median(ratio4)),
              "ttft1_p50": float(np.percentile(res["ttft1"], 50)), "ttft1_p95": float(np.percentile(res["ttft1"], 95)),
              "ttft8_p50": float(np.percentile(res["ttft8"], 50)), "ttft8_p95": float(np.percentile(res["ttft8"], 95)),
              "server_rss_mb": server_rss, "model_rss_mb": model_rss}
    md = report(result)
    print(md)
    json_path = a.out.with_name("PERFORMANCE-server.json")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    text = a.out.read_text() if a.out.is_file() else "# Performance\n"
    text = replace_section(text, "## flas-server over HTTP", md)
    a.out.write_text(text)
    print(f"wrote {a.out} and {json_path}", file=sys.stderr)
    return 0


def report(r: dict) -> str:
    ok1, ok4 = r["one_client_ratio"] >= 0.95, r["four_clients_ratio"] >= 0.9
    rss_over = r["server_rss_mb"] - r["model_rss_mb"]
    return "\n".join([
        "", "## flas-server over HTTP", "",
        f"Measured {r['date']}, command `{r['command']}`: {r['base']} base + {r['flow']} flow (full-size test models), "
        f"server `--parallel {r['parallel']} --n-ctx {r['n_ctx']}` in its own process against FlasModel with the same "
        f"settings in the benchmark's process, alternating round by round ({len(r['rounds']['http1'])} rounds); every "
        f"request steered (T = {STEERING['flowtime']}, N = {STEERING['n_steps']}), greedy, {r['max_tokens']} tokens. "
        "Tokens/s of one stream: tokens after the first over the time from the first to the last; of concurrent "
        "clients: all tokens over the wall time.", "",
        "| measure | flas-server (HTTP, SSE) | FlasModel in process | ratio | target | met |", "|---|---|---|---|---|---|",
        f"| 1 streaming client, tok/s | {np.median(r['rounds']['http1']):.2f} | {np.median(r['rounds']['model1']):.2f} "
        f"(stream) | {r['one_client_ratio']:.3f} | >= 0.95 | {'yes' if ok1 else 'NO'} |",
        f"| 4 concurrent clients, aggregate tok/s | {np.median(r['rounds']['http4']):.2f} | "
        f"{np.median(r['rounds']['model4']):.2f} (generate_many, 4 requests) | {r['four_clients_ratio']:.3f} | >= 0.9 | "
        f"{'yes' if ok4 else 'NO'} |",
        f"| idle server RSS vs a process holding the model after the same requests, MB | {r['server_rss_mb']:.0f} | "
        f"{r['model_rss_mb']:.0f} | "
        f"{rss_over:+.0f} MB | <= +100 MB | {'yes' if rss_over <= 100 else 'NO'} |", "",
        f"Time to first token (prompt ~16 tokens, steered): 1 client p50 {r['ttft1_p50'] * 1000:.0f} ms, p95 "
        f"{r['ttft1_p95'] * 1000:.0f} ms; 8 concurrent clients p50 {r['ttft8_p50'] * 1000:.0f} ms, p95 "
        f"{r['ttft8_p95'] * 1000:.0f} ms.", ""])


if __name__ == "__main__":
    sys.exit(main())

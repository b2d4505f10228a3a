"""The device path over ggml RPC: every layer and the flow on an RPC server on 127.0.0.1,
against plain llama.cpp offloaded the same way, side by side in one run.

    python benchmarks/device_bench.py [--models DIR] [--out docs/PERFORMANCE.md]

Two RPC servers (`python -m flas_cpp.rpc_server`), one for plain llama.cpp (llama-cpp-python's
C API, no eval callback) and one for the steering runtime, so each server's peak RSS and the
bytes it receives belong to one configuration. The two alternate round by round. Then
the device memory of Q4_K_M + q8_0 at n_ctx 2048/4096/8192 and 1 and 4 sequences (every
sequence steered at N), as the runtime reports it on the RPC device: the README's budget table.
Uses the full-size test models that benchmarks/run.py prepares.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flas_cpp._native import core

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CONCEPT, FLOWTIME, machine, prepare_models, token_stream  # noqa: E402
from direct import DirectModel  # noqa: E402
from sections import replace_section  # noqa: E402

N_STEPS = 2
TITLE = "## The device path over ggml RPC"
MiB = 1024**2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m flas_cpp.rpc_server` on a free loopback port, with its /proc figures."""

    def __init__(self, threads: int):
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "flas_cpp.rpc_server", "--port", str(self.port),
                                      "--threads", str(threads)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir())
        while not core().endpoint_reachable(self.endpoint, 200):
            time.sleep(0.05)

    def _tcp(self, field: str) -> int:
        """A tcp_info counter summed over the server's connections (ss -ti)."""
        out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{self.port} )"],
                             capture_output=True, text=True, check=True).stdout
        return sum(int(tok.split(":", 1)[1]) for tok in out.split() if tok.startswith(field + ":"))

    def rchar(self) -> int:  # bytes the server received from its clients
        return self._tcp("bytes_received")

    def wchar(self) -> int:  # bytes the server sent them
        return self._tcp("bytes_sent")

    def peak_rss_mb(self) -> float:
        kb = next(line for line in open(f"/proc/{self.proc.pid}/status") if line.startswith("VmHWM")).split()[1]
        return int(kb) / 1024

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class PlainRPC:
    """llama.cpp with every layer on the server, no eval callback (llama-cpp-python's C API)."""

    def __init__(self, base: Path, endpoint: str, n_ctx: int, n_batch: int, threads: int):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        handles = core().rpc_device_handles([endpoint])
        self.devices = (ctypes.c_void_p * (len(handles) + 1))(*handles, None)  # kept alive with the model
        mp = L.llama_model_default_params()
        mp.devices = ctypes.cast(self.devices, ctypes.c_void_p)
        mp.n_gpu_layers = -1
        self.model = L.llama_model_load_from_file(str(base).encode(), mp)
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, 1
        cp.kv_unified = True
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))

    def reset(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def decode(self, tokens: list[int]) -> None:
        for i in range(0, len(tokens), 512):
            chunk = tokens[i:i + 512]
            arr = (self.L.llama_token * len(chunk))(*chunk)
            if self.L.llama_decode(self.ctx, self.L.llama_batch_get_one(arr, len(chunk))) != 0:
                raise RuntimeError("llama_decode failed")
        self.L.llama_synchronize(self.ctx)  # the server computes asynchronously: wait for the step

    def close(self) -> None:
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


class SteeredRPC:
    def __init__(self, base: Path, flow: Path, endpoint: str, n_ctx: int, n_batch: int, threads: int, n_seq: int = 1):
        self.rt = DirectModel(base, flow, n_ctx=n_ctx, n_batch=n_batch, n_seq=n_seq, n_threads=threads,
                              n_gpu_layers=-1, rpc_servers=[endpoint])
        for seq in range(n_seq):
            self.rt.set_steering(seq, CONCEPT, FLOWTIME, N_STEPS)
        self.n_vocab = self.rt.n_vocab

    def reset(self) -> None:
        self.rt.reset(0)

    def decode(self, tokens: list[int]) -> None:
        self.rt.decode([(0, tokens)])


def measure(base: Path, flow: Path, threads: int, n_ctx: int, prompt_n: int, gen_n: int, rounds: int) -> dict:
    servers = {"plain": Server(threads), "steered": Server(threads)}
    try:
        rss0 = {k: s.peak_rss_mb() for k, s in servers.items()}
        t0 = time.perf_counter()
        cfgs = {"plain": PlainRPC(base, servers["plain"].endpoint, n_ctx, 512, threads)}
        load_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        cfgs["steered"] = SteeredRPC(base, flow, servers["steered"].endpoint, n_ctx, 512, threads)
        load_steered = time.perf_counter() - t0
        memory = cfgs["steered"].rt.memory()
        prompt = token_stream(prompt_n, cfgs["plain"].n_vocab, 1)
        gen = token_stream(gen_n, cfgs["plain"].n_vocab, 2)
        tps = {k: [] for k in cfgs}
        recv = {k: [] for k in cfgs}
        sent = {k: [] for k in cfgs}
        for r in range(rounds):
            order = list(cfgs) if r % 2 == 0 else list(cfgs)[::-1]
            for k in order:
                cfgs[k].reset()
                cfgs[k].decode(prompt)
            spent = dict.fromkeys(cfgs, 0.0)
            got = {k: servers[k].rchar() for k in cfgs}
            put = {k: servers[k].wchar() for k in cfgs}
            # a block of steps per configuration: each server's threads spin for a while after
            # computing, which would slow the other server's very next step
            for k in order:
                time.sleep(0.5)
                t0 = time.perf_counter()
                for tok in gen:
                    cfgs[k].decode([tok])
                spent[k] += time.perf_counter() - t0
            for k in cfgs:
                tps[k].append(len(gen) / spent[k])
                recv[k].append((servers[k].rchar() - got[k]) / len(gen))
                sent[k].append((servers[k].wchar() - put[k]) / len(gen))
            print(f"round {r + 1}: plain {tps['plain'][-1]:.2f} tok/s, steered {tps['steered'][-1]:.2f} tok/s; "
                  f"server received {recv['plain'][-1]:.0f} / {recv['steered'][-1]:.0f} bytes per step",
                  file=sys.stderr)
        ratio = float(np.median(np.array(tps["steered"]) / np.array(tps["plain"])))
        rss = {k: s.peak_rss_mb() for k, s in servers.items()}
        cfgs["plain"].close()
        del cfgs
        return {"decode_tps": {k: float(np.median(v)) for k, v in tps.items()}, "decode_ratio": ratio,
                "rounds": tps, "recv_per_step": {k: float(np.median(v)) for k, v in recv.items()},
                "sent_per_step": {k: float(np.median(v)) for k, v in sent.items()},
                "server_peak_rss_mb": rss, "server_start_rss_mb": rss0,
                "load_s": {"plain": load_plain, "steered": load_steered}, "memory": memory}
    finally:
        for s in servers.values():
            s.stop()


def budget_table(base: Path, flow: Path, threads: int) -> list[dict]:
    rows = []
    for n_ctx in (2048, 4096, 8192):
        for n_seq in (1, 4):
            server = Server(threads)
            try:
                cfg = SteeredRPC(base, flow, server.endpoint, n_ctx * n_seq, 512, threads, n_seq=n_seq)
                cfg.rt.reserve(N_STEPS)
                dev = next(r for r in cfg.rt.memory() if r["device"] != "CPU")
                rows.append({"n_ctx_seq": n_ctx, "n_seq": n_seq, **dev})
                print(f"n_ctx {n_ctx} x {n_seq}: device total {dev['total'] / MiB:.0f} MiB", file=sys.stderr)
                del cfg
            finally:
                server.stop()
    return rows


def fits(total: int, gb: int) -> str:
    return "yes" if total <= gb * 10**9 else "no"


def report(r: dict) -> str:
    m = r["measure"]
    dev = next(x for x in m["memory"] if x["device"] != "CPU")
    flow_part = dev["flow_weights"] + dev["flow_caches"] + dev["flow_compute"]
    rss_over = m["server_peak_rss_mb"]["steered"] - m["server_peak_rss_mb"]["plain"]
    extra_bytes = m["recv_per_step"]["steered"] - m["recv_per_step"]["plain"]
    sent_extra = m["sent_per_step"]["steered"] - m["sent_per_step"]["plain"]
    ok = {"flow": flow_part <= 250e6, "total": dev["total"] <= 3.0e9, "rss": rss_over <= 250,
          "ratio": m["decode_ratio"] >= 0.85, "trip": sent_extra < 4 * 2304}
    lines = [
        "", TITLE, "",
        f"Measured {r['date']} on {r['machine']}, command `{r['command']}`: {r['base']} base + {r['flow']} flow "
        f"(full-size test models, the exact Gemma-2-2B shapes), n_ctx {r['n_ctx']}, one sequence, T = {FLOWTIME}, "
        f"N = {N_STEPS}. Every layer (`n_gpu_layers=-1`) on an RPC server on 127.0.0.1 "
        f"(`python -m flas_cpp.rpc_server --threads {r['threads']}`, the CPU backend in its own process); plain "
        "llama.cpp offloaded the same way to a second server; the two alternate round by round "
        f"({len(m['rounds']['plain'])} rounds of {r['gen_tokens']} decode steps after a {r['prompt_tokens']}-token "
        "prompt, a block of steps each, since each server's threads spin for a while after computing); the ratio is "
        "the median of the rounds' ratios.",
        "",
        "| measure | value | target | met |", "|---|---|---|---|",
        f"| flow on the device: weights + caches + compute | {dev['flow_weights'] / MiB:.1f} + {dev['flow_caches'] / MiB:.1f} + "
        f"{dev['flow_compute'] / MiB:.1f} = {flow_part / 1e6:.0f} MB | <= 250 MB | {'yes' if ok['flow'] else 'NO'} |",
        f"| device total, one sequence | {dev['total'] / 1e9:.2f} GB | <= 3.0 GB | {'yes' if ok['total'] else 'NO'} |",
        f"| RPC server peak RSS, steered vs plain | {m['server_peak_rss_mb']['steered']:.0f} vs "
        f"{m['server_peak_rss_mb']['plain']:.0f} MB ({rss_over:+.0f} MB) | <= +250 MB | {'yes' if ok['rss'] else 'NO'} |",
        f"| decode steered/plain, both over RPC | {m['decode_tps']['steered']:.2f} / {m['decode_tps']['plain']:.2f} tok/s = "
        f"{m['decode_ratio']:.3f} | >= 0.85 | {'yes' if ok['ratio'] else 'NO'} |",
        f"| bytes per decode step the server sends back, steered / plain | {m['sent_per_step']['steered']:.0f} / "
        f"{m['sent_per_step']['plain']:.0f} ({sent_extra:+.0f}) | no activation round trip (a layer-L row is "
        f"{4 * 2304} bytes) | {'yes' if ok['trip'] else 'NO'} |",
        f"| bytes per decode step the server receives, steered / plain | {m['recv_per_step']['steered']:.0f} / "
        f"{m['recv_per_step']['plain']:.0f} ({extra_bytes:+.0f}) | (reported) | |",
        "",
        "The server sends back the logits (1 MB) and nothing of layer L: the flow reads and writes the layer's "
        "rows where they are. What it receives in addition are commands, not activations: ggml's RPC client "
        "serializes every graph it has not just computed, and steering computes the base graph in two parts "
        "(up to layer L, then the rest) plus the flow's graph each step, where plain llama.cpp recomputes one "
        "cached graph; the rows' positions, step indices and sizes are a few dozen bytes.",
        "",
        "Device memory of every configuration, as the runtime reports it on the RPC device (`m.memory()`), every "
        f"sequence steered at N = {N_STEPS} (`reserve_steering`); MiB; fits: the device total within 4/6/8 GB:",
        "",
        "| tokens per sequence | sequences | base weights | KV cache | base compute | flow weights | flow caches | "
        "flow compute | total | 4 GB | 6 GB | 8 GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in r["budget"]:
        lines.append(f"| {b['n_ctx_seq']} | {b['n_seq']} | " + " | ".join(
            f"{b[k] / MiB:.0f}" for k in ("base_weights", "kv_cache", "base_compute", "flow_weights", "flow_caches",
                                          "flow_compute", "total")) +
            f" | {fits(b['total'], 4)} | {fits(b['total'], 6)} | {fits(b['total'], 8)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=Path.home() / ".cache" / "flas-cpp" / "bench-full")
    ap.add_argument("--base", default="Q4_K_M")
    ap.add_argument("--flow", default="q8_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md")
    ap.add_argument("--report-only", action="store_true", help="rewrite the section from PERFORMANCE-device.json")
    a = ap.parse_args(argv)
    json_path = a.out.with_name("PERFORMANCE-device.json")
    if a.report_only:
        a.out.write_text(replace_section(a.out.read_text(), TITLE, report(json.loads(json_path.read_text()))))
        return 0
    paths = prepare_models(a.models, "full", [a.base], [a.flow])
    base, flow = paths[f"base-{a.base}"], paths[f"flow-{a.flow}"]
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": "python " + " ".join(sys.argv),
              "base": a.base, "flow": a.flow, "n_ctx": a.n_ctx, "threads": a.threads,
              "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens}
    result["measure"] = measure(base, flow, a.threads, a.n_ctx, a.prompt_tokens, a.gen_tokens, a.rounds)
    result["budget"] = budget_table(base, flow, a.threads)
    md = report(result)
    print(md)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    text = a.out.read_text() if a.out.is_file() else "# Performance\n"
    a.out.write_text(replace_section(text, TITLE, md))
    print(f"wrote {a.out} and {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

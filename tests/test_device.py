"""The device path on ggml's RPC backend: layers, flow, caches and compute on a device whose
memory is another process's, against everything on the CPU; placement, memory report, faults.

The RPC servers are `python -m flas_cpp.rpc_server` processes started by the fixtures. Without
an RPC-enabled llama.cpp these tests skip (locally) or fail (CI=true): see RPC_BUILD.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from conftest import convert_tiny_flow
from flas_cpp import FlasModel, Request, build_info
from flas_cpp._native import core
from flas_cpp.placement import estimate_memory

RPC_BUILD = ('CMAKE_ARGS="-DGGML_RPC=on" pip install --no-cache-dir --force-reinstall --no-deps '
             'llama-cpp-python==0.3.36 && pip install --no-build-isolation --no-deps .')
PIRATE, NOIR = "Talk like a pirate", "Respond as a noir detective"
PROMPT = "Tell me about your day."
MAX_STEPS = core().MAX_STEPS  # FLAS_MAX_STEPS: time embeddings kept per sequence
OUTSIDE = tempfile.gettempdir()  # subprocesses import the installed package, not the source tree


def _has_rpc() -> bool:
    return "RPC" in build_info()["backends"]


if not _has_rpc():
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI needs llama-cpp-python built with the RPC backend: {RPC_BUILD}")
    pytest.skip(f"llama.cpp was built without the RPC backend; enable these tests with: {RPC_BUILD}",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, host: str = "127.0.0.1", threads: int = 2) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "flas_cpp.rpc_server", "--host", host, "--port", str(port),
                             "--threads", str(threads)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=OUTSIDE)
    deadline = time.time() + 30
    while not core().endpoint_reachable(f"127.0.0.1:{port}", 200):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"the RPC server did not start: {proc.communicate()}")
        time.sleep(0.05)
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.communicate()


@pytest.fixture(scope="module")
def servers():
    """Two RPC servers on loopback: ["127.0.0.1:port", ...]."""
    ports = [free_port(), free_port()]
    procs = [start_server(p) for p in ports]
    yield [f"127.0.0.1:{p}" for p in ports]
    for p in procs:
        stop_server(p)


@pytest.fixture(scope="module")
def flow(tiny, tmp_path_factory):
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("device") / "flow-f32.gguf", "f32")


def load(base, flow, **kw) -> FlasModel:
    return FlasModel(base, flow, n_ctx=kw.pop("n_ctx", 512), n_batch=kw.pop("n_batch", 32), exact=True, **kw)


@pytest.fixture(scope="module")
def cpu(tiny_base_f32, flow):
    with load(tiny_base_f32, flow) as m:
        yield m


@pytest.fixture(scope="module")
def rpc(tiny_base_f32, flow, servers):
    with load(tiny_base_f32, flow, n_gpu_layers=-1, rpc_servers=servers[:1]) as m:  # closed before the servers
        yield m


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def greedy(m: FlasModel, **kw) -> list[int]:
    return m.generate(temperature=0.0, max_tokens=kw.pop("max_tokens", 32), **kw).tokens


# ---- everything on the RPC device vs everything on the CPU ------------------------------------

def test_build_info_lists_the_rpc_backend():
    assert "RPC" in build_info()["backends"]


def test_the_flow_lives_on_the_rpc_device_with_every_layer(rpc, cpu, servers):
    assert rpc.flow_device.startswith("RPC") and cpu.flow_device == "CPU"
    rows = {r["device"]: r for r in rpc.memory()}
    dev = rows[rpc.flow_device]
    assert dev["type"] == "gpu" and dev["description"] == servers[0]
    assert dev["flow_weights"] > 0 and dev["base_weights"] > 0 and dev["kv_cache"] > 0
    assert rows["CPU"]["flow_weights"] == 0 and rows["CPU"]["kv_cache"] == 0


@pytest.mark.parametrize("prompt", [PROMPT, " ".join([PROMPT] * 16)], ids=["short", "longer-than-n_batch"])
def test_prefill_and_decode_rows_and_tokens_match_the_cpu(rpc, cpu, prompt):
    if prompt != PROMPT:
        assert len(cpu.prompt_tokens(prompt)) > 3 * 32  # several ubatches of n_batch 32
    kw = dict(prompt=prompt, concept=PIRATE, flowtime=2.0, n_steps=3)
    a, b = rpc.trace(n_decode=8, **kw), cpu.trace(n_decode=8, **kw)
    assert a["tokens"] == b["tokens"]
    assert a["steered"].shape == b["steered"].shape == (len(b["tokens"]), cpu.flow_info["n_embd"])
    assert rel_err(a["unsteered"], b["unsteered"]) < 1e-5
    assert rel_err(a["steered"], b["steered"]) < 1e-5
    assert rel_err(a["steered"] - a["unsteered"], b["steered"] - b["unsteered"]) < 1e-5  # the flow's own part
    assert greedy(rpc, **kw) == greedy(cpu, **kw)


def test_prefix_reuse_and_concept_switch_match_the_cpu(rpc, cpu):
    first = [PROMPT, "Why is the sky blue?"]
    for m in (rpc, cpu):
        greedy(m, prompt="warm up", concept=NOIR, flowtime=1.0)
    runs = {}
    for name, m in (("rpc", rpc), ("cpu", cpu)):
        out = []
        for concept in (PIRATE, PIRATE, NOIR, PIRATE):  # reuse, switch, switch back
            g = m.generate(messages=[{"role": "user", "content": first[0]}], concept=concept, flowtime=2.0,
                           temperature=0.0, max_tokens=32)
            out.append((g.tokens, g.n_cached_tokens > 0))
        runs[name] = out
    assert runs["rpc"] == runs["cpu"]
    assert runs["rpc"][1][1]  # the second identical request reused the sequence's prefix
    a, b = (rpc.trace(prompt=PROMPT, concept=c, flowtime=2.0)["steered"] for c in (PIRATE, NOIR))
    assert rel_err(a, b) > 1e-3  # the concept matters


def test_steer_hook_runs_on_rows_from_the_device(rpc, cpu):
    def hook(rows: np.ndarray, pos0: int) -> np.ndarray:
        return rows * 0.5 + 0.25
    try:
        for m in (rpc, cpu):
            m.set_steer_hook(hook)
        a = rpc.trace(prompt=PROMPT, concept=PIRATE, n_decode=4)
        b = cpu.trace(prompt=PROMPT, concept=PIRATE, n_decode=4)
        assert a["tokens"] == b["tokens"]
        assert rel_err(a["steered"], a["unsteered"] * 0.5 + 0.25) < 1e-6
        assert rel_err(a["steered"], b["steered"]) < 1e-5
        assert greedy(rpc, prompt=PROMPT, concept=PIRATE) == greedy(cpu, prompt=PROMPT, concept=PIRATE)
    finally:
        for m in (rpc, cpu):
            m.set_steer_hook(None)


def test_several_sequences_with_different_concepts_match_the_cpu(tiny_base_f32, flow, servers):
    reqs = [Request(prompt=PROMPT, concept=PIRATE, flowtime=2.0, n_steps=3, temperature=0.0, max_tokens=32),
            Request(prompt="Why is the sky blue?", concept=NOIR, flowtime=1.0, n_steps=2, temperature=0.0,
                    max_tokens=32),
            Request(prompt="Write a limerick about a cat.", temperature=0.0, max_tokens=32, flowtime=0.0),
            Request(prompt="What is a flow?", concept=NOIR, flowtime=4.0, n_steps=4, temperature=0.8, seed=7,
                    max_tokens=32)]
    got, rows = {}, {}
    for name, kw in (("rpc", dict(n_gpu_layers=-1, rpc_servers=servers[:1])), ("cpu", {})):
        with load(tiny_base_f32, flow, n_ctx=4 * 256, n_seq=4, **kw) as m:
            got[name] = [g.tokens for g in m.generate_many(reqs)]
            settings = []  # the same four traced together: every sequence's layer-L rows
            for r in reqs:
                s = m._settings(Request(**{**r.__dict__, "temperature": 0.0, "max_tokens": 5}))
                s.request.trace = True
                settings.append(s)
            rows[name] = [h.trace()["steered"] for h in m._start(settings)]
    assert got["rpc"] == got["cpu"]
    for a, b in zip(rows["rpc"], rows["cpu"]):
        assert a.shape == b.shape and rel_err(a, b) < 1e-5


# ---- placement -------------------------------------------------------------------------------

@pytest.mark.parametrize("n_gpu_layers,flow_on_device", [(2, True), (1, False)], ids=["L-on-device", "L-on-cpu"])
def test_partial_offload_places_the_flow_with_layer_L(tiny_base_f32, flow, servers, cpu, n_gpu_layers,
                                                     flow_on_device):
    # the tiny model has 6 layers and steers layer 4: llama.cpp offloads layers >= 6 - n_gpu_layers
    m = load(tiny_base_f32, flow, n_gpu_layers=n_gpu_layers, rpc_servers=servers[:1])
    rows = {r["device"]: r for r in m.memory()}
    rpc_dev = next(d for d in rows if d.startswith("RPC"))
    assert rows[rpc_dev]["base_weights"] > 0 and rows["CPU"]["base_weights"] > 0
    holder = rpc_dev if flow_on_device else "CPU"
    assert m.flow_device == holder
    assert rows[holder]["flow_weights"] > 0 and sum(r["flow_weights"] for r in rows.values()) == rows[holder]["flow_weights"]
    kw = dict(prompt=PROMPT, concept=PIRATE, flowtime=2.0, n_steps=2)
    a, b = m.trace(n_decode=4, **kw), cpu.trace(n_decode=4, **kw)
    assert a["tokens"] == b["tokens"] and rel_err(a["steered"], b["steered"]) < 1e-5
    assert greedy(m, **kw) == greedy(cpu, **kw)


def test_two_rpc_servers_share_the_layers(tiny_base_f32, flow, servers, cpu):
    m = load(tiny_base_f32, flow, n_gpu_layers=-1, rpc_servers=",".join(servers), tensor_split=[1.0, 1.0])
    rows = [r for r in m.memory() if r["device"].startswith("RPC")]
    assert sorted(r["description"] for r in rows) == sorted(servers)
    assert all(r["base_weights"] > 0 and r["kv_cache"] > 0 for r in rows)
    # layers 3..5 go to the second device: so do layer 4 and the flow
    holder = next(r for r in rows if r["flow_weights"] > 0)
    assert holder["description"] == servers[1] and m.flow_device == holder["device"]
    kw = dict(prompt=PROMPT, concept=NOIR, flowtime=2.0, n_steps=3)
    assert greedy(m, **kw) == greedy(cpu, **kw)


# ---- memory report ---------------------------------------------------------------------------

def test_memory_report_flow_figures_are_the_flow_buffers(tiny_base_f32, flow, servers):
    m = load(tiny_base_f32, flow, n_ctx=1024, n_seq=2, concept_cache=3, n_gpu_layers=-1, rpc_servers=servers[:1])
    info = m.flow_info
    dev = next(r for r in m.memory() if r["device"] == m.flow_device)
    tensors = GGUFReader(flow).tensors
    weights = sum(int(t.n_bytes) for t in tensors)
    align = 256  # an upper bound on any backend's alignment: padding per tensor
    assert weights <= dev["flow_weights"] <= weights + align * len(tensors)

    H, D, nh, nkv, nb, kmax = (info[k] for k in ("n_embd", "head_dim", "n_head", "n_head_kv", "n_block",
                                                 "concept_max_len"))
    n_slot, n_seq = 3, 2
    # per slot: keys and values; per sequence: its time embeddings and its concept's values folded
    # through cross_out, room for the longest concept whose values (f32, exact) weigh less than cross_out
    cross_out = next(int(t.n_bytes) for t in tensors if t.name == "blk.0.cross_out.weight")
    fold_keys = min(kmax, (cross_out - 1) // (H * nh * 4))
    concept_state = (2 * nb * D * kmax * n_slot * nkv * 4 + nb * fold_keys * nh * H * n_seq * 4
                     + H * MAX_STEPS * n_seq * 4)
    assert concept_state <= dev["flow_caches"] <= concept_state + align * (3 * nb + 1)
    assert dev["flow_compute"] == 0  # nothing steered yet

    greedy(m, prompt=PROMPT, concept=PIRATE, flowtime=2.0, n_steps=3, max_tokens=2)
    dev = next(r for r in m.memory() if r["device"] == m.flow_device)
    n_ctx_seq = m.n_ctx_seq
    seq_cache = 2 * 3 * nb * (nkv * D) * n_ctx_seq * 4  # K and V^T of 3 steps x blocks, f32 (exact)
    assert concept_state + seq_cache <= dev["flow_caches"] <= concept_state + seq_cache + align * (2 * nb * 4 + nb + 1)
    assert dev["flow_compute"] > 0
    assert dev["total"] == sum(dev[k] for k in ("base_weights", "kv_cache", "base_compute", "flow_weights",
                                                "flow_caches", "flow_compute"))


@pytest.mark.parametrize("budget_mib", [6, 9.5])
def test_gpu_memory_chooses_the_most_layers_that_fit(tiny_base_f32, flow, servers, budget_mib):
    budget = int(budget_mib * 1024**2)
    kw = dict(n_ctx=512, n_seq=2, rpc_servers=servers[:1])
    with load(tiny_base_f32, flow, gpu_memory=f"{budget_mib}MiB", **kw) as m:
        ngl = m.n_gpu_layers
        assert 0 < ngl < 7 and f"n_gpu_layers {ngl} of 7" in m.placement
        # every sequence steered at the flow's N: the real device total fits
        n_steps = m.flow_info["n_steps"]
        for seq in range(2):
            m.generate(prompt=PROMPT, concept=[PIRATE, NOIR][seq], flowtime=2.0, n_steps=n_steps, max_tokens=2)
        rows = m.memory()
        dev = next(r for r in rows if r["device"].startswith("RPC"))
        assert 0 < dev["total"] <= budget
        assert (m.flow_device == dev["device"]) == (ngl >= 2)  # layer 4 of 6 is offloaded from 2 layers on
        flow_compute = sum(r["flow_compute"] for r in rows)
    # one more layer would not fit: the estimate (exact for every other part) and the flow's
    # compute buffer, which is the same wherever the flow is
    more = estimate_memory(tiny_base_f32, flow, n_steps, n_gpu_layers=ngl + 1, n_batch=32, exact=True, **kw)
    assert max(r["total"] for r in more if r["device"].startswith("RPC")) + flow_compute > budget


def test_gpu_memory_estimate_equals_the_real_buffers(tiny_base_f32, flow, servers):
    kw = dict(n_ctx=512, n_seq=2, rpc_servers=servers[:1])
    est = {r["device"]: r for r in estimate_memory(tiny_base_f32, flow, 3, n_gpu_layers=3, n_batch=32, exact=True, **kw)}
    with load(tiny_base_f32, flow, n_gpu_layers=3, **kw) as m:
        m.reserve_steering(3)
        real = {r["device"]: r for r in m.memory()}
    dev = next(d for d in real if d.startswith("RPC"))
    for part in ("base_weights", "kv_cache", "base_compute", "flow_weights", "flow_caches"):
        assert est[dev][part] == real[dev][part], part
    assert est[dev]["flow_compute"] == 0 < real[dev]["flow_compute"]


def test_gpu_memory_bad_values(tiny_base_f32, flow, servers):
    with pytest.raises(ValueError, match="not a size"):
        load(tiny_base_f32, flow, gpu_memory="six gigs", rpc_servers=servers[:1])
    with pytest.raises(ValueError, match="n_gpu_layers or gpu_memory, not both"):
        load(tiny_base_f32, flow, gpu_memory="6GiB", n_gpu_layers=3, rpc_servers=servers[:1])


# ---- faults ----------------------------------------------------------------------------------

def test_unreachable_and_malformed_endpoints_are_clear_errors(tiny_base_f32, flow):
    port = free_port()
    with pytest.raises(ValueError, match=rf"cannot reach the RPC server at 127\.0\.0\.1:{port}.*flas_cpp\.rpc_server"):
        load(tiny_base_f32, flow, n_gpu_layers=-1, rpc_servers=[f"127.0.0.1:{port}"])
    with pytest.raises(ValueError, match="not host:port"):
        load(tiny_base_f32, flow, n_gpu_layers=-1, rpc_servers=["localhost"])


def test_an_endpoint_that_is_not_an_rpc_server_is_a_clear_error(tiny_base_f32, flow):
    # a TCP server that accepts and hangs up: the handshake fails
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        import threading

        def serve():
            for _ in range(4):
                try:
                    conn, _ = listener.accept()
                    conn.close()
                except OSError:
                    return
        threading.Thread(target=serve, daemon=True).start()
        with pytest.raises(ValueError, match=rf"127\.0\.0\.1:{port} did not answer as a ggml RPC server"):
            load(tiny_base_f32, flow, n_gpu_layers=-1, rpc_servers=[f"127.0.0.1:{port}"])


SERVER_DIES = """
import os, signal, sys, threading, time
from flas_cpp import DeviceLostError, FlasModel
base, flow, endpoint, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
m = FlasModel(base, flow, n_ctx=512, n_gpu_layers=-1, rpc_servers=[endpoint])
h = m.submit(prompt="Tell me about your day.", concept="Talk like a pirate", flowtime=2.0, temperature=0.0,
             max_tokens=400)
pieces = iter(h)
next(pieces)  # decoding has started (the iterator kept: one dropped cancels its request, as a consumer that stops)
os.kill(pid, signal.SIGKILL)
t0 = time.time()
g = h.result()
print("RESULT", g.stop_reason, round(time.time() - t0, 1), g.error, flush=True)
print("STATUS", g.error_status, flush=True)
from flas_cpp.generation import raise_if_failed
try:
    raise_if_failed(g)
except DeviceLostError as e:
    print("RAISED", type(e).__name__, flush=True)
try:
    m.generate("again", flowtime=0.0, max_tokens=4)
except DeviceLostError as e:
    print("AGAIN", type(e).__name__, e, flush=True)
del m
c = FlasModel(base, flow, n_ctx=512)
print("NEW", len(c.generate("Hello", flowtime=0.0, max_tokens=4, temperature=0.0).tokens), flush=True)
try:
    FlasModel(base, flow, n_ctx=512, n_gpu_layers=-1, rpc_servers=[endpoint])
except ValueError as e:
    print("RELOAD", e, flush=True)
"""


def test_a_server_dying_mid_generation_is_an_error_naming_it(tiny_base_f32, flow, tmp_path):
    port = free_port()
    server = start_server(port)
    endpoint = f"127.0.0.1:{port}"
    script = tmp_path / "dies.py"
    script.write_text(textwrap.dedent(SERVER_DIES))
    try:
        out = subprocess.run([sys.executable, str(script), str(tiny_base_f32), str(flow), endpoint, str(server.pid)],
                             capture_output=True, text=True, timeout=120, cwd=OUTSIDE)
    finally:
        stop_server(server)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = {line.split(" ", 1)[0]: line for line in out.stdout.splitlines()}
    result = lines["RESULT"].split(" ", 3)
    assert result[1] == "error" and float(result[2]) < 10
    assert f"device lost: the RPC server at {endpoint} stopped answering" in result[3]
    # the loss is told by its status, FLAS_ERR_DEVICE_LOST (-3 in flas.h), not by its text
    assert lines["STATUS"] == "STATUS -3" and lines["RAISED"] == "RAISED DeviceLostError"
    assert f"the RPC server at {endpoint} stopped answering" in lines["AGAIN"] and "DeviceLostError" in lines["AGAIN"]
    assert lines["NEW"] == "NEW 4"  # the process lives on and loads a new model
    assert f"{endpoint} was lost earlier in this process" in lines["RELOAD"]


def test_rpc_server_launcher_warns_off_loopback():
    proc = subprocess.Popen([sys.executable, "-m", "flas_cpp.rpc_server", "--host", "0.0.0.0", "--port",
                             str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=OUTSIDE)
    time.sleep(1.5)
    proc.kill()
    _, err = proc.communicate()
    assert "not a loopback address" in err and "NO authentication" in err
    bad = subprocess.run([sys.executable, "-m", "flas_cpp.rpc_server", "--port", "70000"], capture_output=True,
                         text=True, cwd=OUTSIDE)
    assert bad.returncode != 0 and "--port must be in 1..65535" in bad.stderr


def test_demo_runs_on_the_rpc_device_and_prints_its_memory(tiny_base_f32, flow):
    # a server of its own: a ggml RPC server serves one client process at a time
    port = free_port()
    server = start_server(port)
    endpoint = f"127.0.0.1:{port}"
    try:
        out = subprocess.run([sys.executable, "-m", "flas_cpp.demo", "--base", str(tiny_base_f32), "--flow", str(flow),
                              "--rpc", endpoint, "-ngl", "-1", "--memory", "--max-tokens", "4"],
                             capture_output=True, text=True, timeout=120, cwd=OUTSIDE)
    finally:
        stop_server(server)
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout.split("MiB ", 1)[1].splitlines()
    rpc_row = next(line for line in table if endpoint in line).split()
    cpu_row = next(line for line in table if line.startswith("CPU")).split()
    assert float(rpc_row[-4]) > 0 and float(cpu_row[-4]) == 0  # flow weights on the device only
    assert "on RPC" in out.stdout


def test_rpc_servers_argument_is_checked(tiny_base_f32, flow):
    with pytest.raises(ValueError, match="not host:port"):
        FlasModel(tiny_base_f32, flow, rpc_servers="127.0.0.1:99999")
    assert Path(tiny_base_f32).is_file()

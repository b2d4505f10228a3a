"""Leaks, lifetime and threads: resident memory stays flat over long loops (measured in a
subprocess of its own), close() and `with` free deterministically, a closed model says so, and
one FlasModel serves several threads at once (requests are queued on its engine) while two
models work side by side."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import textwrap

import pytest

from conftest import convert_tiny_flow
from flas_cpp import FlasModel, Request

PROMPT, PIRATE = "Tell me about your day.", "Talk like a pirate"
DRIFT_MB = 20

LOOP = textwrap.dedent("""
    import gc, json, sys
    from flas_cpp import FlasModel

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

    base, flow, what, n, warm = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

    def step(m, i):
        if what == "concepts":      # a new concept text each time: encoded, the oldest evicted
            m.generate("Hi.", concept=f"Talk like character number {i}", flowtime=2.0, max_tokens=1, temperature=0.0)
        elif what == "streams":     # a stream dropped after its first piece: cancelled
            s = m.stream("Tell me a long story.", concept="Talk like a pirate", flowtime=2.0, max_tokens=64)
            next(s)
            s.close()
        elif what == "models":      # a whole model loaded and closed
            with FlasModel(base, flow, n_ctx=256) as other:
                other.generate("Hi.", concept="Talk like a pirate", max_tokens=1, temperature=0.0)

    m = FlasModel(base, flow, n_ctx=256, concept_cache=4)
    samples = []
    for i in range(warm + n):
        step(m, i)
        if i + 1 == warm or (i + 1 - warm) % max(1, n // 4) == 0 and i + 1 > warm:
            gc.collect()
            samples.append(rss_mb())
    print(json.dumps(samples))
""")


@pytest.fixture(scope="module")
def flow(tiny, tmp_path_factory):
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("lifetime") / "flow-f32.gguf", "f32")


@pytest.mark.parametrize("what, n, warm", [("concepts", 1000, 50), ("models", 200, 10), ("streams", 1000, 50)])
def test_resident_memory_stays_flat(tiny_base_f32, flow, what, n, warm):
    out = subprocess.run([sys.executable, "-c", LOOP, str(tiny_base_f32), str(flow), what, str(n), str(warm)],
                         capture_output=True, text=True, timeout=900, cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr[-3000:]
    samples = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(samples) == 5  # after warm-up, then every quarter of the loop
    drift = max(samples) - samples[0]
    print(f"{what}: RSS after warm-up {samples[0]:.1f} MB, samples {samples}, drift {drift:+.1f} MB over {n}")
    assert drift <= DRIFT_MB, f"{what}: RSS grew {drift:.1f} MB over {n} iterations: {samples}"


def test_close_frees_now_and_a_closed_model_says_so(tiny_base_f32, flow):
    with FlasModel(tiny_base_f32, flow, n_ctx=256) as m:
        h = m.submit(prompt=PROMPT, concept=PIRATE, max_tokens=200, temperature=0.0)
    with pytest.raises(RuntimeError, match="this FlasModel is closed"):  # its request ended with the model
        h.result()
    h.cancel()  # nothing left to cancel: no error
    for call in (lambda: m.generate(PROMPT, flowtime=0.0), lambda: m.memory(), lambda: m.tokenize("x"),
                 lambda: m.encode_concept(PIRATE), lambda: m.stats()):
        with pytest.raises(RuntimeError, match="this FlasModel is closed"):
            call()
    m.close()  # twice: nothing happens


def test_one_model_serves_eight_threads_at_once(tiny_base_f32, flow):
    """Eight threads generate on one model at the same time (2 sequences: the rest queue);
    each gets exactly what it gets alone."""
    concepts = [PIRATE, "Answer as a noir detective", "Use legal terminology", None] * 2
    with FlasModel(tiny_base_f32, flow, n_ctx=512, n_seq=2, exact=True) as m:
        alone = [m.generate(PROMPT, concept=c, flowtime=2.0 if c else 0.0, temperature=0.0, max_tokens=16,
                            seed=i).tokens for i, c in enumerate(concepts)]
        together: list = [None] * len(concepts)
        errors: list = []
        barrier = threading.Barrier(len(concepts))

        def run(i: int) -> None:
            try:
                barrier.wait()
                c = concepts[i]
                together[i] = m.generate(PROMPT, concept=c, flowtime=2.0 if c else 0.0, temperature=0.0,
                                         max_tokens=16, seed=i).tokens
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(concepts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors and not any(t.is_alive() for t in threads)
        assert together == alone


def test_two_models_work_side_by_side(tiny_base_f32, flow, tiny, tmp_path):
    other_flow = convert_tiny_flow(tiny, tmp_path / "flow-bf16.gguf", "bf16")
    with FlasModel(tiny_base_f32, flow, n_ctx=256) as a, FlasModel(tiny_base_f32, other_flow, n_ctx=256) as b:
        want = [m.generate(PROMPT, concept=PIRATE, temperature=0.0, max_tokens=12).tokens for m in (a, b)]
        got: dict = {}

        def run(name: str, m: FlasModel) -> None:
            got[name] = [m.generate(PROMPT, concept=PIRATE, temperature=0.0, max_tokens=12).tokens for _ in range(3)]

        threads = [threading.Thread(target=run, args=(n, m)) for n, m in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert got["a"] == [want[0]] * 3 and got["b"] == [want[1]] * 3
        handles = [m.submit(Request(PROMPT, PIRATE, max_tokens=12, temperature=0.0)) for m in (a, b)]
        assert [h.result().tokens for h in handles] == want


def test_calls_between_steps_end_the_requests_whose_sequence_they_change(tiny_base_f32, flow):
    """Setting a steer hook empties every sequence: a request running then ends with an error
    saying so (instead of decoding on from a cache that is gone); the model goes on."""
    with FlasModel(tiny_base_f32, flow, n_ctx=4096) as m:
        h = m.submit(prompt=PROMPT, concept=PIRATE, max_tokens=4000, temperature=0.0)
        assert h.poll(5000)  # it is decoding (4000 tokens take seconds)
        m.set_steer_hook(lambda rows, pos0: rows)
        g = h.result()
        assert g.stop_reason == "error" and "its sequence was changed by a call made between two decode steps" in g.error
        m.set_steer_hook(None)
        assert m.generate(PROMPT, concept=PIRATE, temperature=0.0, max_tokens=8).stop_reason in ("max_tokens", "eog")


def test_a_call_from_inside_the_decode_step_is_refused_not_a_hang(tiny_base_f32, flow):
    """A steer hook that calls back into the model (which would wait for the very step it runs
    in) gets an error; the request fails, nothing hangs, the model goes on."""
    with FlasModel(tiny_base_f32, flow, n_ctx=512) as m:
        seen: list = []

        def hook(rows, pos0):
            try:
                m.encode_concept("Answer as a noir detective")
            except ValueError as e:
                seen.append(str(e))
            return rows

        m.set_steer_hook(hook)
        done: list = []
        t = threading.Thread(target=lambda: done.append(m.submit(prompt=PROMPT, concept=PIRATE, max_tokens=4,
                                                                 temperature=0.0).result()))
        t.start()
        t.join(timeout=120)
        assert not t.is_alive() and done[0].stop_reason in ("max_tokens", "eog")
        assert seen and "cannot be made from inside it" in seen[0]
        m.set_steer_hook(None)

"""Steering telemetry (issue 22): per generated token, the flowtime in force and how far the flow
moved layer L's row, ||h' - h|| / ||h||, checked against the displacement computed here from the
rows the request's trace recorded; through Python (Generation, stream), a change mid-run and the
C API."""

from __future__ import annotations

import ctypes as C
import sys
from pathlib import Path

import numpy as np
import pytest

import flas_cpp
from conftest import convert_tiny_flow
from flas_cpp import FlasModel, Request, TokenTelemetry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from ctypes_steer import Result, load  # noqa: E402

PIRATE, NOIR = "Talk like a pirate", "Respond as a noir detective"
PROMPT = "Tell me about your day."
RAMP = [(0, 0.5), (6, 3.0)]


@pytest.fixture(scope="module")
def flow(tiny, tmp_path_factory):
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("telemetry") / "flow-f32.gguf", "f32")


@pytest.fixture(scope="module")
def model(tiny_base_f32, flow):
    with FlasModel(tiny_base_f32, flow, n_ctx=2 * 256, n_seq=2, exact=True) as m:
        yield m


def traced(model: FlasModel, **fields):
    """A traced request with telemetry: its Generation and its rows."""
    s = model._settings(Request(prompt=PROMPT, temperature=0.0, telemetry=True, **fields))
    s.request.trace = True
    h = model._start([s])[0]
    return h.result(), h.trace()


def displacement_from_trace(t: dict, n_tokens: int) -> np.ndarray:
    """Generated token i is sampled from the pass of row n_prompt - 1 + i (the prompt's last row for i = 0)."""
    n_prompt = len(t["unsteered"]) - (n_tokens - 1)
    h = t["unsteered"][n_prompt - 1:].astype(np.float64)
    moved = t["steered"][n_prompt - 1:].astype(np.float64) - h
    return np.linalg.norm(moved, axis=1) / np.linalg.norm(h, axis=1)


@pytest.mark.parametrize("flowtime", [2.0, RAMP], ids=["constant", "ramp"])
def test_each_tokens_displacement_is_that_of_the_row_that_sampled_it(model, flowtime):
    g, t = traced(model, concept=PIRATE, flowtime=flowtime, n_steps=3, max_tokens=12)
    assert len(g.telemetry) == len(g.tokens) == 12 and all(isinstance(x, TokenTelemetry) for x in g.telemetry)
    want = displacement_from_trace(t, 12)
    got = np.array([x.displacement for x in g.telemetry])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got.min() > 1e-3
    T = [x.flowtime for x in g.telemetry]
    want_T = [2.0] * 12 if flowtime == 2.0 else list(np.interp(range(12), *zip(*RAMP)))
    np.testing.assert_allclose(T, want_T, rtol=1e-6)


def test_unsteered_tokens_are_not_moved_and_telemetry_is_opt_in(model):
    g = model.generate(PROMPT, flowtime=0.0, max_tokens=8, temperature=0.0, telemetry=True)
    assert g.telemetry == [TokenTelemetry(0.0, 0.0)] * 8
    # beside a steered sequence in the same batch (its rows go through the flow's callback too)
    a, b = model.generate_many([dict(prompt=PROMPT, flowtime=0.0, max_tokens=8, temperature=0.0, telemetry=True),
                                dict(prompt=PROMPT, concept=PIRATE, max_tokens=8, temperature=0.0, telemetry=True)])
    assert a.telemetry == [TokenTelemetry(0.0, 0.0)] * 8 and min(x.displacement for x in b.telemetry) > 1e-3
    assert model.generate(PROMPT, concept=PIRATE, max_tokens=4, temperature=0.0).telemetry is None
    with pytest.raises(ValueError, match="telemetry must be true or false"):
        model.generate(PROMPT, concept=PIRATE, telemetry="yes")


def test_stream_gives_each_pieces_telemetry(model):
    fields = dict(concept=PIRATE, flowtime=RAMP, max_tokens=16, temperature=0.0, telemetry=True)
    whole = model.generate(PROMPT, **fields)
    pairs = list(model.stream(PROMPT, **fields))
    assert "".join(p for p, _ in pairs) == whole.text
    streamed = [x for _, tel in pairs for x in tel]  # on another sequence: equal up to the last bits
    assert [x.flowtime for x in streamed] == [x.flowtime for x in whole.telemetry]
    np.testing.assert_allclose([x.displacement for x in streamed], [x.displacement for x in whole.telemetry], rtol=1e-4)
    assert all(isinstance(p, str) for p in model.stream(PROMPT, concept=PIRATE, max_tokens=4))  # without: text


def test_a_change_mid_run_shows_in_the_telemetry_from_its_token(model):
    h = model.submit(PROMPT, concept=PIRATE, flowtime=2.0, max_tokens=150, temperature=0.0, telemetry=True)
    while len(h._tokens) < 3:
        h.poll(5)
    at = h.steer(NOIR, flowtime=[(0, 1.0), (4, 0.0)])
    g = h.result()
    T = [x.flowtime for x in g.telemetry]
    assert T[:at] == [2.0] * at
    np.testing.assert_allclose(T[at:at + 6], [1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    assert all(x.displacement == 0.0 for x in g.telemetry[at + 4:])  # T = 0: rows as they were


def test_the_c_api_hands_over_each_tokens_data(tiny_base_f32, flow):
    class TokenData(C.Structure):  # struct flas_token_data
        _fields_ = [("token", C.c_int32), ("flowtime", C.c_float), ("displacement", C.c_float), ("logprob", C.c_float),
                    ("n_top", C.c_int32), ("top_token", C.c_int32 * 20), ("top_logprob", C.c_float * 20)]

    lib = load(flas_cpp.get_library())
    lib.flas_poll_data.argtypes = [C.c_void_p, C.c_uint64, C.c_int32, C.POINTER(TokenData), C.c_int32,
                                   C.POINTER(Result)]
    with FlasModel(tiny_base_f32, flow, n_ctx=256, exact=True) as m:
        want = m.generate(PROMPT, concept=PIRATE, max_tokens=8, temperature=0.0, telemetry=True)
    mp = lib.flas_model_default_params()
    mp.base_path, mp.flow_path, mp.n_ctx, mp.exact = str(tiny_base_f32).encode(), str(flow).encode(), 256, True
    model = C.c_void_p()
    assert lib.flas_model_load(C.byref(mp), C.byref(model)) == 0
    try:
        ids = (C.c_int32 * 64)()
        n = lib.flas_prompt_tokens(model, PROMPT.encode(), ids, 64)
        for telemetry in (True, False):
            rp = lib.flas_request_default_params()
            rp.prompt, rp.n_prompt, rp.concept, rp.max_tokens, rp.telemetry = ids, n, PIRATE.encode(), 8, telemetry
            rp.logprobs = 2 if telemetry else -1
            rp.sampling.temperature = 0.0
            rid, res, out, got = C.c_uint64(), Result(), (TokenData * 3)(), []
            assert lib.flas_submit(model, C.byref(rp), C.byref(rid)) == 0
            while res.finish == 0:
                k = lib.flas_poll_data(model, rid, 1000, out, 3, C.byref(res))
                assert k >= 0
                got += [(d.token, d.flowtime, d.displacement, d.logprob, list(d.top_token[:d.n_top])) for d in out[:k]]
            assert [x[0] for x in got] == want.tokens and all(x[1] == 2.0 for x in got)
            if telemetry:
                np.testing.assert_allclose([x[2] for x in got], [x.displacement for x in want.telemetry], rtol=1e-6)
                assert all(x[4][0] == x[0] and len(x[4]) == 2 and x[3] < 0 for x in got)  # greedy: the top one
            else:
                assert all(np.isnan(x[2]) and np.isnan(x[3]) and x[4] == [] for x in got)
    finally:
        lib.flas_model_free(model)


def test_hand_driven_sequences_measure_their_displacement_too(tiny_base_f32, flow):
    """flas_seq_set_telemetry / flas_seq_displacement: each decode's last row, as the trace recorded it."""
    from flas_cpp._native import core, model_params

    direct = core().Model(model_params(base=str(tiny_base_f32), flow=str(flow), n_ctx=256, exact=True))
    out = {}

    def steps():
        prompt = direct.prompt_tokens(PROMPT)
        direct.seq_set_steering(0, PIRATE, 2.0, 3)
        direct.seq_set_trace(0, True)
        direct.seq_set_telemetry(0, True)
        got = []
        for chunk in (prompt, [600, 601], [602]):
            direct.seq_decode([(0, chunk)])
            got.append(direct.seq_displacement(0))
        out["got"], out["again"] = got, direct.seq_displacement(0)  # taken: 0 until the next decode
        out["in"], out["out"] = direct.seq_get(0, "unsteered"), direct.seq_get(0, "steered")
        out["rows"] = [len(prompt) - 1, len(prompt) + 1, len(prompt) + 2]

    direct.exclusive(steps)
    direct.close()
    h, moved = out["in"][out["rows"]].astype(np.float64), (out["out"] - out["in"])[out["rows"]].astype(np.float64)
    np.testing.assert_allclose(out["got"], np.linalg.norm(moved, axis=1) / np.linalg.norm(h, axis=1), rtol=1e-5)
    assert out["again"] == 0.0

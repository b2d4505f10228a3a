"""Changing a running request's steering (issue 22): Handle.steer from the next decoded token on.
The rows before the change are the unchanged run's, the rows after it are the independent numpy
reference's with the new settings (its self-attention reading the earlier rows as they were
steered), the other sequences of the batch are untouched bit for bit, and every refusal (a flow
with self-attention that cannot take the change, an ended or unknown request, bad values) is a
clear error that leaves the request as it was."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from conftest import convert_tiny_flow
from flas_cpp import FlasModel, Request, RequestNotFoundError
from flas_cpp.convert import convert_base
from flas_cpp.testing import make_models
from flow_reference import FlowReference

PIRATE, NOIR = "Talk like a pirate", "Respond as a noir detective"
PROMPT = "Tell me about your day."
N_DECODE = 120  # long enough that a change made after a few tokens lands well inside the run


@pytest.fixture(scope="module")
def flow(tiny, tmp_path_factory):  # gemma2: the flow has self-attention
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("steer") / "flow-f32.gguf", "f32")


@pytest.fixture(scope="module")
def model(tiny_base_f32, flow):
    with FlasModel(tiny_base_f32, flow, n_ctx=2 * 256, n_seq=2, exact=True) as m:
        yield m


@pytest.fixture(scope="module")
def reference(tiny):
    return FlowReference(tiny[1], json.loads((tiny[0] / "config.json").read_text()))


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    """The tiny gemma3 models: its flow has no self-attention (FLAS_SPEC.md 7)."""
    d = tmp_path_factory.mktemp("steer-gemma3")
    base_dir, flow_st = make_models.make_models(d, "tiny", seed=1, quiet=True, family="gemma3")
    base = d / "base-f32.gguf"
    convert_base(base_dir, base, "f32", progress=False)
    flow = convert_tiny_flow((base_dir, flow_st), d / "flow-f32.gguf", "f32")
    ref = FlowReference(flow_st, json.loads((base_dir / "config.json").read_text()))
    with FlasModel(base, flow, n_ctx=2 * 256, n_seq=2, exact=True) as m:
        yield m, ref


def start(model: FlasModel, trace: bool = True, **fields):
    """A request's Handle; traced, its rows are kept (as FlasModel.trace does), end-of-generation ignored."""
    s = model._settings(Request(prompt=PROMPT, temperature=0.0, **fields))
    s.request.trace = trace
    return model._start([s])[0]


def after(handle, n: int) -> None:
    """Returns once the request has generated n tokens."""
    while len(handle._tokens) < n:
        handle.poll(5)


def rows_token(n_prompt: int, n_rows: int) -> np.ndarray:
    """The generated token each traced row's pass samples: the prompt's rows token 0, generated token j's row j + 1."""
    return np.array([0] * n_prompt + list(range(1, n_rows - n_prompt + 1)))


def check_rows(t: dict, n_prompt: int, want: np.ndarray) -> None:
    err = np.abs(t["steered"] - want).max(1) / np.abs(want - t["unsteered"]).max()
    assert err.max() < 1e-4, err


@pytest.mark.parametrize("change", [dict(concept=NOIR, flowtime=1.0), dict(concept=PIRATE, flowtime=[(0, 0.5), (6, 3.0)]),
                                    dict(concept=None)], ids=["concept", "schedule", "off"])
def test_rows_after_a_change_are_the_references_with_the_new_settings(model, reference, change):
    h = start(model, concept=PIRATE, flowtime=2.0, n_steps=3, max_tokens=N_DECODE + 1)
    after(h, 3)
    at = h.steer(**change, n_steps=3)
    g = h.result()
    assert 3 <= at < N_DECODE and g.changes == [{"token": at, "concept": change.get("concept"),
                                                  "flowtime": change.get("flowtime", 2.0) if change.get("concept") else 0.0,
                                                  "n_steps": 3}]
    t = h.trace()
    n_prompt = len(t["unsteered"]) - N_DECODE
    token = rows_token(n_prompt, len(t["unsteered"]))
    new = token >= at
    c_old = model.concept_rows(PIRATE).astype(np.float64)
    c_new = model.concept_rows(change["concept"]).astype(np.float64) if change.get("concept") else c_old
    flowtime = change.get("flowtime", 2.0) if change.get("concept") else 0.0
    T_new = (np.interp(token - at, *zip(*flowtime)) if isinstance(flowtime, list) else np.full(len(token), flowtime))
    T = np.where(new, T_new, 2.0)
    want = reference.steer(t["unsteered"], [c_new if n else c_old for n in new], T, 3)
    check_rows(t, n_prompt, want)
    # the tokens before the change are the unchanged run's
    plain = model.trace(PROMPT, concept=PIRATE, flowtime=2.0, n_steps=3, n_decode=N_DECODE)
    assert g.tokens[:at] == plain["generated"][:at]
    if change.get("concept") is None:  # unsteered from the change: rows untouched (T = 0)
        np.testing.assert_array_equal(t["steered"][new], t["unsteered"][new])


def test_a_flow_without_self_attention_steers_a_request_that_started_unsteered(gemma3):
    model, reference = gemma3
    h = start(model, concept=None, flowtime=0.0, max_tokens=N_DECODE + 1)
    after(h, 2)
    at = h.steer(PIRATE, flowtime=2.0, n_steps=2)
    h.result()
    t = h.trace()
    n_prompt = len(t["unsteered"]) - N_DECODE
    new = rows_token(n_prompt, len(t["unsteered"])) >= at
    np.testing.assert_array_equal(t["steered"][~new], t["unsteered"][~new])
    want = reference.steer(t["unsteered"], model.concept_rows(PIRATE).astype(np.float64), np.where(new, 2.0, 0.0), 2)
    check_rows(t, n_prompt, want)
    # and n_steps may change: each row is integrated on its own
    h = start(model, concept=PIRATE, flowtime=2.0, n_steps=2, max_tokens=N_DECODE + 1)
    after(h, 2)
    at = h.steer(NOIR, flowtime=1.5, n_steps=4)
    h.result()
    t = h.trace()
    new = rows_token(n_prompt, len(t["unsteered"])) >= at
    old = reference.steer(t["unsteered"], model.concept_rows(PIRATE).astype(np.float64), 2.0, 2)
    fresh = reference.steer(t["unsteered"], model.concept_rows(NOIR).astype(np.float64), 1.5, 4)
    check_rows(t, n_prompt, np.where(new[:, None], fresh, old))


def test_a_change_leaves_the_other_sequence_bit_identical(tiny_base_f32, flow):
    def run(change: bool) -> tuple[list[int], np.ndarray]:
        with FlasModel(tiny_base_f32, flow, n_ctx=2 * 256, n_seq=2, exact=True) as m:
            s = [m._settings(Request(prompt=p, concept=PIRATE, flowtime=2.0, temperature=0.0, max_tokens=N_DECODE + 1))
                 for p in (PROMPT, "Describe the sea.")]
            for x in s:
                x.request.trace = True
            a, b = m._start(s)
            if change:
                after(a, 3)
                a.steer(NOIR, flowtime=0.7)
            a.result()
            return b.result().tokens, b.trace()["steered"]
    tokens, rows = run(False)
    tokens_changed, rows_changed = run(True)
    assert tokens_changed == tokens
    np.testing.assert_array_equal(rows_changed, rows)


def test_a_self_attention_flow_refuses_what_it_cannot_change_and_the_request_goes_on(model):
    want = model.generate(PROMPT, concept=None, flowtime=0.0, max_tokens=40, temperature=0.0).tokens
    h = start(model, trace=False, concept=None, flowtime=0.0, max_tokens=40)
    after(h, 2)
    with pytest.raises(ValueError, match="started unsteered"):
        h.steer(PIRATE, flowtime=2.0)
    assert h.result().tokens == want and h.result().changes == []
    h = start(model, trace=False, concept=PIRATE, flowtime=2.0, n_steps=3, max_tokens=40)
    after(h, 2)
    with pytest.raises(ValueError, match="n_steps cannot change"):
        h.steer(PIRATE, flowtime=1.0, n_steps=4)
    assert h.steer(PIRATE, flowtime=1.0, n_steps=3) >= 2  # the same steps: fine
    assert h.result().stop_reason in ("eog", "max_tokens")


def test_bad_values_and_ended_or_unknown_requests_are_clear_errors(model):
    h = start(model, trace=False, concept=PIRATE, flowtime=2.0, max_tokens=200)
    after(h, 1)
    with pytest.raises(ValueError, match="flowtime must be a finite number >= 0"):
        h.steer(PIRATE, flowtime=-1.0)
    with pytest.raises(ValueError, match="strictly ascending"):
        h.steer(PIRATE, flowtime=[(4, 1.0), (2, 2.0)])
    with pytest.raises(ValueError, match="needs a concept"):
        h.steer(None, flowtime=[(0, 0.0), (3, 1.0)])
    with pytest.raises(ValueError, match="concept is empty"):
        h.steer("  ")
    h.cancel()
    g = h.result()
    with pytest.raises(RequestNotFoundError, match="ended|unknown"):
        h.steer(NOIR)
    assert g.changes == []
    req = model._steering(PIRATE, 2.0, None)
    with pytest.raises(RequestNotFoundError, match="unknown request 987654"):
        model._m.steer(987654, req)


def test_a_change_racing_the_end_either_lands_or_says_it_came_too_late(model):
    """Short requests changed at once, from another thread: never a hang, and a change that lands
    names a token inside the reply."""
    landed = late = 0
    for i in range(20):
        h = start(model, trace=False, concept=PIRATE, flowtime=2.0, max_tokens=3, seed=i)
        out: list = []
        th = threading.Thread(target=lambda: out.append(_try_steer(h)))
        th.start()
        g = h.result()
        th.join(10)
        assert not th.is_alive()
        if isinstance(out[0], int):
            landed += 1
            assert 0 <= out[0] <= len(g.tokens)
        else:
            late += 1
            assert isinstance(out[0], RequestNotFoundError)
    assert landed + late == 20


def _try_steer(h):
    try:
        return h.steer(NOIR, flowtime=1.0)
    except RequestNotFoundError as e:
        return e


def test_a_queued_request_takes_the_change_from_its_start(tiny_base_f32, flow):
    with FlasModel(tiny_base_f32, flow, n_ctx=256, n_seq=1, exact=True) as m:
        want = m.generate(PROMPT, concept=NOIR, flowtime=1.0, max_tokens=12, temperature=0.0).tokens
        first = start(m, trace=False, concept=PIRATE, max_tokens=200)
        queued = start(m, trace=False, concept=PIRATE, flowtime=2.0, max_tokens=12)
        assert queued.steer(NOIR, flowtime=1.0) == 0
        first.cancel()
        assert queued.result().tokens == want


def test_a_new_concept_is_encoded_once_between_two_steps(model):
    model.encode_concept(PIRATE)
    before = model.stats()["concepts_encoded"]
    h = start(model, trace=False, concept=PIRATE, max_tokens=200)
    after(h, 2)
    h.steer("Answer like a medieval bard", flowtime=2.0)
    h.steer("Answer like a medieval bard", flowtime=1.0)  # found in the concept table
    h.cancel()
    h.result()
    assert model.stats()["concepts_encoded"] - before == 1

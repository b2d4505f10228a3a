"""Strength schedules (issue 22): flowtime as [(token, T), ...] over the generated tokens, against
the independent numpy reference integrating each row to its own T; a constant schedule is the
plain number bit for bit; a schedule's errors; and a reused sequence keeps its concept while it
runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import convert_tiny_flow
from flas_cpp import FlasModel
from flow_reference import FlowReference

PIRATE, NOIR = "Talk like a pirate", "Respond as a noir detective"
PROMPT = "Tell me about your day."


@pytest.fixture(scope="module")
def flow(tiny, tmp_path_factory):
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("schedule") / "flow-f32.gguf", "f32")


@pytest.fixture(scope="module")
def model(tiny_base_f32, flow):
    with FlasModel(tiny_base_f32, flow, n_ctx=2 * 256, n_seq=2, exact=True) as m:
        yield m


@pytest.fixture(scope="module")
def reference(tiny):
    return FlowReference(tiny[1], json.loads((tiny[0] / "config.json").read_text()))


def schedule_value(points: list[tuple[int, float]], token: int) -> float:
    """The schedule as the issue defines it, written out here: linear between breakpoints, held outside."""
    tokens, values = zip(*points)
    return float(np.interp(token, tokens, values))


def row_flowtimes(points, n_prompt: int, n_decode: int) -> np.ndarray:
    """The T of each traced row: the prompt's rows sample token 0, generated token j's row samples j + 1."""
    return np.array([schedule_value(points, 0)] * n_prompt + [schedule_value(points, j + 1) for j in range(n_decode)])


@pytest.mark.parametrize("points", [[(0, 0.5), (8, 2.0)], [(0, 0.0), (3, 0.0), (6, 2.5)], [(2, 3.0), (5, 1.0)]],
                         ids=["ramp", "from-zero", "falling"])
def test_rows_of_a_scheduled_run_match_the_reference_token_by_token(model, reference, points):
    n_decode = 10
    t = model.trace(PROMPT, concept=PIRATE, flowtime=points, n_steps=3, n_decode=n_decode)
    n_prompt = len(t["tokens"]) - n_decode
    T = row_flowtimes(points, n_prompt, n_decode)
    ref = reference.steer(t["unsteered"], model.concept_rows(PIRATE).astype(np.float64), T, 3)
    err = np.abs(t["steered"] - ref).max(1) / np.abs(ref - t["unsteered"]).max()
    assert err.max() < 1e-4, err
    unsteered_rows = T == 0
    np.testing.assert_array_equal(t["steered"][unsteered_rows], t["unsteered"][unsteered_rows])  # T = 0: untouched
    # and it is a schedule: each T differs from the constant runs' rows where the schedule differs
    for T_const in set(T[T > 0]):
        const = reference.steer(t["unsteered"], model.concept_rows(PIRATE).astype(np.float64), T_const, 3)
        differs = np.abs(T - T_const) > 1e-6
        assert (np.abs(const - t["steered"]).max(1)[differs] > 1e-3).all()


def test_a_constant_schedule_is_the_plain_number_bit_for_bit(tiny_base_f32, flow):
    # one sequence: two sequences of a model differ in their last bits (llama.cpp's cache cells)
    with FlasModel(tiny_base_f32, flow, n_ctx=256, exact=True) as model:
        constant_schedules_are_the_number(model)


def constant_schedules_are_the_number(model: FlasModel) -> None:
    plain = model.trace(PROMPT, concept=PIRATE, flowtime=2.0, n_decode=6)
    for points in ([(0, 2.0)], [(0, 2.0), (4, 2.0)], [(3, 2.0)]):
        sched = model.trace(PROMPT, concept=PIRATE, flowtime=points, n_decode=6)
        assert sched["tokens"] == plain["tokens"]
        np.testing.assert_array_equal(sched["steered"], plain["steered"])
    g = dict(prompt=PROMPT, concept=PIRATE, max_tokens=16, temperature=0.0)
    assert model.generate(**g, flowtime=[(0, 2.0)]).tokens == model.generate(**g, flowtime=2.0).tokens


def test_scheduled_greedy_text_equals_a_run_driven_by_the_reference(model, reference):
    """Whole generations: the engine's tokens under a ramp equal greedy decoding with the flow
    replaced by the reference, which sets each new row's T from the schedule."""
    points = [(0, 0.5), (6, 3.0)]
    c = model.concept_rows(PIRATE).astype(np.float64)
    seen: list[np.ndarray] = []

    def hook(rows: np.ndarray, pos0: int) -> np.ndarray:
        seen.append(rows.copy())
        h = np.concatenate(seen)
        n_prompt = len(seen[0])
        T = row_flowtimes(points, n_prompt, len(h) - n_prompt)
        return reference.steer(h, c, T, 3)[pos0:].astype(np.float32)

    want = model.generate(PROMPT, concept=PIRATE, flowtime=points, n_steps=3, max_tokens=12, temperature=0.0).tokens
    model.set_steer_hook(hook)
    try:
        got = model.generate(PROMPT, flowtime=0.0, max_tokens=12, temperature=0.0).tokens
    finally:
        model.set_steer_hook(None)
    assert got == want
    assert want != model.generate(PROMPT, concept=PIRATE, flowtime=0.5, n_steps=3, max_tokens=12,
                                  temperature=0.0).tokens


def test_a_scheduled_run_leaves_no_rows_for_the_next_request_to_reuse_wrongly(model, tiny_base_f32, flow):
    """After a ramp the sequence holds rows of many strengths: a request at the last strength must
    not take the prompt's rows (computed at the first) as its own."""
    g = dict(prompt=PROMPT, concept=PIRATE, max_tokens=8, temperature=0.0)
    with FlasModel(tiny_base_f32, flow, n_ctx=256, exact=True) as fresh:
        want = fresh.generate(**g, flowtime=2.0).tokens
    model.generate(**g, flowtime=[(0, 0.5), (4, 2.0)])
    assert model.generate(**g, flowtime=2.0).tokens == want


@pytest.mark.parametrize("flowtime, message", [
    ([], "flowtime must be a number or a schedule"),
    ("2", "flowtime must be a number or a schedule"),
    ([(0, 1.0, 2)], "flowtime must be a number or a schedule"),
    ([(0.5, 1.0)], "flowtime must be a number or a schedule"),
    ([(4, 1.0), (2, 2.0)], "flowtime schedule: tokens must be >= 0 and strictly ascending, got token 2 at breakpoint 1 after 4"),
    ([(0, 1.0), (0, 2.0)], "strictly ascending"),
    ([(-1, 1.0)], "strictly ascending"),
    ([(0, 1.0), (8, -1.0)], "flowtime must be a finite number >= 0"),
    ([(0, 1.0), (8, float("nan"))], "flowtime must be a finite number >= 0"),
])
def test_bad_schedules_are_clear_errors(model, flowtime, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        model.generate(PROMPT, concept=PIRATE, flowtime=flowtime, max_tokens=2)


def test_a_schedule_above_zero_needs_a_concept(model):
    with pytest.raises(ValueError, match="needs a concept"):
        model.generate(PROMPT, flowtime=[(0, 0.0), (4, 2.0)], max_tokens=2)
    assert model.generate(PROMPT, flowtime=[(0, 0.0), (4, 0.0)], max_tokens=2, temperature=0.0).tokens == \
        model.generate(PROMPT, flowtime=0.0, max_tokens=2, temperature=0.0).tokens


def test_a_reused_sequence_keeps_its_concept_while_another_is_encoded(tiny_base_f32, flow):
    """concept_cache 1, two sequences: a request that reuses its sequence's prompt (and concept)
    must pin the concept, or the other sequence's new concept evicts it mid-run and empties its
    sequence under it."""
    g = dict(prompt=PROMPT, concept=PIRATE, max_tokens=12, temperature=0.0)
    other = dict(prompt="Why is the sky blue?", concept=NOIR, max_tokens=12, temperature=0.0)
    with FlasModel(tiny_base_f32, flow, n_ctx=256, exact=True) as alone:
        want, want_other = alone.generate(**g).tokens, alone.generate(**other).tokens
    with FlasModel(tiny_base_f32, flow, n_ctx=2 * 256, n_seq=2, concept_cache=1, exact=True) as m:
        m.generate(**g)
        reused, second = m.generate_many([g, other])
    assert reused.n_cached_tokens > 0  # it did reuse its sequence
    assert (reused.tokens, second.tokens) == (want, want_other)


def test_a_hand_driven_schedule_through_the_c_api_sequences(tiny_base_f32, flow, reference):
    """flas_seq_set_flowtime between decodes: the prompt at 0.5, two tokens at 2, two at 0 (the
    concept kept, its rows through the flow at dt = 0), against the reference row by row."""
    from flas_cpp._native import core, model_params

    direct = core().Model(model_params(base=str(tiny_base_f32), flow=str(flow), n_ctx=256, exact=True))
    out = {}

    def steps():
        prompt = direct.prompt_tokens(PROMPT)
        direct.seq_set_steering(0, PIRATE, 0.5, 3)
        direct.seq_set_trace(0, True)
        direct.seq_decode([(0, prompt)])
        direct.seq_set_flowtime(0, 2.0)
        direct.seq_decode([(0, [600, 601])])
        direct.seq_set_flowtime(0, 0.0)
        direct.seq_decode([(0, [602, 603])])
        out["T"] = np.array([0.5] * len(prompt) + [2.0, 2.0, 0.0, 0.0])
        out["in"], out["out"] = direct.seq_get(0, "unsteered"), direct.seq_get(0, "steered")
        direct.seq_set_steering(0, "", 0.0, 3)
        try:
            direct.seq_set_flowtime(0, 1.0)  # unsteered: it holds no concept to steer with
        except ValueError as e:
            out["error"] = str(e)

    direct.exclusive(steps)
    c = direct.concept_rows(PIRATE).astype(np.float64)
    direct.close()
    ref = reference.steer(out["in"], c, out["T"], 3)
    assert np.abs(out["out"] - ref).max() / np.abs(ref - out["in"]).max() < 1e-4
    np.testing.assert_array_equal(out["out"][-2:], out["in"][-2:])
    assert "needs a concept" in out["error"]

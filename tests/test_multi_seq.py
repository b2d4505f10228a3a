"""Several sequences decoded together, each with its own concept, strength, steps and sampling,
against the independent numpy reference and against each request run alone."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import convert_tiny_flow
from flas_cpp import FlasModel, Request
from flow_reference import FlowReference

PIRATE, NOIR, LEGAL = "Talk like a pirate", "Respond as a noir detective", "Use legal terminology"
PROMPTS = ["Tell me about your day.", "Why is the sky blue?", "Write a limerick about a cat.", "What is a flow?"]


@pytest.fixture(scope="module")
def flow(tiny, tmp_path_factory):
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("multi") / "flow-f32.gguf", "f32")


@pytest.fixture(scope="module")
def reference(tiny):
    return FlowReference(tiny[1], json.loads((tiny[0] / "config.json").read_text()))


@pytest.fixture(scope="module")
def encode(tiny):
    """c = final_norm(layer1(layer0(embed(ids)))) computed by transformers (FLAS_SPEC.md 2)."""
    tok = AutoTokenizer.from_pretrained(tiny[0])
    model = AutoModelForCausalLM.from_pretrained(tiny[0], dtype=torch.float32, attn_implementation="eager").eval()

    def c(concept: str) -> np.ndarray:
        ids = tok(concept, truncation=True, max_length=64).input_ids
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[2]
            return model.model.norm(hidden)[0].double().numpy()
    return c


@pytest.fixture(scope="module")
def four(tiny_base_f32, flow):
    return FlasModel(tiny_base_f32, flow, n_ctx=4 * 256, n_seq=4, exact=True)


@pytest.fixture(scope="module")
def solo(tiny_base_f32, flow):
    return FlasModel(tiny_base_f32, flow, n_ctx=256, exact=True)


def normalized_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


# different concepts, strengths and step counts; one with T = 0, one without a concept
MIXED = [dict(prompt=PROMPTS[0], concept=PIRATE, flowtime=2.0, n_steps=3),
         dict(prompt=PROMPTS[1], concept=NOIR, flowtime=0.5, n_steps=1),
         dict(prompt=PROMPTS[2], concept=LEGAL, flowtime=0.0, n_steps=4),
         dict(prompt=PROMPTS[3], concept=None, flowtime=0.0),
         dict(prompt=PROMPTS[3], concept=LEGAL, flowtime=4.0, n_steps=4)]


def traced_together(m: FlasModel, requests: list[dict], n_decode: int) -> list[dict]:
    settings = []
    for r in requests:
        s = m._settings(Request(temperature=0.0, max_tokens=n_decode + 1, **r))
        s.request.trace = True
        settings.append(s)
    return [h.trace() for h in m._start(settings)]


@pytest.mark.parametrize("which", [[0, 1, 2, 3], [0, 1, 4, 3], [4, 0, 1]])
def test_rows_of_sequences_decoded_together_match_the_reference_run_alone(four, reference, encode, which):
    requests = [MIXED[i] for i in which]
    calls = four.stats()["n_decode_calls"]
    traces = traced_together(four, requests, n_decode=8)
    assert four.stats()["n_decode_calls"] - calls == 9  # one prefill step and 8 decode steps, all together
    for r, t in zip(requests, traces):
        n_prompt = len(four.prompt_tokens(r["prompt"]))
        assert t["unsteered"].shape == t["steered"].shape == (n_prompt + 8, 128)
        if not r["flowtime"]:
            np.testing.assert_array_equal(t["steered"], t["unsteered"])  # untouched, bit for bit
            continue
        ref = reference.steer(t["unsteered"], encode(r["concept"]), r["flowtime"], r["n_steps"])
        assert normalized_error(t["steered"], ref) <= 1e-4, r
        assert normalized_error(t["unsteered"], ref) > 1e-2


def test_greedy_tokens_together_equal_each_sequence_alone(four, solo):
    requests = [dict(r, max_tokens=32, temperature=0.0) for r in MIXED[:4]]
    together = four.generate_many(requests)
    for r, g in zip(requests, together):
        alone = solo.generate(**r)
        assert g.tokens == alone.tokens and len(g.tokens) == 32, r
    assert together[0].tokens != solo.generate(**dict(requests[0], flowtime=0.0)).tokens  # it was steered


def test_continuous_batching_seven_requests_through_four_sequences(four, solo):
    lengths = [4, 24, 24, 24, 4, 4, 4]
    requests = [Request(prompt=PROMPTS[i % 4], concept=[PIRATE, NOIR, LEGAL][i % 3], flowtime=1.0 + i % 3,
                        n_steps=1 + i % 3, max_tokens=n, temperature=0.0 if i % 2 else 0.9, seed=i)
                for i, n in enumerate(lengths)]
    calls = four.stats()["n_decode_calls"]
    together = four.generate_many(requests)
    steps = four.stats()["n_decode_calls"] - calls
    for r, g in zip(requests, together):
        assert g.tokens == solo.submit(r).result().tokens, r  # greedy and sampled (same seed) alike
        assert g.stop_reason == "max_tokens"
    # the short requests take the freed sequences at once: about 24 steps, not 24 + 4 (batch by batch)
    assert steps <= 26


def test_prompts_longer_than_n_batch_mixed_with_short_ones(tiny_base_f32, flow, solo):
    m = FlasModel(tiny_base_f32, flow, n_ctx=4 * 256, n_seq=4, exact=True, n_batch=16)
    long_prompt = "Tell me a long story about the sea, the wind, the ships and the sailors who loved them. " * 2
    requests = [dict(prompt=long_prompt, concept=PIRATE, max_tokens=12, temperature=0.0),
                dict(prompt=PROMPTS[1], concept=NOIR, max_tokens=12, temperature=0.0),
                dict(prompt=long_prompt, concept=None, flowtime=0.0, max_tokens=12, temperature=0.0)]
    assert len(m.prompt_tokens(long_prompt)) > 2 * 16
    for r, g in zip(requests, m.generate_many(requests)):
        assert g.tokens == solo.generate(**r).tokens, r


def test_a_request_submitted_while_others_decode(four, solo):
    long = [four.submit(prompt=p, concept=PIRATE, max_tokens=60, temperature=0.0) for p in PROMPTS[:3]]
    while not long[0].poll():
        pass  # the first ones are decoding
    late = four.submit(prompt=PROMPTS[3], concept=NOIR, max_tokens=8, temperature=0.0)
    first_piece = ""
    while not first_piece and not late.done:
        first_piece = late.poll()
    assert not all(h.done for h in long)  # it joined while they were still decoding
    assert late.result().tokens == solo.generate(PROMPTS[3], concept=NOIR, max_tokens=8, temperature=0.0).tokens
    for h in long:
        assert len(h.result().tokens) == 60


def test_cancel_frees_the_sequence_within_one_decode_step(tiny_base_f32, flow):
    m = FlasModel(tiny_base_f32, flow, n_ctx=2 * 256, n_seq=2, exact=True)
    # queued together, so that both start in the same step: submitted one by one, the first could
    # produce a token before the second was admitted (then two would still be queued below)
    running = m._submit_all([dict(prompt=p, concept=PIRATE, max_tokens=200, temperature=0.0) for p in PROMPTS[:2]])
    waiting = m.submit(prompt=PROMPTS[2], concept=NOIR, max_tokens=4, temperature=0.0)
    while not running[0].poll():
        pass
    assert m.stats()["n_queued"] == 1
    calls = m.stats()["n_decode_calls"]
    running[0].cancel()
    g = waiting.result()
    # the step under way when cancel() came, then the one that prefilled the waiting request and
    # sampled its first token, then its 3 decode steps
    assert m.stats()["n_decode_calls"] - calls <= 2 + 3
    assert len(g.tokens) == 4 and not running[1].done
    assert running[0].result().stop_reason == "cancelled"
    running[1].cancel()
    assert running[1].result().stop_reason == "cancelled"
    assert m.stats()["n_active"] == 0


def test_stream_many_interleaves_pieces_of_every_request(four):
    requests = [dict(prompt=p, concept=PIRATE, max_tokens=10, temperature=0.0) for p in PROMPTS]
    order = []
    texts = ["", "", "", ""]
    for i, piece in four.stream_many(requests):
        order.append(i)
        texts[i] += piece
    assert texts == [g.text for g in four.generate_many(requests)]
    assert order != sorted(order)  # pieces arrive as the sequences decode, not one request after another


def test_the_same_concept_is_encoded_once(tiny_base_f32, flow):
    m = FlasModel(tiny_base_f32, flow, n_ctx=4 * 256, n_seq=4, concept_cache=2)
    before = m.stats()["concepts_encoded"]
    m.generate_many([dict(prompt=p, concept="Speak like a sailor", max_tokens=2) for p in PROMPTS[:2]])
    assert m.stats()["concepts_encoded"] - before == 1
    m.generate(PROMPTS[0], concept="Speak like a sailor", max_tokens=2)
    assert m.stats()["concepts_encoded"] - before == 1
    # a bound of 2: two more concepts evict the least recently used one, which is encoded again
    m.generate(PROMPTS[0], concept=PIRATE, max_tokens=2)
    m.generate(PROMPTS[0], concept=NOIR, max_tokens=2)
    assert m.stats()["concepts_cached"] == 2
    m.generate(PROMPTS[0], concept="Speak like a sailor", max_tokens=2)
    assert m.stats()["concepts_encoded"] - before == 4


def test_many_sequences_from_other_threads(four, solo):
    results: dict[int, list[int]] = {}

    def worker(i: int) -> None:
        results[i] = four.generate(PROMPTS[i], concept=[PIRATE, NOIR][i % 2], max_tokens=10, temperature=0.0).tokens

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i in range(4):
        assert results[i] == solo.generate(PROMPTS[i], concept=[PIRATE, NOIR][i % 2], max_tokens=10,
                                           temperature=0.0).tokens


# ---- bad input ------------------------------------------------------------------------------

def test_bad_model_settings(tiny_base_f32, flow):
    """The core's rules, with the core's messages (test_c_api.py checks the same through the C API)."""
    with pytest.raises(ValueError, match=r"n_seq must be in 1\.\.\d+, got 0"):
        FlasModel(tiny_base_f32, flow, n_seq=0)
    with pytest.raises(ValueError, match=r"n_ctx 64 leaves 8 tokens to each of 8 sequences; .* raise n_ctx to >= 128"):
        FlasModel(tiny_base_f32, flow, n_ctx=64, n_seq=8)
    with pytest.raises(ValueError, match="concept_cache must be >= 1, got 0"):
        FlasModel(tiny_base_f32, flow, concept_cache=0)
    with pytest.raises(ValueError, match="n_batch must be >= 1, got 0"):
        FlasModel(tiny_base_f32, flow, n_batch=0)
    with pytest.raises(ValueError, match="n_seq must be an integer, got True"):  # types stay Python's
        FlasModel(tiny_base_f32, flow, n_seq=True)


@pytest.mark.parametrize("bad, message", [
    (dict(flowtime=-1.0), r"request 2: flowtime must be a finite number >= 0"),
    (dict(n_steps=0), r"request 2: n_steps must be in 1\.\.64"),
    (dict(concept=" "), r"request 2: concept is empty"),
    (dict(max_tokens=0), r"request 2: max_tokens must be >= 1, got 0"),
    (dict(top_p=2.0), r"request 2: top_p must be in \(0, 1\]"),
    (dict(seed="x"), r"request 2: seed must be an integer"),
    (dict(colour="red"), r"request 2: unknown field 'colour'"),
    (dict(prompt=None), r"request 2: pass either a prompt or messages"),
])
def test_a_bad_request_is_named_before_anything_runs(four, bad, message):
    requests = [dict(prompt=p, concept=PIRATE, max_tokens=2) for p in PROMPTS]
    requests[2] = {**requests[2], **bad}
    calls = four.stats()["n_decode_calls"]
    with pytest.raises(ValueError, match=message):
        four.generate_many(requests)
    time.sleep(0.05)
    assert four.stats()["n_decode_calls"] == calls and four.stats()["n_active"] == 0


def test_a_prompt_too_long_for_a_sequence_fails_alone(four):
    too_long = "pirate " * 300
    requests = [dict(prompt=PROMPTS[0], concept=PIRATE, max_tokens=4, temperature=0.0),
                dict(prompt=too_long, concept=PIRATE, max_tokens=4),
                dict(prompt=PROMPTS[1], max_tokens=4, flowtime=0.0, temperature=0.0)]
    out = four.generate_many(requests)
    assert [g.stop_reason for g in out] == ["max_tokens", "error", "max_tokens"]
    assert out[1].error.startswith("the prompt is") and "a sequence holds 256" in out[1].error
    assert out[1].error_status == -5  # flas.h's FLAS_ERR_CONTEXT_LENGTH
    with pytest.raises(RuntimeError, match="request 1 failed: the prompt is"):
        list(four.stream_many(requests))
    with pytest.raises(ValueError, match="the prompt is .* tokens but a sequence holds 256"):
        four.generate(too_long, concept=PIRATE)


def test_random_submits_and_cancels_from_several_threads(tiny_base_f32, flow, solo):
    import random

    m = FlasModel(tiny_base_f32, flow, n_ctx=3 * 256, n_seq=3, exact=True, n_batch=8)
    outcomes: list[tuple[dict, object]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(8):
            r = dict(prompt=rng.choice(PROMPTS), concept=rng.choice([PIRATE, NOIR, None]), max_tokens=rng.randint(1, 10),
                     temperature=0.0)
            r["flowtime"] = rng.choice([0.5, 2.0]) if r["concept"] else 0.0
            h = m.submit(**r)
            if rng.random() < 0.3:
                for _ in range(rng.randint(0, 3)):
                    h.poll(rng.randint(0, 20))
                h.cancel()
            with lock:
                outcomes.append((r, h))

    threads = [threading.Thread(target=client, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(outcomes) == 24
    for r, h in outcomes:
        g = h.result()
        assert g.stop_reason in ("eog", "max_tokens", "cancelled"), (r, g.stop_reason, g.error)
        alone = solo.generate(**r).tokens
        if g.stop_reason == "cancelled":
            assert g.tokens == alone[:len(g.tokens)]  # what it gave before the cancel was right
        else:
            assert g.tokens == alone, r
    assert m.stats()["n_active"] == 0 and m.stats()["n_queued"] == 0


def test_a_long_prefill_is_steered_in_several_passes_like_the_reference(four, reference, encode):
    long_prompt = " ".join(["The sea was calm and the wind was low, and the sailors sang."] * 9)
    requests = [dict(prompt=long_prompt, concept=PIRATE, flowtime=2.0, n_steps=3),
                dict(prompt=PROMPTS[1], concept=NOIR, flowtime=1.0, n_steps=2)]
    traces = traced_together(four, requests, n_decode=2)
    assert len(four.prompt_tokens(long_prompt)) > 2 * 64  # more rows than one flow pass takes
    for r, t in zip(requests, traces):
        ref = reference.steer(t["unsteered"], encode(r["concept"]), r["flowtime"], r["n_steps"])
        assert normalized_error(t["steered"], ref) <= 1e-4, r


def test_a_sequence_s_rows_do_not_depend_on_the_concepts_beside_it(tiny, tiny_base_f32, tmp_path_factory):
    """The default (not exact) model: f16 concept state and folded values, a bf16 flow. A pass
    mixing concepts computes each row as a pass of its concept alone does: the prompt's steered
    rows, prefilled beside other concepts, are bit for bit those prefilled alone. Decoded rows
    then differ only by llama.cpp's own rounding in a larger batch (about 1e-4 relative here,
    also between two unsteered sequences), not by another arithmetic path of the flow."""
    flow = convert_tiny_flow(tiny, tmp_path_factory.mktemp("mixed") / "flow-bf16.gguf", "bf16")
    with FlasModel(tiny_base_f32, flow, n_ctx=3 * 256, n_seq=3) as m:
        pirate = dict(prompt=PROMPTS[0], concept=PIRATE, flowtime=2.0, n_steps=3)
        n_prompt = len(m.prompt_tokens(PROMPTS[0]))
        alone = traced_together(m, [pirate], n_decode=6)[0]
        beside = traced_together(m, [pirate, dict(prompt=PROMPTS[1], concept=NOIR, flowtime=1.0, n_steps=2),
                                     dict(prompt=PROMPTS[2], concept=LEGAL, flowtime=3.0, n_steps=4)], n_decode=6)[0]
        np.testing.assert_array_equal(beside["steered"][:n_prompt], alone["steered"][:n_prompt])
        assert normalized_error(beside["steered"], alone["steered"]) <= 1e-3
        assert normalized_error(alone["steered"], alone["unsteered"]) > 1e-2  # it was steered

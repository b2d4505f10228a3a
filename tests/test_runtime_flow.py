"""The C++ flow in llama.cpp's eval callback against the independent numpy reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import convert_tiny_flow
from flas_cpp import FlasModel
from flas_cpp._native import core, model_params
from flas_cpp.testing import make_models as mm
from flow_reference import FlowReference, generate_driven_by_reference

PROMPT = "Tell me about your day."
CONCEPT = "Talk like a pirate"


@pytest.fixture(scope="module")
def base_config(tiny) -> dict:
    return json.loads((tiny[0] / "config.json").read_text())


def encode_concept(base_dir, text: str) -> np.ndarray:
    """c = final_norm(layer1(layer0(embed(ids)))) computed by transformers (FLAS_SPEC.md 2)."""
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok(text, truncation=True, max_length=64).input_ids
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[2]
        return model.model.norm(hidden)[0].double().numpy()


@pytest.fixture(scope="module")
def concept_c(tiny) -> np.ndarray:
    return encode_concept(tiny[0], CONCEPT)


@pytest.fixture(scope="module")
def flows(tiny, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("runtime-flows")
    ablated = mm.write_flow(d / "no-sa", disable=frozenset({"self_attn"}), quiet=True)
    return {
        "f32": (convert_tiny_flow(tiny, d / "flow-f32.gguf", "f32"), tiny[1]),
        "bf16": (convert_tiny_flow(tiny, d / "flow-bf16.gguf", "bf16"), tiny[1]),
        "no-self-attn": (convert_tiny_flow((tiny[0], ablated), d / "flow-no-sa.gguf", "f32"), ablated),
    }


@pytest.fixture(scope="module")
def models(tiny_base_f32, flows) -> dict:
    return {k: FlasModel(tiny_base_f32, gguf, n_ctx=256, exact=True) for k, (gguf, _) in flows.items()}


def normalized_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("flow, tol", [("f32", 1e-4), ("bf16", 2e-2), ("no-self-attn", 1e-4)])
@pytest.mark.parametrize("n_steps", [1, 2, 3, 4])
@pytest.mark.parametrize("flowtime", [0.5, 2.0, 4.0])
def test_steered_rows_match_the_reference(models, flows, base_config, concept_c, flow, tol, n_steps, flowtime):
    m = models[flow]
    t = m.trace(PROMPT, concept=CONCEPT, flowtime=flowtime, n_steps=n_steps, n_decode=8)
    n_prompt = len(m.prompt_tokens(PROMPT))
    assert t["unsteered"].shape == t["steered"].shape == (n_prompt + 8, 128)
    ref = FlowReference(flows[flow][1], base_config).steer(t["unsteered"], concept_c, flowtime, n_steps)
    # prefill rows, then each of the 8 single-row decode steps
    assert normalized_error(t["steered"][:n_prompt], ref[:n_prompt]) <= tol
    for i in range(n_prompt, n_prompt + 8):
        assert normalized_error(t["steered"][i], ref[i]) <= tol, f"decode step {i - n_prompt}"
    # and steering moved the rows by far more than the tolerance
    assert normalized_error(t["unsteered"], ref) > 10 * tol


# Decode folds a short concept's values through cross_out (docs/ARCHITECTURE.md); a concept longer
# than the folding limit (head_dim - 1 keys with f32 weights and values) reads cross_out instead.
LONG_CONCEPT = "Answer every question as a weary sea captain who has sailed the seven seas for forty years"


@pytest.mark.parametrize("text", [CONCEPT, LONG_CONCEPT], ids=["folded", "long-not-folded"])
def test_decode_rows_match_the_reference_with_and_without_folding(models, flows, tiny, base_config, text):
    m = models["f32"]
    n_keys = len(m.tokenize(text, add_bos=True, special=True))
    assert n_keys <= 64 and (n_keys < m.flow_info["head_dim"]) == (text == CONCEPT)  # each side of the limit
    t = m.trace(PROMPT, concept=text, flowtime=2.0, n_steps=3, n_decode=6)
    ref = FlowReference(flows["f32"][1], base_config).steer(t["unsteered"], encode_concept(tiny[0], text), 2.0, 3)
    n_prompt = len(m.prompt_tokens(PROMPT))
    for i in range(n_prompt, n_prompt + 6):
        assert normalized_error(t["steered"][i], ref[i]) <= 1e-4, f"decode step {i - n_prompt}"


def test_a_concept_slot_encoded_again_gets_its_own_folded_values(tiny_base_f32, flows, tiny, base_config, concept_c):
    """One concept slot: the pirate evicts the other concept from the slot the sequence used, and
    decode must not fold the old concept's values."""
    with FlasModel(tiny_base_f32, flows["f32"][0], n_ctx=256, exact=True, concept_cache=1) as m:
        m.generate(PROMPT, concept="Respond as a noir detective", flowtime=2.0, max_tokens=4, temperature=0.0)
        t = m.trace(PROMPT, concept=CONCEPT, flowtime=2.0, n_steps=3, n_decode=4)
    ref = FlowReference(flows["f32"][1], base_config).steer(t["unsteered"], concept_c, 2.0, 3)
    assert normalized_error(t["steered"], ref) <= 1e-4


def test_flowtime_zero_is_the_identity_bit_for_bit(models):
    t = models["f32"].trace(PROMPT, concept=CONCEPT, flowtime=0.0, n_decode=4)
    np.testing.assert_array_equal(t["steered"], t["unsteered"])


def test_greedy_generation_equals_reference_driven_generation(models, flows, base_config, concept_c):
    m = models["f32"]
    ref = FlowReference(flows["f32"][1], base_config)
    driven = generate_driven_by_reference(m, ref, concept_c, PROMPT, 2.0, 3, 32)
    steered = m.generate(PROMPT, concept=CONCEPT, flowtime=2.0, n_steps=3, temperature=0.0, max_tokens=32)
    baseline = m.generate(PROMPT, flowtime=0.0, temperature=0.0, max_tokens=32)
    assert len(steered.tokens) == 32 and steered.tokens == driven
    assert steered.tokens != baseline.tokens


def test_flowtime_zero_generation_equals_plain_llama_cpp(models, tiny_base_f32):
    import llama_cpp

    m = models["f32"]
    ids = m.prompt_tokens(PROMPT)
    ours = m.generate(PROMPT, concept=CONCEPT, flowtime=0.0, temperature=0.0, max_tokens=24)
    llm = llama_cpp.Llama(str(tiny_base_f32), n_ctx=256, type_k=0, type_v=0, flash_attn=False, verbose=False)
    plain = []
    for tok in llm.generate(ids, temp=0.0, top_k=1):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok) or len(plain) == 24:
            break
        plain.append(tok)
    assert ours.tokens == plain


def test_prefill_in_small_ubatches_equals_one_ubatch(tiny_base_f32, flows, models):
    small = FlasModel(tiny_base_f32, flows["f32"][0], n_ctx=256, exact=True, n_batch=4)
    a = models["f32"].trace(PROMPT, concept=CONCEPT, flowtime=2.0, n_decode=4)
    b = small.trace(PROMPT, concept=CONCEPT, flowtime=2.0, n_decode=4)
    assert a["tokens"] == b["tokens"]
    assert normalized_error(b["steered"], a["steered"]) < 1e-5
    assert normalized_error(b["logits"], a["logits"]) < 1e-5


def test_second_generation_starts_from_clean_caches(tiny_base_f32, flows, models):
    m = models["f32"]
    m.generate("Why is the sky blue?", concept="Use legal terminology", flowtime=1.0, temperature=0.0, max_tokens=12)
    second = m.trace(PROMPT, concept=CONCEPT, flowtime=2.0, n_decode=4)
    fresh = FlasModel(tiny_base_f32, flows["f32"][0], n_ctx=256, exact=True).trace(
        PROMPT, concept=CONCEPT, flowtime=2.0, n_decode=4)
    np.testing.assert_array_equal(second["steered"], fresh["steered"])
    np.testing.assert_array_equal(second["logits"], fresh["logits"])


def test_rewind_keeps_the_flow_caches_in_step_with_llama_cpp(tiny_base_f32, flows, models):
    m = models["f32"]
    prompt = m.prompt_tokens(PROMPT)
    a, b = m.tokenize("Arr, the sea!", add_bos=False), m.tokenize("Aye, the wind.", add_bos=False)
    direct = core().Model(model_params(base=str(tiny_base_f32), flow=str(flows["f32"][0]), n_ctx=256, exact=True))  # the C API's sequences
    out = {}

    def steps():
        direct.seq_set_steering(0, CONCEPT, 2.0, 3)
        direct.seq_decode([(0, prompt + a)])
        direct.seq_rewind(0, len(prompt))  # drop A from llama.cpp's cache and, with it, from the flow's
        direct.seq_set_trace(0, True)
        direct.seq_decode([(0, b)])
        out["rewound"] = direct.seq_get(0, "steered"), direct.seq_get(0, "logits")
        direct.seq_reset(0)
        direct.seq_set_trace(0, True)
        direct.seq_decode([(0, prompt + b)])
        out["fresh"] = direct.seq_get(0, "steered")[len(prompt):], direct.seq_get(0, "logits")

    direct.exclusive(steps)
    direct.close()
    assert out["rewound"][0].shape == (len(b), m.flow_info["n_embd"])
    assert normalized_error(out["rewound"][0], out["fresh"][0]) < 1e-5
    assert normalized_error(out["rewound"][1], out["fresh"][1]) < 1e-5


def test_multi_turn_reuses_the_prefix_and_equals_a_fresh_model(tiny_base_f32, flows, models):
    m = models["f32"]
    turn1 = [{"role": "user", "content": PROMPT}]
    r1 = m.generate(messages=turn1, concept=CONCEPT, flowtime=2.0, temperature=0.0, max_tokens=12)
    turn2 = turn1 + [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "And then?"}]
    r2 = m.generate(messages=turn2, concept=CONCEPT, flowtime=2.0, temperature=0.0, max_tokens=12)
    fresh = FlasModel(tiny_base_f32, flows["f32"][0], n_ctx=256, exact=True).generate(
        messages=turn2, concept=CONCEPT, flowtime=2.0, temperature=0.0, max_tokens=12)
    assert r2.n_cached_tokens >= r1.n_prompt_tokens - 1 > 0 and fresh.n_cached_tokens == 0
    assert r2.tokens == fresh.tokens


def test_concept_rows_equal_transformers_encoding(models, concept_c):
    """flas_concept_rows (what a trainer conditions on) is FLAS_SPEC.md 2's c, as transformers computes it."""
    got = models["f32"].concept_rows(CONCEPT)
    assert got.shape == concept_c.shape
    # llama.cpp's float32 layers against torch's: ~2e-4 of the largest value; a wrong layer, norm or
    # scale is off by O(1)
    assert normalized_error(got, concept_c) < 1e-3
    with pytest.raises(ValueError, match="concept is empty"):
        models["f32"].concept_rows("  ")


def test_a_long_concept_s_rows_are_its_first_concept_max_len_tokens(models, tiny):
    text = "Talk like a pirate " * 40
    got = models["f32"].concept_rows(text)
    assert got.shape[0] == 64  # as steering encodes it: the first concept_max_len tokens
    assert normalized_error(got, encode_concept(tiny[0], text)) < 1e-3


def test_a_prompt_of_token_ids_decodes_as_transformers(models, tiny):
    """A prompt given as token ids (llama-cpp-python's List[int]) runs as it is: no template, no BOS added."""
    tok = AutoTokenizer.from_pretrained(tiny[0])
    hf = AutoModelForCausalLM.from_pretrained(tiny[0], dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok("Once upon a time there was").input_ids
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    m = models["f32"]
    g = m.generate(prompt=ids, flowtime=0.0, temperature=0.0, max_tokens=len(want), stop=None)
    assert g.tokens[:len(want)] == want or g.finish == "eog" and want[:len(g.tokens)] == g.tokens
    rows = m.trace(prompt=ids, flowtime=0.0)
    assert rows["tokens"] == ids and rows["unsteered"].shape[0] == len(ids)
    with pytest.raises(ValueError, match="non-empty list of integers"):
        m.generate(prompt=[], flowtime=0.0)
    with pytest.raises(ValueError, match="non-empty list of integers"):
        m.generate(prompt=[1, "2"], flowtime=0.0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.generate(prompt=[2, 10 ** 6], flowtime=0.0)

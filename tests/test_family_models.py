"""Each base family beyond Gemma-2, end to end on its tiny test models: the base GGUF against
transformers, the steered rows against the numpy flow reference, greedy steered generation
against generation driven by the reference (FLAS_SPEC.md 7)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flas_cpp import FlasModel
from flas_cpp.convert import convert_base, convert_flow
from flas_cpp.testing.make_models import make_models
from flow_reference import FlowReference, generate_driven_by_reference

PROMPT = "Tell me about your day."
CONCEPT = "Talk like a pirate"
FAMILIES = ["gemma3", "qwen3", "llama"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory) -> dict:
    name = request.param
    d = tmp_path_factory.mktemp(f"family-{name}")
    base_dir, flow_st = make_models(d / "ckpt", "tiny", seed=0, quiet=True, family=name)
    base = d / "base-f32.gguf"
    convert_base(base_dir, base, "f32", progress=False)
    flows = {}
    for t in ("f32", "bf16"):
        flows[t] = d / f"flow-{t}.gguf"
        convert_flow(flow_st, flows[t], base_config=base_dir / "config.json", outtype=t, progress=False)
    tok = AutoTokenizer.from_pretrained(base_dir)
    hf = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager").eval()
    models = {t: FlasModel(base, f, n_ctx=256, exact=True) for t, f in flows.items()}
    yield {"name": name, "base_dir": base_dir, "base": base, "flow_st": flow_st, "tok": tok, "hf": hf,
           "models": models, "config": json.loads((base_dir / "config.json").read_text())}
    for m in models.values():
        m.close()


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def concept_rows(f: dict) -> np.ndarray:
    """c = final_norm(layer1(layer0(embed(ids)))) by transformers (FLAS_SPEC.md 2)."""
    ids = f["tok"](CONCEPT, truncation=True, max_length=64).input_ids
    with torch.no_grad():
        hidden = f["hf"](torch.tensor([ids]), output_hidden_states=True).hidden_states[2]
        return f["hf"].model.norm(hidden)[0].double().numpy()


def test_the_family_is_detected(family):
    info = family["models"]["f32"].flow_info
    assert info["family"] == family["name"] == family["models"]["f32"].family
    assert info["activation"] == ("gelu_tanh" if family["name"].startswith("gemma") else "silu")


def test_base_logits_and_greedy_continuation_equal_transformers(family):
    import llama_cpp

    tok, hf = family["tok"], family["hf"]
    llm = llama_cpp.Llama(str(family["base"]), n_ctx=512, logits_all=True, verbose=False, type_k=0, type_v=0,
                          flash_attn=False)
    for text in (PROMPT, "Why is the sky blue? Write a limerick about a cat."):
        ids = tok(text).input_ids
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0, -1].numpy()
        llm.reset()
        llm.eval(ids)
        assert rel_err(np.array(llm.scores[llm.n_tokens - 1]), ref) < 5e-3, text
    ids = tok(PROMPT).input_ids
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
    got = []
    for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        got.append(t)
        if len(got) == 16:
            break
    llm.close()
    assert got == want


@pytest.mark.parametrize("flow, tol", [("f32", 1e-4), ("bf16", 2e-2)])
@pytest.mark.parametrize("flowtime, n_steps", [(0.5, 1), (2.0, 3), (4.0, 2)])
def test_steered_rows_match_the_reference(family, flow, tol, flowtime, n_steps):
    m = family["models"][flow]
    t = m.trace(PROMPT, concept=CONCEPT, flowtime=flowtime, n_steps=n_steps, n_decode=8)
    ref = FlowReference(family["flow_st"], family["config"]).steer(t["unsteered"], concept_rows(family), flowtime,
                                                                   n_steps)
    # the bf16 flow against the reference of the f32 checkpoint: its rounding is the tolerance
    assert rel_err(t["steered"], ref) <= tol
    assert rel_err(t["unsteered"], ref) > 10 * tol  # steering moved the rows far more than that


def test_greedy_steered_generation_equals_reference_driven_generation(family):
    m = family["models"]["f32"]
    ref = FlowReference(family["flow_st"], family["config"])
    c = concept_rows(family)
    driven = generate_driven_by_reference(m, ref, c, PROMPT, 2.0, 3, 32)
    steered = m.generate(PROMPT, concept=CONCEPT, flowtime=2.0, n_steps=3, temperature=0.0, max_tokens=32)
    baseline = m.generate(PROMPT, flowtime=0.0, temperature=0.0, max_tokens=32)
    assert len(steered.tokens) == 32 and steered.tokens == driven
    assert steered.tokens != baseline.tokens


def test_a_9b_shaped_gemma2_flow_matches_the_reference(tmp_path):
    """Gemma-2-9B's widths (hidden 3584, 16/8 heads, intermediate 14336) over 4 layers: the
    released 9B flow's 255.6 M parameters, converted and steering as the reference says."""
    base_dir, flow_st = make_models(tmp_path / "ckpt", "gemma2-9b-4l", seed=0, quiet=True)
    base, flow = tmp_path / "base-bf16.gguf", tmp_path / "flow-bf16.gguf"
    convert_base(base_dir, base, "bf16", progress=False)
    line = convert_flow(flow_st, flow, base_config=base_dir / "config.json", outtype="bf16", progress=False)
    assert "255.56 M params" in line
    tok = AutoTokenizer.from_pretrained(base_dir)
    hf = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok(CONCEPT, truncation=True, max_length=64).input_ids
    with torch.no_grad():
        c = hf.model.norm(hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[2])[0].double().numpy()
    del hf
    with FlasModel(base, flow, n_ctx=256, exact=True) as m:
        assert (m.flow_info["n_embd"], m.flow_info["n_head"], m.flow_info["n_head_kv"]) == (3584, 16, 8)
        t = m.trace(PROMPT, concept=CONCEPT, flowtime=2.0, n_steps=2, n_decode=2)
    cfg = json.loads((base_dir / "config.json").read_text())
    ref = FlowReference(flow_st, cfg).steer(t["unsteered"], c, 2.0, 2)
    # the bf16 weights are stored exactly; ggml's bf16 matmul rounds the activations to bf16
    # (measured 9.5e-4; the bf16 bound of the family tests is 2e-2)
    assert rel_err(t["steered"], ref) <= 5e-3
    assert rel_err(t["unsteered"], ref) > 1e-2


CONVERSATIONS = [
    [{"role": "user", "content": PROMPT}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi!  "},
     {"role": "assistant", "content": "Hello.\n"}, {"role": "user", "content": "What is a flow?\n\n"}],
    [{"role": "user", "content": ""}],
]


def test_conversations_tokenize_as_llama_cpp_tokenizes_the_templated_text(family):
    """The core builds a prompt piece by piece (markup with control tokens, messages as text); on
    text without markers that is exactly llama-cpp-python's tokenization of the whole templated
    string with special tokens parsed."""
    import llama_cpp

    m = family["models"]["f32"]
    ll = llama_cpp.Llama(str(family["base"]), vocab_only=True, verbose=False)
    for msgs in CONVERSATIONS:
        turns = [(x["role"], x["content"]) for x in msgs]
        text = m._m.chat_template(turns)
        want = ll.tokenize(text.encode(), add_bos=True, special=True)
        assert m.prompt_tokens(messages=msgs) == want, (family["name"], msgs)

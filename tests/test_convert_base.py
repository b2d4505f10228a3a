"""The base converter: llama.cpp runs the converted tiny Gemma-2 as transformers does."""

from __future__ import annotations

import shutil

import llama_cpp
import numpy as np
import pytest
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import AutoModelForCausalLM, AutoTokenizer

from flas_cpp import safetensors_io
from flas_cpp.convert import convert_base
from reference import q8_0_error_bound, reference_rounding

GGML_TYPE_F32 = 0


@pytest.fixture(scope="module")
def hf(tiny):
    tok = AutoTokenizer.from_pretrained(tiny[0])
    model = AutoModelForCausalLM.from_pretrained(tiny[0], dtype=torch.float32, attn_implementation="eager").eval()
    return tok, model


def load_llama(path, exact: bool = True) -> llama_cpp.Llama:
    # exact: float32 KV cache and no flash attention, for parity with a float32 reference
    kw = dict(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False) if exact else {}
    return llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, logits_all=True, verbose=False, **kw)


def chat_ids(tok, prompt: str) -> tuple[str, list[int]]:
    msgs = [{"role": "user", "content": prompt}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    return text, list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def last_logits_llama(llm: llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)


def last_logits_hf(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().numpy()


def rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref - got).max() / np.abs(ref).max())


def test_chat_prompt_tokenization_equals_hf(hf, tiny_base_f32, prompts, concepts):
    tok, _ = hf
    llm = llama_cpp.Llama(str(tiny_base_f32), vocab_only=True, verbose=False)
    for prompt in [*prompts, *concepts, "  two  spaces, digits 12345 and ünïcode ☕"]:
        text, ids = chat_ids(tok, prompt)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, prompt
    for concept in concepts:  # concepts are tokenized with the BOS added (FLAS_SPEC.md 2)
        assert llm.tokenize(concept.encode(), add_bos=True, special=True) == tok(concept).input_ids


def test_f32_logits_and_greedy_continuation_match_transformers(hf, tiny_base_f32, prompts):
    tok, model = hf
    llm = load_llama(tiny_base_f32)
    for prompt in prompts[:4]:
        text, ids = chat_ids(tok, prompt)
        err = rel_err(last_logits_hf(model, ids), last_logits_llama(llm, ids))
        assert err < 5e-3, (prompt, err)
    _, ids = chat_ids(tok, prompts[0])
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
    llm.reset()
    got = []
    for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        got.append(t)
        if len(got) == 16:
            break
    assert got == ref


def test_gguf_metadata(tiny_base_f32, tiny):
    r = GGUFReader(tiny_base_f32)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert f["general.architecture"] == "gemma2"
    assert (f["gemma2.embedding_length"], f["gemma2.block_count"], f["gemma2.attention.head_count"],
            f["gemma2.attention.head_count_kv"], f["gemma2.attention.key_length"]) == (128, 6, 4, 2, 32)
    assert f["gemma2.attn_logit_softcapping"] == 50.0 and f["gemma2.final_logit_softcapping"] == 30.0
    assert f["gemma2.attention.sliding_window"] == 4096
    assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.add_space_prefix"] is False
    tokens = f["tokenizer.ggml.tokens"]
    assert (tokens[f["tokenizer.ggml.bos_token_id"]], tokens[f["tokenizer.ggml.eos_token_id"]],
            tokens[f["tokenizer.ggml.padding_token_id"]], tokens[f["tokenizer.ggml.unknown_token_id"]],
            tokens[f["tokenizer.ggml.eot_token_id"]]) == ("<bos>", "<eos>", "<pad>", "<unk>", "<end_of_turn>")
    types = f["tokenizer.ggml.token_type"]
    assert types[tokens.index("<start_of_turn>")] == 3 and types[tokens.index("<0x41>")] == 6  # control, byte
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_eos_token"] is False
    assert "<start_of_turn>" in f["tokenizer.chat_template"]
    # norms are stored as 1 + w (llama.cpp's Gemma convention)
    refs = {}
    for shard in tiny[0].glob("*.safetensors"):
        refs.update(safetensors_io.read_header(shard)[0])
    norm = next(t for t in r.tensors if t.name == "blk.2.ffn_norm.weight")
    np.testing.assert_array_equal(norm.data, refs["model.layers.2.pre_feedforward_layernorm.weight"].to_f32() + 1)


# Logit drift allowed per type, about 3x what was measured (f16 1.4e-3, bf16 1.2e-2, q8_0 3.5e-2;
# ggml also rounds activations for these types); a broken conversion gives errors near 1.
RUN_TOLERANCE = {"f16": 5e-3, "bf16": 4e-2, "q8_0": 0.1}


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_reduced_precision_outtypes_store_rounded_weights_and_run(hf, tiny, tmp_path, prompts, outtype):
    tok, model = hf
    out = tmp_path / f"base-{outtype}.gguf"
    convert_base(tiny[0], out, outtype, progress=False)
    tensors = {t.name: t for t in GGUFReader(out).tensors}
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == outtype.upper()
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    src = model.model.layers[3].mlp.up_proj.weight.detach().numpy()
    stored = tensors["blk.3.ffn_up.weight"]
    if outtype == "q8_0":
        got = dequantize(stored.data, stored.tensor_type).reshape(src.shape)
        assert (np.abs(got - src) <= q8_0_error_bound(src) * (1 + 1e-3)).all()
    else:
        np.testing.assert_array_equal(np.asarray(stored.data, dtype=np.float32).reshape(src.shape)
                                      if outtype == "f16" else dequantize(stored.data, stored.tensor_type).reshape(src.shape),
                                      reference_rounding(src, outtype))
    # and llama.cpp runs it, near the float32 reference
    _, ids = chat_ids(tok, prompts[1])
    assert rel_err(last_logits_hf(model, ids), last_logits_llama(load_llama(out), ids)) < RUN_TOLERANCE[outtype]


def test_k_quant_goes_through_llama_cpp_quantizer(hf, tiny, tmp_path, prompts):
    tok, model = hf
    out = tmp_path / "base-Q4_K_M.gguf"
    line = convert_base(tiny[0], out, "Q4_K_M", progress=False)
    assert "Q4_K_M" in line
    assert not list(tmp_path.glob(".*"))  # the f32 staging file is gone
    r = GGUFReader(out)
    assert int(r.fields["general.file_type"].contents()) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    # rows of 128 do not fill a 256-wide K-quant block; llama.cpp falls back to q5_0/q8_0
    assert {t.tensor_type.name for t in r.tensors if len(t.shape) == 2} <= {"Q5_0", "Q8_0", "Q4_K", "Q6_K"}
    _, ids = chat_ids(tok, prompts[2])
    logits = last_logits_llama(load_llama(out, exact=False), ids)
    ref = last_logits_hf(model, ids)
    # measured: 0.15 relative error, correlation 0.984 (mostly q5_0 fallbacks on 128-wide rows)
    assert rel_err(ref, logits) < 0.4 and np.corrcoef(ref, logits)[0, 1] > 0.95


def test_shards_with_index_without_index_and_single_file_convert_alike(tiny, tiny_base_f32, tmp_path):
    no_index = tmp_path / "no-index"
    shutil.copytree(tiny[0], no_index)
    (no_index / "model.safetensors.index.json").unlink()
    single = tmp_path / "single"
    shutil.copytree(tiny[0], single, ignore=shutil.ignore_patterns("model*.safetensors*"))
    merged = {}
    for shard in sorted(tiny[0].glob("model-*.safetensors")):
        merged.update({n: (r.dtype, r.raw()) for n, r in safetensors_io.read_header(shard)[0].items()})
    safetensors_io.write(single / "model.safetensors", merged)
    want = {t.name: np.array(t.data) for t in GGUFReader(tiny_base_f32).tensors}
    for src in (no_index, single):
        out = tmp_path / f"{src.name}.gguf"
        convert_base(src, out, "f32", progress=False)
        got = {t.name: np.array(t.data) for t in GGUFReader(out).tensors}
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)

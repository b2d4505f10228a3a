"""Gemma-3 bases as the FLAS registry uses them (issue 19): a text checkpoint with linear RoPE
scaling on its global layers (the 4B/12B/27B text configs), and the language model of a multimodal
Gemma3ForConditionalGeneration checkpoint saved by transformers. Each converted base's logits
against transformers, and the steered rows against the numpy flow reference."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration,
                          SiglipVisionConfig)

from flas_cpp import FlasModel
from flas_cpp.convert import convert_base, convert_flow
from flas_cpp.testing.make_models import make_models
from flow_reference import FlowReference

PROMPTS = ["Tell me about your day.", "Why is the sky blue? Write a limerick about a cat, and then another one."]
CONCEPT = "Talk like a pirate"
LINEAR = {"rope_type": "linear", "factor": 8.0}


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """The tiny Gemma-3 text checkpoint (6 layers: the last is global) with linear RoPE scaling."""
    d = tmp_path_factory.mktemp("gemma3-linear")
    base_dir, flow_st = make_models(d / "ckpt", "tiny", seed=0, quiet=True, family="gemma3")
    cfg = json.loads((base_dir / "config.json").read_text())
    cfg["rope_scaling"] = LINEAR
    (base_dir / "config.json").write_text(json.dumps(cfg))
    return base_dir, flow_st, cfg


@pytest.fixture(scope="module", params=["linear", "multimodal"])
def case(request, text_model, tmp_path_factory) -> dict:
    base_dir, flow_st, cfg = text_model
    d = tmp_path_factory.mktemp(f"gemma3-{request.param}")
    text = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager").eval()
    if request.param == "linear":
        ckpt, hf = base_dir, text
        logits = lambda ids: hf(torch.tensor([ids])).logits[0, -1].numpy()  # noqa: E731
    else:  # the same language model inside a multimodal checkpoint, saved as transformers saves it
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=28, patch_size=14)
        hf = Gemma3ForConditionalGeneration(Gemma3Config(text_config=cfg, vision_config=vision.to_dict(),
                                                         mm_tokens_per_image=4))
        state = {k[len("model."):]: v for k, v in text.state_dict().items() if k.startswith("model.")}
        hf.model.language_model.load_state_dict(state)
        hf = hf.eval()
        ckpt = d / "mm"
        hf.save_pretrained(ckpt)
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            if (base_dir / name).is_file():
                shutil.copy(base_dir / name, ckpt / name)
        saved = json.loads((ckpt / "config.json").read_text())
        assert saved["model_type"] == "gemma3" and "text_config" in saved
        logits = lambda ids: hf(input_ids=torch.tensor([ids])).logits[0, -1].numpy()  # noqa: E731
    base = d / "base-f32.gguf"
    convert_base(ckpt, base, "f32", progress=False)
    flow = d / "flow-f32.gguf"
    convert_flow(flow_st, flow, base_config=ckpt / "config.json", outtype="f32", progress=False)
    with FlasModel(base, flow, n_ctx=256, exact=True) as m:
        yield {"name": request.param, "base": base, "base_dir": base_dir, "flow_st": flow_st, "cfg": cfg,
               "tok": AutoTokenizer.from_pretrained(base_dir), "text": text, "logits": logits, "model": m}


def test_base_logits_equal_transformers(case, tmp_path):
    import llama_cpp

    llm = llama_cpp.Llama(str(case["base"]), n_ctx=512, logits_all=True, verbose=False, type_k=0, type_v=0,
                          flash_attn=False)
    for text in PROMPTS:
        ids = case["tok"](text).input_ids
        with torch.no_grad():
            ref = case["logits"](ids)
        llm.reset()
        llm.eval(ids)
        assert rel_err(np.array(llm.scores[llm.n_tokens - 1]), ref) < 5e-3, text
    llm.close()
    if case["name"] == "linear":  # the scaling matters: without it the logits are far off
        unscaled = tmp_path / "ckpt"
        shutil.copytree(case["base_dir"], unscaled)
        (unscaled / "config.json").write_text(json.dumps({**case["cfg"], "rope_scaling": None}))
        convert_base(unscaled, tmp_path / "unscaled.gguf", "f32", progress=False)
        llm = llama_cpp.Llama(str(tmp_path / "unscaled.gguf"), n_ctx=512, logits_all=True, verbose=False,
                              type_k=0, type_v=0, flash_attn=False)
        ids = case["tok"](PROMPTS[1]).input_ids
        llm.eval(ids)
        with torch.no_grad():
            assert rel_err(np.array(llm.scores[llm.n_tokens - 1]), case["logits"](ids)) > 2e-2  # 4x the tolerance
        llm.close()


@pytest.mark.parametrize("flowtime, n_steps", [(0.5, 1), (2.0, 3)])
def test_steered_rows_match_the_reference(case, flowtime, n_steps):
    m = case["model"]
    assert m.flow_info["family"] == "gemma3"
    t = m.trace(PROMPTS[0], concept=CONCEPT, flowtime=flowtime, n_steps=n_steps, n_decode=8)
    ids = case["tok"](CONCEPT, truncation=True, max_length=64).input_ids
    with torch.no_grad():  # c = final_norm(layer1(layer0(embed(ids)))) by transformers (FLAS_SPEC.md 2)
        hidden = case["text"](torch.tensor([ids]), output_hidden_states=True).hidden_states[2]
        c = case["text"].model.norm(hidden)[0].double().numpy()
    ref = FlowReference(case["flow_st"], case["cfg"]).steer(t["unsteered"], c, flowtime, n_steps)
    assert rel_err(t["steered"], ref) <= 1e-4
    assert rel_err(t["unsteered"], ref) > 1e-3


def test_a_sparse_multimodal_config_reads_as_transformers_reads_it(tmp_path):
    """google/gemma-3-4b-it's config.json lists in text_config only what differs from
    Gemma3TextConfig's defaults; the converter fills in the rest as transformers does."""
    from flas_cpp.convert.gemma import GemmaHparams
    from flas_cpp.convert.common import checked_config

    cfg = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "mm_tokens_per_image": 256,
           "boi_token_index": 255999, "eoi_token_index": 256000, "image_token_index": 262144,
           "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                           "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                           "sliding_window": 1024},
           "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 896,
                             "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27,
                             "patch_size": 14, "vision_use_head": False}}
    hp = GemmaHparams.from_config(checked_config(cfg, "config.json"), tmp_path / "config.json")
    t = Gemma3Config(**cfg).text_config
    full = t.rope_parameters["full_attention"]
    assert (hp.n_vocab, hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_ff) == \
        (t.vocab_size, t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.head_dim,
         t.intermediate_size)
    assert (hp.rope_theta, hp.rope_local_theta, hp.rope_linear_factor) == \
        (full["rope_theta"], t.rope_parameters["sliding_attention"]["rope_theta"], full["factor"])
    assert (hp.sliding_window, hp.rms_eps, hp.query_pre_attn_scalar, hp.n_ctx_train) == \
        (t.sliding_window, t.rms_norm_eps, t.query_pre_attn_scalar, t.max_position_embeddings)
    assert hp.multimodal and hp.rope_linear_factor == 8.0
    from flas_cpp.convert.flow import base_facts_from_dict  # a flow of this base reads the same facts

    f = base_facts_from_dict(cfg, tmp_path / "config.json")
    assert (f.family, f.rope_theta, f.rope_scaling_factor, f.n_head, f.n_head_kv, f.head_dim) == \
        ("gemma3", full["rope_theta"], 8.0, t.num_attention_heads, t.num_key_value_heads, t.head_dim)

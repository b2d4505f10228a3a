"""The generated test models: deterministic, in the released formats, loadable by transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from flas_cpp import safetensors_io
from flas_cpp.testing import make_models as mm


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_weights(tiny, tmp_path):
    again = tmp_path / "again"
    subprocess.run([sys.executable, "-m", "flas_cpp.testing.make_models", str(again), "--quiet"], check=True, cwd=tmp_path)
    first = _files(tiny[0].parent)
    assert first == _files(again)
    other = mm.make_models(tmp_path / "seed1", seed=1, quiet=True)
    refs0, _ = safetensors_io.read_header(tiny[1])
    refs1, _ = safetensors_io.read_header(other[1])
    assert not np.array_equal(refs0["blocks.0.mlp_gate"].raw(), refs1["blocks.0.mlp_gate"].raw())


def test_tiny_base_loads_in_transformers(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny[0])
    model = AutoModelForCausalLM.from_pretrained(tiny[0], dtype=torch.float32)
    cfg = model.config
    assert cfg.model_type == "gemma2"
    assert 64 <= cfg.hidden_size <= 128 and 4 <= cfg.num_hidden_layers <= 6
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, 32)
    assert cfg.query_pre_attn_scalar == cfg.head_dim
    assert 300 <= len(tok) <= 1000 and cfg.vocab_size == len(tok)
    assert tok.bos_token == "<bos>" and tok.eos_token == "<eos>"
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    flow_cfg = json.loads((tiny[1].parent / "config.json").read_text())
    assert flow_cfg["layer"] % 2 == 0 and flow_cfg["layer"] < cfg.num_hidden_layers - 1


def test_flow_checkpoint_has_the_released_keys_and_shapes(tiny):
    s = mm.SIZES["tiny"]
    refs, _ = safetensors_io.read_header(tiny[1])
    H, D, I = s.hidden, s.head_dim, s.intermediate
    want = {
        "time_embed.mlp.0.weight": (H, 128), "time_embed.mlp.2.weight": (H, H),
        "blocks.0.cross_attn.q_proj.weight": (s.n_heads * D, H), "blocks.0.cross_attn.k_proj.weight": (s.n_kv_heads * D, H),
        "blocks.0.cross_attn.o_proj.weight": (H, s.n_heads * D), "blocks.0.cross_attn.q_norm.weight": (D,),
        "blocks.0.self_attn.v_proj.weight": (s.n_kv_heads * D, H), "blocks.0.cross_gate": (H,),
        "blocks.0.gate_proj.weight": (I, H), "blocks.0.down_proj.weight": (H, I), "blocks.0.mlp_gate": (H,),
    }
    for name, shape in want.items():
        assert refs[name].shape == shape and refs[name].dtype == "BF16", name
    assert len(refs) == 26  # 4 time-embedding + 9 cross + 7 self + 6 mlp


def test_full_size_matches_gemma_2_2b_and_the_released_flow():
    s = mm.SIZES["full"]
    cfg = mm.base_config(s, 256000)
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["head_dim"], cfg["intermediate_size"]) == (2304, 26, 8, 4, 256, 9216)
    base_params = sum(int(np.prod(shape)) for _, shape, _, _ in mm.base_tensor_specs(s, 256000))
    flow_params = sum(int(np.prod(shape)) for _, shape, _, _ in mm.flow_tensor_specs(s))
    assert round(base_params / 1e9, 2) == 2.61
    assert round(flow_params / 1e6, 1) == 97.6  # FLAS_SPEC.md: flas-gemma-2-2b-it is 97.6 M params


def test_tokenizer_pads_to_a_fixed_vocab_with_unused_pieces():
    import sentencepiece as spm

    trained = spm.SentencePieceProcessor(model_proto=mm.train_tokenizer(0, pad_to=None)).get_piece_size()
    sp = spm.SentencePieceProcessor(model_proto=mm.train_tokenizer(0, pad_to=2000))
    assert sp.get_piece_size() == 2000
    assert sp.id_to_piece(trained) == "<unused0>" and sp.id_to_piece(1999) == f"<unused{1999 - trained}>"
    assert sp.is_unused(1999) and not sp.is_unused(trained - 1)
    assert sp.encode("Tell me about your day.") == spm.SentencePieceProcessor(
        model_proto=mm.train_tokenizer(0, pad_to=None)).encode("Tell me about your day.")

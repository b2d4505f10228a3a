"""Qwen3 and Llama (pre-norm decoders with `w*x` norms) for flas-convert base: their
hyper-parameters, tensors and llama.cpp metadata. The vocabulary must be a SentencePiece model
(the test models'); for the byte-level BPE tokenizers the released Qwen3 and Llama-3 checkpoints
ship, use llama.cpp's convert_hf_to_gguf.py, which flas-cpp loads as it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from .. import safetensors_io
from .common import ConversionError, TensorPlan, check_shape, llama3_rope_divisors, pick_qtype

ARCHS = {"qwen3": "qwen3", "llama": "llama"}  # config model_type -> llama.cpp architecture


@dataclass
class DecoderHparams:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx_train: int
    rms_eps: float
    rope_theta: float
    tied: bool
    rope_llama3: dict = field(default_factory=dict)  # llama: Llama-3 frequency scaling, if any

    @classmethod
    def from_config(cls, cfg: dict, where: Path) -> "DecoderHparams":
        def need(key: str):
            if key not in cfg:
                raise ConversionError(f"{where}: {cfg.get('model_type')} config lacks {key!r}; is it complete?")
            return cfg[key]

        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ConversionError(f"{where}: attention or MLP biases are not converted; use llama.cpp's "
                                  "convert_hf_to_gguf.py")
        n_head = int(need("num_attention_heads"))
        hp = cls(ARCHS[cfg["model_type"]], int(need("vocab_size")), int(need("hidden_size")),
                 int(need("num_hidden_layers")), n_head, int(cfg.get("num_key_value_heads") or n_head),
                 int(cfg.get("head_dim") or int(need("hidden_size")) // n_head), int(need("intermediate_size")),
                 int(cfg.get("max_position_embeddings", 8192)), float(cfg.get("rms_norm_eps", 1e-6)),
                 float(cfg.get("rope_theta", 10000.0)), bool(cfg.get("tie_word_embeddings", False)))
        scaling = cfg.get("rope_scaling") or {}
        kind = scaling.get("rope_type", scaling.get("type")) if scaling else None
        if kind == "llama3" and hp.arch == "llama":
            hp.rope_llama3 = {k: float(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                             "original_max_position_embeddings")}
        elif kind not in (None, "default"):
            raise ConversionError(f"{where}: rope_scaling {scaling} is not converted; use llama.cpp's converter")
        if hp.n_head % hp.n_head_kv:
            raise ConversionError(f"{where}: num_attention_heads {n_head} is not a multiple of num_key_value_heads "
                                  f"{hp.n_head_kv}")
        return hp

    def rope_freqs(self) -> np.ndarray | None:
        """Llama-3 scaling as divisors of the RoPE frequencies, as llama.cpp's converter writes them."""
        return llama3_rope_divisors(self.rope_theta, self.head_dim, self.rope_llama3) if self.rope_llama3 else None


def _permute(n_head: int):
    """llama.cpp's llama runs RoPE on interleaved pairs, HF's Llama on halves: reorder the rows
    of q and k so that the two agree (as llama.cpp's converter does)."""
    def f(w: np.ndarray) -> np.ndarray:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return f


def plan_tensors(refs: dict[str, safetensors_io.TensorRef], hp: DecoderHparams, qtype: GGMLQuantizationType) -> list[TensorPlan]:
    H, D, I = hp.n_embd, hp.head_dim, hp.n_ff
    q, kv = hp.n_head * D, hp.n_head_kv * D
    perm_q = _permute(hp.n_head) if hp.arch == "llama" else None
    perm_k = _permute(hp.n_head_kv) if hp.arch == "llama" else None
    expected = {"model.embed_tokens.weight": ("token_embd.weight", (hp.n_vocab, H), None, False),
                "model.norm.weight": ("output_norm.weight", (H,), None, True)}
    if not hp.tied:
        expected["lm_head.weight"] = ("output.weight", (hp.n_vocab, H), None, False)
    for i in range(hp.n_layer):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        layer = {
            "input_layernorm.weight": ("attn_norm.weight", (H,), None, True),
            "self_attn.q_proj.weight": ("attn_q.weight", (q, H), perm_q, False),
            "self_attn.k_proj.weight": ("attn_k.weight", (kv, H), perm_k, False),
            "self_attn.v_proj.weight": ("attn_v.weight", (kv, H), None, False),
            "self_attn.o_proj.weight": ("attn_output.weight", (H, q), None, False),
            "post_attention_layernorm.weight": ("ffn_norm.weight", (H,), None, True),
            "mlp.gate_proj.weight": ("ffn_gate.weight", (I, H), None, False),
            "mlp.up_proj.weight": ("ffn_up.weight", (I, H), None, False),
            "mlp.down_proj.weight": ("ffn_down.weight", (H, I), None, False),
        }
        if hp.arch == "qwen3":
            layer["self_attn.q_norm.weight"] = ("attn_q_norm.weight", (D,), None, True)
            layer["self_attn.k_norm.weight"] = ("attn_k_norm.weight", (D,), None, True)
        expected.update({p + k: (g + v[0], *v[1:]) for k, v in layer.items()})
    for name, ref in refs.items():
        if name not in expected and not (hp.tied and name == "lm_head.weight"):
            raise ConversionError(f"unknown tensor {name!r} in {ref.path.name}: not part of a {hp.arch} model with "
                                  f"{hp.n_layer} layers; is config.json the one of these weights?")
    plan = []
    for hf_name, (gg, shape, transform, is_norm) in expected.items():
        if hf_name not in refs:
            raise ConversionError(f"missing tensor {hf_name!r}: the checkpoint is incomplete (a shard missing?)")
        ref = refs[hf_name]
        check_shape(hf_name, ref.shape, shape, "config.json")
        load = (lambda r=ref, t=transform: t(r.to_f32())) if transform else ref.to_f32
        plan.append(TensorPlan(gg, shape, GGMLQuantizationType.F32 if is_norm else pick_qtype(shape, qtype), load))
    freqs = hp.rope_freqs()
    if freqs is not None:
        plan.append(TensorPlan("rope_freqs.weight", freqs.shape, GGMLQuantizationType.F32, lambda: freqs))
    return plan


def add_arch_metadata(w: GGUFWriter, hp: DecoderHparams) -> None:
    w.add_context_length(hp.n_ctx_train)
    w.add_embedding_length(hp.n_embd)
    w.add_block_count(hp.n_layer)
    w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_key_length(hp.head_dim)
    w.add_value_length(hp.head_dim)
    w.add_rope_dimension_count(hp.head_dim)
    w.add_layer_norm_rms_eps(hp.rms_eps)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_vocab_size(hp.n_vocab)

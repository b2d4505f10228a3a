"""Qwen3 and Llama (pre-norm decoders with `w*x` norms) for flas-convert base: their
hyper-parameters, tensors and llama.cpp metadata. The vocabulary must be a SentencePiece model
(the test models'); for the byte-level BPE tokenizers the released Qwen3 and Llama-3 checkpoints
ship, use llama.cpp's convert_hf_to_gguf.py, which flas-cpp loads as it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from .. import safetensors_io
from .common import ConversionError, DecoderShape, TensorPlan, config_value, llama3_rope_divisors, plan_checkpoint

ARCHS = {"qwen3": "qwen3", "llama": "llama"}  # config model_type -> llama.cpp architecture


@dataclass
class DecoderHparams(DecoderShape):
    """A Qwen3 or Llama config as llama.cpp's qwen3 or llama reads it; also the family's base
    converter (the methods base.py's driver calls)."""
    # config.json values that select this family (base.FAMILIES): model_type alone, which
    # from_config maps to llama.cpp's architecture
    MODEL_TYPES: ClassVar[frozenset[str]] = frozenset(ARCHS)
    ARCHITECTURES: ClassVar[frozenset[str]] = frozenset()

    arch: str
    tied: bool
    rope_llama3: dict = field(default_factory=dict)  # llama: Llama-3 frequency scaling, if any

    @classmethod
    def from_config(cls, cfg: dict, where: Path) -> "DecoderHparams":
        def need(key: str):
            return config_value(cfg, key, where, cfg.get("model_type"))

        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ConversionError(f"{where}: attention or MLP biases are not converted; use llama.cpp's "
                                  "convert_hf_to_gguf.py")
        n_head = int(need("num_attention_heads"))
        hp = cls(n_vocab=int(need("vocab_size")), n_embd=int(need("hidden_size")),
                 n_layer=int(need("num_hidden_layers")), n_head=n_head,
                 n_head_kv=int(cfg.get("num_key_value_heads") or n_head),
                 head_dim=int(cfg.get("head_dim") or int(need("hidden_size")) // n_head),
                 n_ff=int(need("intermediate_size")), n_ctx_train=int(cfg.get("max_position_embeddings", 8192)),
                 rms_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=float(cfg.get("rope_theta", 10000.0)),
                 arch=ARCHS[cfg["model_type"]], tied=bool(cfg.get("tie_word_embeddings", False)))
        scaling = cfg.get("rope_scaling") or {}
        kind = scaling.get("rope_type", scaling.get("type")) if scaling else None
        if kind == "llama3" and hp.arch == "llama":
            hp.rope_llama3 = {k: float(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                             "original_max_position_embeddings")}
        elif kind not in (None, "default"):
            raise ConversionError(f"{where}: rope_scaling {scaling} is not converted; use llama.cpp's converter")
        hp.check_heads(where)
        return hp

    def rope_freqs(self) -> np.ndarray | None:
        """Llama-3 scaling as divisors of the RoPE frequencies, as llama.cpp's converter writes them."""
        return llama3_rope_divisors(self.rope_theta, self.head_dim, self.rope_llama3) if self.rope_llama3 else None

    def language_model(self, refs: dict[str, safetensors_io.TensorRef],
                       where: Path) -> dict[str, safetensors_io.TensorRef]:
        return refs  # the checkpoint holds the language model alone

    def plan_tensors(self, refs: dict[str, safetensors_io.TensorRef], qtype: GGMLQuantizationType) -> list[TensorPlan]:
        H, D, I = self.n_embd, self.head_dim, self.n_ff
        q, kv = self.n_head * D, self.n_head_kv * D
        perm_q = _permute(self.n_head) if self.arch == "llama" else None
        perm_k = _permute(self.n_head_kv) if self.arch == "llama" else None
        # (GGUF name, shape, kind, transform): norms hold w (w*x), stored as they are
        expected = {"model.embed_tokens.weight": ("token_embd.weight", (self.n_vocab, H), "matrix", None),
                    "model.norm.weight": ("output_norm.weight", (H,), "f32", None)}
        if not self.tied:
            expected["lm_head.weight"] = ("output.weight", (self.n_vocab, H), "matrix", None)
        for i in range(self.n_layer):
            p, g = f"model.layers.{i}.", f"blk.{i}."
            layer = {
                "input_layernorm.weight": ("attn_norm.weight", (H,), "f32", None),
                "self_attn.q_proj.weight": ("attn_q.weight", (q, H), "matrix", perm_q),
                "self_attn.k_proj.weight": ("attn_k.weight", (kv, H), "matrix", perm_k),
                "self_attn.v_proj.weight": ("attn_v.weight", (kv, H), "matrix", None),
                "self_attn.o_proj.weight": ("attn_output.weight", (H, q), "matrix", None),
                "post_attention_layernorm.weight": ("ffn_norm.weight", (H,), "f32", None),
                "mlp.gate_proj.weight": ("ffn_gate.weight", (I, H), "matrix", None),
                "mlp.up_proj.weight": ("ffn_up.weight", (I, H), "matrix", None),
                "mlp.down_proj.weight": ("ffn_down.weight", (H, I), "matrix", None),
            }
            if self.arch == "qwen3":
                layer["self_attn.q_norm.weight"] = ("attn_q_norm.weight", (D,), "f32", None)
                layer["self_attn.k_norm.weight"] = ("attn_k_norm.weight", (D,), "f32", None)
            expected.update({p + k: (g + v[0], *v[1:]) for k, v in layer.items()})
        plan = plan_checkpoint(refs, expected, qtype, f"a {self.arch} model with {self.n_layer} layers",
                               ("lm_head.weight",) if self.tied else ())
        freqs = self.rope_freqs()
        if freqs is not None:
            plan.append(TensorPlan("rope_freqs.weight", freqs.shape, GGMLQuantizationType.F32, lambda: freqs))
        return plan

    def add_hparams(self, w: GGUFWriter) -> None:
        self.add_shape(w)
        w.add_rope_dimension_count(self.head_dim)
        w.add_layer_norm_rms_eps(self.rms_eps)
        w.add_rope_freq_base(self.rope_theta)
        w.add_vocab_size(self.n_vocab)


def _permute(n_head: int):
    """llama.cpp's llama runs RoPE on interleaved pairs, HF's Llama on halves: reorder the rows
    of q and k so that the two agree (as llama.cpp's converter does)."""
    def f(w: np.ndarray) -> np.ndarray:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return f

"""Gemma-2 (`gemma2`) and Gemma-3 (`gemma3_text`, and the language model of a multimodal `gemma3`)
for flas-convert base: their hyper-parameters, tensors and llama.cpp metadata. Gemma's norms
compute (1 + w) * x: the GGUF stores 1 + w, as llama.cpp's converter does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType

from .. import safetensors_io
from .common import ConversionError, DecoderShape, TensorPlan, config_value, plan_checkpoint


@dataclass
class GemmaHparams(DecoderShape):
    """A Gemma config as llama.cpp's gemma2 or gemma3 reads it; also the family's base converter
    (the methods base.py's driver calls)."""
    # config.json values that select this family (base.FAMILIES): model_type first, else architectures
    MODEL_TYPES: ClassVar[frozenset[str]] = frozenset({"gemma2", "gemma3_text", "gemma3"})
    ARCHITECTURES: ClassVar[frozenset[str]] = frozenset({"Gemma2ForCausalLM", "Gemma3ForCausalLM",
                                                         "Gemma3ForConditionalGeneration"})

    sliding_window: int
    attn_softcap: float
    final_softcap: float
    query_pre_attn_scalar: float
    arch: str = "gemma2"              # llama.cpp's architecture: "gemma2" or "gemma3"
    rope_local_theta: float = 10000.0  # gemma3: the sliding layers' RoPE base
    rope_linear_factor: float = 1.0    # gemma3 4B and up: linear scaling of the global layers' RoPE
    multimodal: bool = False           # gemma3: the language model of a Gemma3ForConditionalGeneration

    @classmethod
    def from_config(cls, cfg: dict, where: Path) -> "GemmaHparams":
        """Any of the family's configs: Gemma-3 multimodal, Gemma-3 text, else Gemma-2."""
        archs = cfg.get("architectures") or []
        if cfg.get("model_type") == "gemma3" or "Gemma3ForConditionalGeneration" in archs:
            text = cfg.get("text_config")
            if not isinstance(text, dict):
                raise ConversionError(f"{where}: a multimodal Gemma-3 config without text_config; its language "
                                      "model cannot be read")
            return gemma3_hparams({**GEMMA3_TEXT_DEFAULTS, **text}, where, multimodal=True)
        if cfg.get("model_type") == "gemma3_text" or "Gemma3ForCausalLM" in archs:
            return gemma3_hparams(cfg, where)

        def need(key: str):
            return config_value(cfg, key, where, "Gemma-2")

        rope = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        hp = cls(
            n_vocab=int(need("vocab_size")), n_embd=int(need("hidden_size")), n_layer=int(need("num_hidden_layers")),
            n_head=int(need("num_attention_heads")),
            n_head_kv=int(cfg.get("num_key_value_heads", need("num_attention_heads"))),
            head_dim=int(need("head_dim")), n_ff=int(need("intermediate_size")),
            n_ctx_train=int(cfg.get("max_position_embeddings", 8192)), rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope), sliding_window=int(cfg.get("sliding_window", 4096) or 4096),
            attn_softcap=float(cfg.get("attn_logit_softcapping") or 50.0),
            final_softcap=float(cfg.get("final_logit_softcapping") or 30.0),
            query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", need("head_dim"))),
        )
        hp.check_heads(where)
        # llama.cpp's gemma2 graph scales queries by 1/sqrt(head_dim) (27B aside): refuse a model
        # it would silently compute differently.
        if hp.n_layer != 46 and hp.query_pre_attn_scalar != hp.head_dim:
            raise ConversionError(
                f"{where}: query_pre_attn_scalar {hp.query_pre_attn_scalar:g} != head_dim {hp.head_dim}; "
                "llama.cpp's gemma2 scales attention by 1/sqrt(head_dim), so this model would run wrongly")
        return hp

    def language_model(self, refs: dict[str, safetensors_io.TensorRef],
                       where: Path) -> dict[str, safetensors_io.TensorRef]:
        return language_model_refs(refs, where) if self.multimodal else refs

    def plan_tensors(self, refs: dict[str, safetensors_io.TensorRef], qtype: GGMLQuantizationType) -> list[TensorPlan]:
        expected = {hf: (gg, shape, "norm1" if is_norm else "matrix", None)
                    for hf, (gg, shape, is_norm) in expected_tensors(self).items()}
        family = {"gemma2": "Gemma-2", "gemma3": "Gemma-3"}[self.arch]
        # lm_head is tied to the embedding in Gemma: llama.cpp reuses token_embd
        return plan_checkpoint(refs, expected, qtype, f"a {family} model with {self.n_layer} layers",
                               ("lm_head.weight",))

    def add_hparams(self, w: GGUFWriter) -> None:
        self.add_shape(w)
        w.add_layer_norm_rms_eps(self.rms_eps)
        w.add_rope_freq_base(self.rope_theta)
        w.add_sliding_window(self.sliding_window)
        if self.arch == "gemma3":
            w.add_rope_freq_base_swa(self.rope_local_theta)
            if self.rope_linear_factor != 1.0:  # llama.cpp's gemma3 scales the global layers only, as transformers
                w.add_rope_scaling_type(RopeScalingType.LINEAR)
                w.add_rope_scaling_factor(self.rope_linear_factor)
            if self.final_softcap:
                w.add_final_logit_softcapping(self.final_softcap)
        else:
            w.add_attn_logit_softcapping(self.attn_softcap)
            w.add_final_logit_softcapping(self.final_softcap)


# transformers' Gemma3TextConfig defaults: a multimodal checkpoint's text_config (google/gemma-3-4b-it's)
# lists only what differs from them
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256,
    "rope_theta": 1e6, "rope_local_base_freq": 1e4, "rms_norm_eps": 1e-6, "max_position_embeddings": 131072,
    "sliding_window": 4096,
}
# where a multimodal Gemma-3 checkpoint keeps its language model's tensors (the hub's files, and
# transformers 5's layout), and the towers flas-cpp leaves out
GEMMA3_TEXT_PREFIXES = ("language_model.model.", "model.language_model.")
GEMMA3_OTHER_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.",
                         "language_model.lm_head.")


def gemma3_rope(cfg: dict, where: Path) -> tuple[float, float, float]:
    """(global RoPE base, sliding RoPE base, linear factor of the global layers) from either form:
    rope_theta / rope_local_base_freq / rope_scaling, or transformers 5's rope_parameters per
    layer type."""
    params = cfg.get("rope_parameters") or {}
    if isinstance(params.get("full_attention"), dict):
        full, sliding = params["full_attention"], params.get("sliding_attention") or {}
        theta, local = full.get("rope_theta", 1e6), sliding.get("rope_theta", 1e4)
        scaling = full
        if sliding.get("rope_type", "default") != "default":
            raise ConversionError(f"{where}: the sliding layers' RoPE {sliding} is scaled; Gemma-3 scales only the "
                                  "global layers, as llama.cpp's gemma3 does")
    else:
        theta, local = cfg.get("rope_theta", 1e6), cfg.get("rope_local_base_freq", 1e4)
        scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear"):
        raise ConversionError(f"{where}: RoPE scaling {scaling} is not converted (Gemma-3 uses none or linear)")
    factor = scaling.get("factor", 1.0) if kind == "linear" else 1.0
    for name, v in (("rope_theta", theta), ("the sliding rope_theta", local), ("the RoPE factor", factor)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e30:
            raise ConversionError(f"{where}: {name} should be a positive number, got {v!r}"[:300])
    return float(theta), float(local), float(factor)


def gemma3_hparams(cfg: dict, where: Path, multimodal: bool = False) -> GemmaHparams:
    """A Gemma-3 text config (Gemma3ForCausalLM, or a multimodal checkpoint's text_config), as
    llama.cpp's gemma3 reads it."""
    def need(key: str):
        return config_value(cfg, key, where, "Gemma-3")

    layer_types = cfg.get("layer_types")
    n_layer = int(need("num_hidden_layers"))
    pattern = int(cfg.get("sliding_window_pattern") or 6)
    if layer_types is not None:
        want = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layer)]
        if list(layer_types) != want:
            raise ConversionError(f"{where}: layer_types is not Gemma-3's pattern (every 6th layer full attention), "
                                  "which llama.cpp's gemma3 assumes")
    elif pattern != 6:
        raise ConversionError(f"{where}: sliding_window_pattern {pattern}; llama.cpp's gemma3 assumes 6")
    theta, local, factor = gemma3_rope(cfg, where)
    head_dim = int(need("head_dim"))
    hp = GemmaHparams(
        n_vocab=int(need("vocab_size")), n_embd=int(need("hidden_size")), n_layer=n_layer,
        n_head=int(need("num_attention_heads")), n_head_kv=int(cfg.get("num_key_value_heads", need("num_attention_heads"))),
        head_dim=head_dim, n_ff=int(need("intermediate_size")),
        n_ctx_train=int(cfg.get("max_position_embeddings", 32768)), rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta, sliding_window=int(cfg.get("sliding_window", 512) or 512),
        attn_softcap=0.0, final_softcap=float(cfg.get("final_logit_softcapping") or 0.0),
        query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", head_dim)), arch="gemma3",
        rope_local_theta=local, rope_linear_factor=factor, multimodal=multimodal,
    )
    if hp.query_pre_attn_scalar != hp.head_dim:
        raise ConversionError(f"{where}: query_pre_attn_scalar {hp.query_pre_attn_scalar:g} != head_dim "
                              f"{hp.head_dim}; llama.cpp's gemma3 scales attention by 1/sqrt(head_dim)")
    hp.check_heads(where)
    return hp


def expected_tensors(hp: GemmaHparams) -> dict[str, tuple[str, tuple[int, ...], bool]]:
    """HF name -> (GGUF name, shape, is_norm)."""
    H, D = hp.n_embd, hp.head_dim
    out = {"model.embed_tokens.weight": ("token_embd.weight", (hp.n_vocab, H), False),
           "model.norm.weight": ("output_norm.weight", (H,), True)}
    per_layer = [
        ("input_layernorm.weight", "attn_norm.weight", (H,), True),
        ("self_attn.q_proj.weight", "attn_q.weight", (hp.n_head * D, H), False),
        ("self_attn.k_proj.weight", "attn_k.weight", (hp.n_head_kv * D, H), False),
        ("self_attn.v_proj.weight", "attn_v.weight", (hp.n_head_kv * D, H), False),
        ("self_attn.o_proj.weight", "attn_output.weight", (H, hp.n_head * D), False),
        ("post_attention_layernorm.weight", "post_attention_norm.weight", (H,), True),
        ("pre_feedforward_layernorm.weight", "ffn_norm.weight", (H,), True),
        ("mlp.gate_proj.weight", "ffn_gate.weight", (hp.n_ff, H), False),
        ("mlp.up_proj.weight", "ffn_up.weight", (hp.n_ff, H), False),
        ("mlp.down_proj.weight", "ffn_down.weight", (H, hp.n_ff), False),
        ("post_feedforward_layernorm.weight", "post_ffw_norm.weight", (H,), True),
    ]
    if hp.arch == "gemma3":  # per-head q/k norms
        per_layer += [("self_attn.q_norm.weight", "attn_q_norm.weight", (D,), True),
                      ("self_attn.k_norm.weight", "attn_k_norm.weight", (D,), True)]
    for i in range(hp.n_layer):
        for hf, gg, shape, is_norm in per_layer:
            out[f"model.layers.{i}.{hf}"] = (f"blk.{i}.{gg}", shape, is_norm)
    return out


def language_model_refs(refs: dict[str, safetensors_io.TensorRef], where: Path) -> dict[str, safetensors_io.TensorRef]:
    """A multimodal Gemma-3 checkpoint's language model under Gemma3ForCausalLM's names; the vision
    tower and the projector are left out (llama.cpp runs them from a separate mmproj file)."""
    out = {}
    for name, ref in refs.items():
        prefix = next((p for p in GEMMA3_TEXT_PREFIXES if name.startswith(p)), None)
        if prefix is not None:
            out["model." + name[len(prefix):]] = ref
        elif not name.startswith(GEMMA3_OTHER_PREFIXES) and name != "lm_head.weight":
            out[name] = ref  # unknown: plan_checkpoint names it
    if not any(n.startswith("model.layers.") for n in out):
        raise ConversionError(f"{where}: a multimodal Gemma-3 checkpoint without language model tensors (looked for "
                              f"{' and '.join(GEMMA3_TEXT_PREFIXES)})")
    return out

"""Every GGUF key and tensor name of the flow GGUF format, defined once for Python.

(csrc/flas-names.h holds the same names for C++; tests/test_names.py checks they agree.)

Conventions of the flow GGUF (format version 2; version 1 files, Gemma-2 only, still load):
- `general.architecture` is "flas"; every other key is under the "flas." prefix.
- RMSNorm weights are stored as the multiplier the norm applies: `1 + w` for the Gemma
  families (llama.cpp's Gemma convention), in f32, so the runtime multiplies by them directly. Residual gates and biases are f32 too.
- Matrices keep PyTorch's [out, in] layout, i.e. ggml ne = [in, out], ready for ggml_mul_mat.
"""

from __future__ import annotations

ARCH = "flas"
FORMAT_VERSION = 2
FORMAT_VERSION_MIN = 1

# ---- metadata keys -------------------------------------------------------------------------
KEY_FORMAT_VERSION = "flas.format_version"            # u32
KEY_BASE_MODEL_ID = "flas.base_model_id"              # str, e.g. "google/gemma-2-2b-it"
KEY_BASE_ARCH = "flas.base_architecture"              # str, llama.cpp's architecture: "gemma2", "gemma3"
KEY_BASE_BLOCK_COUNT = "flas.base_block_count"        # u32, decoder layers of the base model
KEY_LAYER = "flas.layer"                              # u32, steering layer L (0-based)
KEY_BLOCK_COUNT = "flas.block_count"                  # u32, FlowBlocks
KEY_N_STEPS = "flas.n_steps"                          # u32, default Euler steps
KEY_T_MIN = "flas.t_min"                              # f32, training flow-time range
KEY_T_MAX = "flas.t_max"                              # f32
KEY_CONCEPT_MAX_LEN = "flas.concept_max_len"          # u32, concept tokens kept (BOS included)
KEY_PROMPT_FORMAT = "flas.prompt_format"              # str, "chat" or "alpaca"
KEY_DISABLE_CROSS_ATTN = "flas.disable_cross_attn"    # bool, ablated group: no tensors
KEY_DISABLE_SELF_ATTN = "flas.disable_self_attn"      # bool
KEY_DISABLE_MLP = "flas.disable_mlp"                  # bool
KEY_EMBD = "flas.embedding_length"                    # u32, H
KEY_FF = "flas.feed_forward_length"                   # u32, I
KEY_HEAD_COUNT = "flas.attention.head_count"          # u32
KEY_HEAD_COUNT_KV = "flas.attention.head_count_kv"    # u32
KEY_HEAD_DIM = "flas.attention.key_length"            # u32, D
KEY_RMS_EPS = "flas.attention.layer_norm_rms_epsilon"  # f32
KEY_SOFTCAP = "flas.attn_logit_softcapping"           # f32, 0: none
KEY_QUERY_PRE_ATTN_SCALAR = "flas.attention.query_pre_attn_scalar"  # f32, self-attn scale^-2
KEY_ROPE_FREQ_BASE = "flas.rope.freq_base"            # f32
KEY_TIME_FREQ_DIM = "flas.time_embed.freq_dim"        # u32, 128
KEY_NORM_PLUS_ONE = "flas.norm_weights_plus_one"      # bool, true: the norm weights hold 1 + w (Gemma)
# version 2
KEY_ACTIVATION = "flas.activation"                    # str, the MLP's: "gelu_tanh" or "silu"
KEY_ROPE_SCALING_TYPE = "flas.rope.scaling.type"      # str, "none", "linear" or "llama3" (rope_freqs tensor)
KEY_ROPE_SCALING_FACTOR = "flas.rope.scaling.factor"  # f32, positions divided by it ("linear"); 1 for "none"

# ---- tensors -------------------------------------------------------------------------------
# (checkpoint name, GGUF name, group, kind, shape as a function of the dims). `{b}` is the block.
# kind: "matrix" (stored in the chosen outtype), "norm" (f32, the multiplier: 1 + w for the Gemma
# families, w for the others), "vector" (f32).
# group: None (always present) or the ablatable group it belongs to.
TIME_FREQ_DIM = 128


def flow_tensor_table(H: int, I: int, n_head: int, n_head_kv: int, D: int,
                      family: str = "gemma2") -> list[tuple[str, str, str | None, str, tuple[int, ...]]]:
    """Every checkpoint tensor of a flow of this base family (qwen3: per-head q/k norms in the
    self-attention)."""
    q, kv = n_head * D, n_head_kv * D
    qk_norms = [
        ("blocks.{b}.self_attn.q_norm.weight", "blk.{b}.attn_q_norm.weight", "self_attn", "norm", (D,)),
        ("blocks.{b}.self_attn.k_norm.weight", "blk.{b}.attn_k_norm.weight", "self_attn", "norm", (D,)),
    ] if family == "qwen3" else []
    return qk_norms + [
        ("time_embed.mlp.0.weight", "time_embd.in.weight", None, "matrix", (H, TIME_FREQ_DIM)),
        ("time_embed.mlp.0.bias", "time_embd.in.bias", None, "vector", (H,)),
        ("time_embed.mlp.2.weight", "time_embd.out.weight", None, "matrix", (H, H)),
        ("time_embed.mlp.2.bias", "time_embd.out.bias", None, "vector", (H,)),
        ("blocks.{b}.pre_cross_norm.weight", "blk.{b}.cross_norm.weight", "cross_attn", "norm", (H,)),
        ("blocks.{b}.cross_attn.q_proj.weight", "blk.{b}.cross_q.weight", "cross_attn", "matrix", (q, H)),
        ("blocks.{b}.cross_attn.k_proj.weight", "blk.{b}.cross_k.weight", "cross_attn", "matrix", (kv, H)),
        ("blocks.{b}.cross_attn.v_proj.weight", "blk.{b}.cross_v.weight", "cross_attn", "matrix", (kv, H)),
        ("blocks.{b}.cross_attn.o_proj.weight", "blk.{b}.cross_out.weight", "cross_attn", "matrix", (H, q)),
        ("blocks.{b}.cross_attn.q_norm.weight", "blk.{b}.cross_q_norm.weight", "cross_attn", "norm", (D,)),
        ("blocks.{b}.cross_attn.k_norm.weight", "blk.{b}.cross_k_norm.weight", "cross_attn", "norm", (D,)),
        ("blocks.{b}.post_cross_norm.weight", "blk.{b}.cross_post_norm.weight", "cross_attn", "norm", (H,)),
        ("blocks.{b}.cross_gate", "blk.{b}.cross_res_gate", "cross_attn", "vector", (H,)),
        ("blocks.{b}.pre_sa_norm.weight", "blk.{b}.attn_norm.weight", "self_attn", "norm", (H,)),
        ("blocks.{b}.self_attn.q_proj.weight", "blk.{b}.attn_q.weight", "self_attn", "matrix", (q, H)),
        ("blocks.{b}.self_attn.k_proj.weight", "blk.{b}.attn_k.weight", "self_attn", "matrix", (kv, H)),
        ("blocks.{b}.self_attn.v_proj.weight", "blk.{b}.attn_v.weight", "self_attn", "matrix", (kv, H)),
        ("blocks.{b}.self_attn.o_proj.weight", "blk.{b}.attn_out.weight", "self_attn", "matrix", (H, q)),
        ("blocks.{b}.post_sa_norm.weight", "blk.{b}.attn_post_norm.weight", "self_attn", "norm", (H,)),
        ("blocks.{b}.self_attn_gate", "blk.{b}.attn_res_gate", "self_attn", "vector", (H,)),
        ("blocks.{b}.pre_mlp_norm.weight", "blk.{b}.ffn_norm.weight", "mlp", "norm", (H,)),
        ("blocks.{b}.gate_proj.weight", "blk.{b}.ffn_gate.weight", "mlp", "matrix", (I, H)),
        ("blocks.{b}.up_proj.weight", "blk.{b}.ffn_up.weight", "mlp", "matrix", (I, H)),
        ("blocks.{b}.down_proj.weight", "blk.{b}.ffn_down.weight", "mlp", "matrix", (H, I)),
        ("blocks.{b}.post_mlp_norm.weight", "blk.{b}.ffn_post_norm.weight", "mlp", "norm", (H,)),
        ("blocks.{b}.mlp_gate", "blk.{b}.ffn_res_gate", "mlp", "vector", (H,)),
    ]


# Llama-3 RoPE scaling: per-frequency divisors [D/2], computed by the converter (llama.cpp's name)
TN_ROPE_FREQS = "rope_freqs.weight"
GEMMA_FAMILIES = ("gemma2", "gemma3")  # llama.cpp architectures whose norms multiply by 1 + w

GROUPS = ("cross_attn", "self_attn", "mlp")
GROUP_DISABLE_KEY = {"cross_attn": KEY_DISABLE_CROSS_ATTN, "self_attn": KEY_DISABLE_SELF_ATTN, "mlp": KEY_DISABLE_MLP}
# checkpoint tensors that are known and deliberately not converted
IGNORED_CHECKPOINT_TENSORS = ("rotary_emb.inv_freq",)  # recomputed from rope theta (FLAS_SPEC.md 6)

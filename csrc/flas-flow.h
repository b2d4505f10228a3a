// The flow network of a flow GGUF: hyper-parameters and weights in a backend buffer.
#pragma once

#include "ggml-backend.h"
#include "ggml-cpp.h"
#include "ggml.h"

#include <string>
#include <vector>

struct flas_flow_hparams {
    std::string base_model_id;
    std::string prompt_format;      // "chat" or "alpaca"
    std::string base_arch = "gemma2";  // llama.cpp's architecture of the base model
    int   format_version  = 2;
    int   n_base_layer    = 0;      // decoder layers of the base model
    int   layer           = 0;      // steering layer L, 0-based
    int   n_block         = 0;
    int   n_steps         = 3;      // default N
    float t_min           = 0.5f;
    float t_max           = 2.0f;
    int   concept_max_len = 64;     // concept tokens, BOS included
    bool  has_cross_attn  = true;   // false: the group was ablated (no tensors)
    bool  has_self_attn   = true;
    bool  has_mlp         = true;
    int   n_embd          = 0;      // H
    int   n_ff            = 0;      // I
    int   n_head          = 0;
    int   n_head_kv       = 0;
    int   head_dim        = 0;      // D
    float rms_eps         = 1e-6f;
    float softcap         = 50.0f;  // attention logit soft-capping; 0: none
    bool  silu            = false;  // the MLP's activation: SiLU, else GELU (tanh approximation)
    float rope_freq_scale = 1.0f;   // 1 / the linear RoPE scaling factor
    bool  rope_llama3     = false;  // Llama-3 scaling: the rope_freqs tensor divides the frequencies
    bool  self_attn_qk_norm = false;  // qwen3: per-head q/k norms in the self-attention
    float query_pre_attn_scalar = 256.0f;
    float rope_freq_base  = 10000.0f;
    int   time_freq_dim   = 128;
};

// The types a flow matrix may have: what flas-convert flow writes and the graph computes with on
// every backend (vectors are f32).
#define FLAS_FLOW_MATRIX_TYPES "f32, f16, bf16, q8_0, q6_k, q5_k or q4_k"
inline bool flas_flow_matrix_type_ok(ggml_type type) {
    return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16 || type == GGML_TYPE_Q8_0 ||
           type == GGML_TYPE_Q6_K || type == GGML_TYPE_Q5_K || type == GGML_TYPE_Q4_K;
}

// Norm weights hold 1 + w (see docs/FLOW_GGUF.md); a group's tensors are null when ablated.
struct flas_flow_block {
    ggml_tensor * cross_norm      = nullptr;  // [H]
    ggml_tensor * cross_q         = nullptr;  // [H, nH*D]
    ggml_tensor * cross_k         = nullptr;  // [H, nKV*D]
    ggml_tensor * cross_v         = nullptr;  // [H, nKV*D]
    ggml_tensor * cross_out       = nullptr;  // [nH*D, H]
    ggml_tensor * cross_q_norm    = nullptr;  // [D]
    ggml_tensor * cross_k_norm    = nullptr;  // [D]
    ggml_tensor * cross_post_norm = nullptr;  // [H]
    ggml_tensor * cross_gate      = nullptr;  // [H]

    ggml_tensor * attn_norm       = nullptr;  // [H]
    ggml_tensor * attn_q          = nullptr;  // [H, nH*D]
    ggml_tensor * attn_k          = nullptr;  // [H, nKV*D]
    ggml_tensor * attn_v          = nullptr;  // [H, nKV*D]
    ggml_tensor * attn_out        = nullptr;  // [nH*D, H]
    ggml_tensor * attn_q_norm     = nullptr;  // [D], qwen3 only
    ggml_tensor * attn_k_norm     = nullptr;  // [D], qwen3 only
    ggml_tensor * attn_post_norm  = nullptr;  // [H]
    ggml_tensor * attn_gate       = nullptr;  // [H]

    ggml_tensor * ffn_norm        = nullptr;  // [H]
    ggml_tensor * ffn_gate        = nullptr;  // [H, I]
    ggml_tensor * ffn_up          = nullptr;  // [H, I]
    ggml_tensor * ffn_down        = nullptr;  // [I, H]
    ggml_tensor * ffn_post_norm   = nullptr;  // [H]
    ggml_tensor * ffn_res_gate    = nullptr;  // [H]
};

struct flas_flow {
    flas_flow_hparams hp;

    ggml_tensor * time_in_w  = nullptr;  // [128, H]
    ggml_tensor * time_in_b  = nullptr;  // [H]
    ggml_tensor * time_out_w = nullptr;  // [H, H]
    ggml_tensor * time_out_b = nullptr;  // [H]
    ggml_tensor * rope_freqs = nullptr;  // [D/2] per-frequency divisors (Llama-3 RoPE scaling), or none
    std::vector<flas_flow_block> blocks;

    ggml_context_ptr        ctx;  // tensor metadata
    ggml_backend_buffer_ptr buf;  // tensor data, on the backend that computes layer L
};

// Reads only the hyper-parameters of a flow GGUF (to choose a backend before loading).
flas_flow_hparams flas_flow_read_hparams(const std::string & path);

// Loads a flow GGUF into a buffer of `backend`. Every key and tensor is checked; errors are
// std::invalid_argument naming the file, the key or tensor, and the fix.
void flas_flow_load(flas_flow & flow, const std::string & path, ggml_backend_t backend);

// Loads a flow GGUF on the CPU and drops it: every check of flas_flow_load, no base model needed.
void flas_flow_validate(const std::string & path);

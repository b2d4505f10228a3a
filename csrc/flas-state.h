// What the flow keeps between forward passes: the concept state (cross-attention K/V and the
// time embeddings of every Euler step, fixed for a concept and (T, N)) and the per-step,
// per-block self-attention KV cache (FLAS_SPEC.md section 3). Both live on the flow's backend.
#pragma once

#include "flas-flow.h"

#include <vector>

// Sized once for concept_max_len tokens and FLAS_MAX_STEPS steps.
#define FLAS_MAX_STEPS 64

struct flas_concept_state {
    std::vector<ggml_tensor *> k;   // per block: [D, K_max, nKV], after k_norm and RoPE at 0..K-1
    std::vector<ggml_tensor *> vt;  // per block: [K_max, D, nKV], V transposed
    ggml_tensor * time_emb = nullptr;  // [H, FLAS_MAX_STEPS]: column k is time_embed(k * dt)
    int n_tokens = 0;               // K of the current concept; 0: none encoded

    ggml_context_ptr        ctx;
    ggml_backend_buffer_ptr buf;
};

void flas_concept_state_init(flas_concept_state & cs, const flas_flow & flow, ggml_backend_t backend);

// cache[step * n_block + block]; K rows after RoPE, V stored transposed (as llama.cpp does
// without flash attention) so attention reads both without copies.
struct flas_flow_cache {
    std::vector<ggml_tensor *> k;   // [nKV*D, n_ctx]
    std::vector<ggml_tensor *> vt;  // [n_ctx, nKV*D]
    int n_ctx   = 0;
    int n_steps = 0;                // steps allocated
    ggml_type type = GGML_TYPE_F32;

    ggml_context_ptr        ctx;
    ggml_backend_buffer_ptr buf;
};

// (Re)allocates the cache for n_steps Euler steps; its contents are undefined afterwards.
void flas_flow_cache_init(flas_flow_cache & cache, const flas_flow & flow, ggml_backend_t backend,
                          int n_ctx, int n_steps, ggml_type type);

// What the flow keeps between forward passes, all on the flow's backend:
// - the concept state: cross-attention K/V of every cached concept (one slot each) and the
//   time embeddings of every Euler step of every sequence, fixed for a concept and (T, N);
// - the per-sequence, per-step, per-block self-attention KV cache (FLAS_SPEC.md section 3).
#pragma once

#include "flas-flow.h"
#include "flas.h"

#include <vector>

// Sized once for concept_max_len tokens per slot and FLAS_MAX_STEPS (flas.h) steps per sequence.

// Slot s holds its concept's keys at key indices s*K_max .. s*K_max+K-1, so the keys of
// neighbouring slots form one view that a block mask splits between rows.
struct flas_concept_state {
    std::vector<ggml_tensor *> k;   // per block: [D, K_max*n_slot, nKV], after k_norm and RoPE at 0..K-1
    std::vector<ggml_tensor *> vt;  // per block: [K_max*n_slot, D, nKV], V transposed
    ggml_tensor * time_emb = nullptr;  // [H, FLAS_MAX_STEPS*n_seq]: column seq*MAX+k is time_embed(k * dt_seq)
    int n_slot = 0;
    int k_max  = 0;                 // concept_max_len

    ggml_context_ptr        ctx;
    ggml_backend_buffer_ptr buf;    // cleared: masked keys of unused slots must be finite
};

void flas_concept_state_init(flas_concept_state & cs, const flas_flow & flow, ggml_backend_t backend,
                             int n_slot, int n_seq);
// What init would allocate in a buffer of type buft (no memory is allocated).
size_t flas_concept_state_bytes(const flas_flow_hparams & hp, ggml_backend_buffer_type_t buft, int n_slot, int n_seq);

// cache[step * n_block + block] of one sequence; K rows after RoPE, V stored transposed (as
// llama.cpp does without flash attention) so attention reads both without copies.
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
size_t flas_flow_cache_bytes(const flas_flow_hparams & hp, ggml_backend_buffer_type_t buft, int n_ctx, int n_steps,
                             ggml_type type);

// What the flow keeps between forward passes, all on the flow's backend:
// - the concept state: cross-attention K/V of every cached concept (one slot each), and per
//   sequence its concept's values folded through cross_out and the time embeddings of its Euler
//   steps, fixed for a concept and (T, N);
// - the per-sequence, per-step, per-block self-attention KV cache (FLAS_SPEC.md section 3).
#pragma once

#include "flas-flow.h"
#include "flas.h"

#include <vector>

// The type of the flow's per-sequence state (self-attention caches, folded values): f32 when
// exact, else f16, as llama.cpp's default KV cache.
inline ggml_type flas_state_type(bool exact) { return exact ? GGML_TYPE_F32 : GGML_TYPE_F16; }

// Sized once for concept_max_len tokens per slot and FLAS_MAX_STEPS (flas.h) steps per sequence.

// Slot s holds its concept's keys at key indices s*K_max .. s*K_max+K-1; a pass's rows attend
// to their own slot's keys, run by run.
struct flas_concept_state {
    std::vector<ggml_tensor *> k;   // per block: [D, K_max*n_slot, nKV], after k_norm and RoPE at 0..K-1
    std::vector<ggml_tensor *> vt;  // per block: [K_max*n_slot, D, nKV], V transposed
    // per block: [fold_keys*nH*H, n_seq]: row s is sequence s's concept values folded through
    // cross_out, a [K*nH, H] matrix U[j + K*h, :] = cross_out_h v_{g(h), j} (head h's slice of
    // cross_out times its KV head's value of key j). A short concept's decode reads these instead
    // of cross_out's weights (the attention's sum and the projection reassociated). Empty without
    // cross-attention or when no concept length would pay (fold_keys 0).
    std::vector<ggml_tensor *> uo;
    int fold_keys = 0;
    ggml_tensor * time_emb = nullptr;  // [H, FLAS_MAX_STEPS*n_seq]: column seq*MAX+k is time_embed(k * dt_seq)
    int n_slot = 0;
    int k_max  = 0;                 // concept_max_len

    ggml_context_ptr        ctx;
    ggml_backend_buffer_ptr buf;    // cleared at load: no read of a slot not yet written can meet NaN
};

// The most concept keys whose folded values (K*H*nH of uo_type per block) weigh less than
// cross_out's weights (cross_out_bytes, one block): longer concepts are never folded, since decode
// would read more. 0 without cross-attention.
int flas_fold_max_keys(const flas_flow_hparams & hp, size_t cross_out_bytes, ggml_type uo_type);

// uo_type: f32, or f16 (as the self-attention caches when not exact).
void flas_concept_state_init(flas_concept_state & cs, const flas_flow & flow, ggml_backend_t backend,
                             int n_slot, int n_seq, ggml_type uo_type);
// What init would allocate in a buffer of type buft (no memory is allocated).
size_t flas_concept_state_bytes(const flas_flow_hparams & hp, ggml_backend_buffer_type_t buft, int n_slot, int n_seq,
                                ggml_type uo_type, size_t cross_out_bytes);

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

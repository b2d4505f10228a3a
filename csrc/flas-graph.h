// Graph builders for the flow (FLAS_SPEC.md section 4). Pure functions of their inputs: they
// add nodes to a no_alloc context and never touch data.
#pragma once

#include "flas-flow.h"
#include "flas-state.h"

#include "ggml-cpp.h"

#include <functional>
#include <vector>

// The rows of one sequence in a pass: pass rows r0 .. r0+n-1 at positions p0 .. p0+n-1.
struct flas_segment {
    int r0 = 0, n = 0;
    int p0 = 0;
    int n_steps = 0;
    const flas_flow_cache * cache = nullptr;  // the sequence's own self-attention caches
    ggml_tensor * mask = nullptr;             // [p0+n, n] causal (0 or -INF); null when n == 1
};

// Consecutive pass rows conditioned on one concept: they attend to its keys alone, so that a
// row is computed the same whatever concepts share its pass.
struct flas_concept_run {
    int r0 = 0, n = 0;
    int key0 = 0, n_keys = 0;  // the concept's keys in the concept state
    int fold_seq = -1;         // >= 0: read this sequence's folded values (concepts.uo), not cross_out
};

// One forward pass of the flow over the steered rows of a batch (R rows, several sequences).
// Segments are sorted by n_steps, descending, so the rows still integrating at step k are a
// prefix of the rows: step k works on the first rows_at(k) columns.
struct flas_pass {
    ggml_context * ctx;
    ggml_cgraph  * gf;
    const flas_flow          & flow;
    const flas_concept_state & concepts;
    std::vector<flas_segment> segs;
    int n_rows = 0;                    // R
    ggml_tensor * pos = nullptr;        // [R] i32, absolute positions
    ggml_tensor * time_idx = nullptr;   // [R * n_steps_max] i32: row r at step k reads time_emb column [k*R + r]
    ggml_tensor * dt = nullptr;         // [1, R] f32, each row's step size T/N
    std::vector<flas_concept_run> runs; // cover the R rows in order

    int n_steps_max() const { return segs.empty() ? 0 : segs.front().n_steps; }
    int rows_at(int step) const;
};

// N Euler steps from h0 [H, R]; the self-attention K/V of step k are written to each
// segment's cache[k] at its positions (the copies are expanded into gf before the reads).
ggml_tensor * flas_build_euler(const flas_pass & p, ggml_tensor * h0);

// time_embed(t) for each column of sinusoids [F, N] (sin first, FLAS_SPEC.md 4) -> [H, N].
ggml_tensor * flas_build_time_embedding(ggml_context * ctx, const flas_flow & flow, ggml_tensor * sinusoids);

// Cross-attention keys (k_norm, RoPE at 0..K-1) and transposed values of block b for the
// encoded concept c [H, K], copied into slot `slot` of the concept state.
void flas_build_concept_kv(ggml_context * ctx, ggml_cgraph * gf, const flas_flow & flow, const flas_concept_state & cs,
                           int b, int slot, ggml_tensor * c, ggml_tensor * pos_c);

// Sequence seq's folded values of block b (concepts.uo) from the K keys of concept slot `slot`:
// U[j + K*h, :] = cross_out[:, h*D:(h+1)*D] v_{g(h), j}. head_eye: [1, nH, 1, nH] f32, the identity.
void flas_build_folded_values(ggml_context * ctx, ggml_cgraph * gf, const flas_flow & flow, const flas_concept_state & cs,
                              int b, int slot, int K, int seq, ggml_tensor * head_eye);

// Worst-case node count of flas_build_euler for n_seg segments, for sizing graphs.
size_t flas_graph_max_nodes(const flas_flow & flow, int n_steps, int n_seg);

// A no_alloc context with room for a graph of n_nodes.
ggml_context_ptr flas_graph_context(size_t n_nodes);
// Allocates gf on backend's default buffer type, calls set_inputs, computes it; throws on failure.
void flas_compute_once(ggml_backend_t backend, ggml_cgraph * gf, const std::function<void()> & set_inputs);

// Graph builders for the flow (FLAS_SPEC.md section 4). Pure functions of their inputs: they
// add nodes to a no_alloc context and never touch data.
#pragma once

#include "flas-flow.h"
#include "flas-state.h"

// One forward pass of the flow over n rows at positions p0 .. p0+n-1.
struct flas_pass {
    ggml_context * ctx;
    ggml_cgraph  * gf;
    const flas_flow          & flow;
    const flas_concept_state & concept;
    const flas_flow_cache    & cache;
    ggml_tensor * pos;   // [n] i32, absolute positions
    ggml_tensor * mask;  // [p0+n, n] f32, causal: 0 or -INF
    int p0;
    int n;
};

// N Euler steps of size dt from h0 [H, n]; the self-attention K/V of step k are written to
// cache[k] at positions p0.. (the copies are expanded into gf before the reads).
ggml_tensor * flas_build_euler(const flas_pass & p, ggml_tensor * h0, int n_steps, float dt);

// time_embed(t) for each column of sinusoids [F, N] (sin first, FLAS_SPEC.md 4) -> [H, N].
ggml_tensor * flas_build_time_embedding(ggml_context * ctx, const flas_flow & flow, ggml_tensor * sinusoids);

// Cross-attention keys (k_norm, RoPE at 0..K-1) and transposed values of block b for the
// encoded concept c [H, K], copied into the concept state; returns the two copy nodes.
void flas_build_concept_kv(ggml_context * ctx, ggml_cgraph * gf, const flas_flow & flow, const flas_concept_state & cs,
                           int b, ggml_tensor * c, ggml_tensor * pos_c);

// Worst-case node count of flas_build_euler, for sizing graphs.
size_t flas_graph_max_nodes(const flas_flow & flow, int n_steps);

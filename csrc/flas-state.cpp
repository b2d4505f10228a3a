#include "flas-state.h"

#include <algorithm>
#include <stdexcept>
#include <string>

static ggml_context * new_meta_context(size_t n_tensors) {
    ggml_init_params params = { n_tensors * ggml_tensor_overhead(), nullptr, /*no_alloc =*/ true };
    return ggml_init(params);
}

static ggml_backend_buffer_t alloc_or_throw(ggml_context * ctx, ggml_backend_t backend, const char * what) {
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
    if (buf == nullptr) {
        throw std::runtime_error(std::string("cannot allocate the flow ") + what + " on backend " +
                                 ggml_backend_name(backend));
    }
    return buf;  // not cleared: every row is written before it is read, and untouched pages cost no memory
}

int flas_fold_max_keys(const flas_flow_hparams & hp, size_t cross_out_bytes, ggml_type uo_type) {
    if (!hp.has_cross_attn || cross_out_bytes == 0) {
        return 0;
    }
    const size_t per_key = (size_t) hp.n_embd * hp.n_head * ggml_type_size(uo_type);
    return (int) std::min<size_t>(hp.concept_max_len, (cross_out_bytes - 1) / per_key);
}

// The tensors, without memory: shared by allocation and by sizing, so the two cannot differ.
static void describe_concept_state(flas_concept_state & cs, const flas_flow_hparams & hp, int n_slot, int n_seq,
                                   ggml_type uo_type, int fold_keys) {
    cs.ctx.reset(new_meta_context(3 * hp.n_block + 1));
    cs.k.clear();
    cs.vt.clear();
    cs.uo.clear();
    cs.n_slot = n_slot;
    cs.k_max  = hp.concept_max_len;
    cs.fold_keys = fold_keys;
    const int64_t n_keys = (int64_t) hp.concept_max_len * n_slot;
    for (int b = 0; b < hp.n_block; ++b) {
        cs.k.push_back(ggml_new_tensor_3d(cs.ctx.get(), GGML_TYPE_F32, hp.head_dim, n_keys, hp.n_head_kv));
        cs.vt.push_back(ggml_new_tensor_3d(cs.ctx.get(), GGML_TYPE_F32, n_keys, hp.head_dim, hp.n_head_kv));
        if (fold_keys > 0) {
            cs.uo.push_back(ggml_new_tensor_2d(cs.ctx.get(), uo_type, (int64_t) fold_keys * hp.n_head * hp.n_embd, n_seq));
        }
    }
    cs.time_emb = ggml_new_tensor_2d(cs.ctx.get(), GGML_TYPE_F32, hp.n_embd, (int64_t) FLAS_MAX_STEPS * n_seq);
}

void flas_concept_state_init(flas_concept_state & cs, const flas_flow & flow, ggml_backend_t backend,
                             int n_slot, int n_seq, ggml_type uo_type) {
    const size_t cross_out_bytes = flow.hp.has_cross_attn ? ggml_nbytes(flow.blocks[0].cross_out) : 0;
    describe_concept_state(cs, flow.hp, n_slot, n_seq, uo_type, flas_fold_max_keys(flow.hp, cross_out_bytes, uo_type));
    cs.buf.reset(alloc_or_throw(cs.ctx.get(), backend, "concept state"));
    ggml_backend_buffer_clear(cs.buf.get(), 0);  // no read of a slot not yet written can meet NaN
}

size_t flas_concept_state_bytes(const flas_flow_hparams & hp, ggml_backend_buffer_type_t buft, int n_slot, int n_seq,
                                ggml_type uo_type, size_t cross_out_bytes) {
    flas_concept_state cs;
    describe_concept_state(cs, hp, n_slot, n_seq, uo_type, flas_fold_max_keys(hp, cross_out_bytes, uo_type));
    return ggml_backend_alloc_ctx_tensors_from_buft_size(cs.ctx.get(), buft);
}

// false: an ablated self-attention has nothing to cache
static bool describe_flow_cache(flas_flow_cache & cache, const flas_flow_hparams & hp, int n_ctx, int n_steps,
                                ggml_type type) {
    cache.ctx.reset(new_meta_context(2 * (size_t) n_steps * hp.n_block));
    cache.k.clear();
    cache.vt.clear();
    cache.n_ctx   = n_ctx;
    cache.n_steps = n_steps;
    cache.type    = type;
    if (!hp.has_self_attn) {
        return false;
    }
    const int64_t kv_dim = (int64_t) hp.n_head_kv * hp.head_dim;
    for (int i = 0; i < n_steps * hp.n_block; ++i) {
        cache.k.push_back(ggml_new_tensor_2d(cache.ctx.get(), type, kv_dim, n_ctx));
        cache.vt.push_back(ggml_new_tensor_2d(cache.ctx.get(), type, n_ctx, kv_dim));
    }
    return true;
}

size_t flas_flow_cache_bytes(const flas_flow_hparams & hp, ggml_backend_buffer_type_t buft, int n_ctx, int n_steps,
                             ggml_type type) {
    flas_flow_cache cache;
    return describe_flow_cache(cache, hp, n_ctx, n_steps, type) ? ggml_backend_alloc_ctx_tensors_from_buft_size(cache.ctx.get(), buft) : 0;
}

void flas_flow_cache_init(flas_flow_cache & cache, const flas_flow & flow, ggml_backend_t backend,
                          int n_ctx, int n_steps, ggml_type type) {
    cache.buf.reset();  // free the old buffer before allocating the new one
    if (!describe_flow_cache(cache, flow.hp, n_ctx, n_steps, type)) {
        return;
    }
    cache.buf.reset(alloc_or_throw(cache.ctx.get(), backend, "KV cache"));
}

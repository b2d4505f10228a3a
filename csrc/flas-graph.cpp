#include "flas-graph.h"

#include "ggml-alloc.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace {

// Gemma RMSNorm; the weight already holds 1 + w.
ggml_tensor * norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, float eps) {
    return ggml_mul(ctx, ggml_rms_norm(ctx, x, eps), w);
}

// In place, as is the softmax: the scores are the largest tensors of a pass ([n_kv, n, nH]).
ggml_tensor * softcap(ggml_context * ctx, ggml_tensor * scores, float scale, float cap) {
    return ggml_scale_inplace(ctx, ggml_tanh_inplace(ctx, ggml_scale_inplace(ctx, scores, scale / cap)), cap);
}

// GELU, tanh approximation, written out: ggml's CPU gelu reads an fp16 table (~3e-4 off).
ggml_tensor * gelu_tanh(ggml_context * ctx, ggml_tensor * x) {
    const float c = sqrtf(2.0f / (float) M_PI);
    ggml_tensor * x3    = ggml_mul(ctx, ggml_sqr(ctx, x), x);
    ggml_tensor * inner = ggml_scale(ctx, ggml_add(ctx, x, ggml_scale(ctx, x3, 0.044715f)), c);
    ggml_tensor * t1    = ggml_scale_bias(ctx, ggml_tanh(ctx, inner), 0.5f, 0.5f);  // (1 + tanh) / 2
    return ggml_mul(ctx, x, t1);
}

ggml_tensor * rope(ggml_context * ctx, const flas_flow & flow, ggml_tensor * x, ggml_tensor * pos) {
    const flas_flow_hparams & hp = flow.hp;
    return ggml_rope_ext(ctx, x, pos, flow.rope_freqs, hp.head_dim, GGML_ROPE_TYPE_NEOX, 0, hp.rope_freq_base,
                         hp.rope_freq_scale, 0.0f, 1.0f, 0.0f, 0.0f);
}

// The first n entries of a per-row input.
ggml_tensor * rows_view(ggml_context * ctx, ggml_tensor * per_row, int n) {
    return per_row->ne[0] == n ? per_row : ggml_view_1d(ctx, per_row, n, 0);
}

// softmax(softcap(q.k * scale) + mask) for q [D, n, nH], k [D, n_kv, nKV] -> [n_kv, n, nH];
// GQA by ggml's broadcast (query head h reads KV head h / (nH/nKV)).
ggml_tensor * attention_weights(ggml_context * ctx, const flas_flow_hparams & hp, ggml_tensor * q, ggml_tensor * k,
                                ggml_tensor * mask, float scale) {
    ggml_tensor * kq = ggml_mul_mat(ctx, k, q);                       // [n_kv, n, nH]
    kq = hp.softcap > 0.0f ? softcap(ctx, kq, scale, hp.softcap) : ggml_scale_inplace(ctx, kq, scale);
    return ggml_soft_max_ext_inplace(ctx, kq, mask, 1.0f, 0.0f);
}

// The attention weights times the values vt [n_kv, D, nKV]. Returns [nH*D, n].
ggml_tensor * attend(ggml_context * ctx, const flas_flow_hparams & hp, ggml_tensor * q, ggml_tensor * k,
                     ggml_tensor * vt, ggml_tensor * mask, float scale) {
    ggml_tensor * kq = attention_weights(ctx, hp, q, k, mask, scale);
    ggml_tensor * kqv = ggml_mul_mat(ctx, vt, kq);                    // [D, n, nH]
    kqv = ggml_cont(ctx, ggml_permute(ctx, kqv, 0, 2, 1, 3));         // [D, nH, n]
    return ggml_reshape_2d(ctx, kqv, (int64_t) hp.head_dim * hp.n_head, kqv->ne[2]);
}

// Queries of the rows against the keys of their own concept, run by run. Runs that fold add
// their rows' outputs directly; consecutive runs that do not share one read of cross_out.
ggml_tensor * cross_attention(const flas_pass & p, const flas_flow_block & blk, int b, ggml_tensor * x) {
    const flas_flow_hparams & hp = p.flow.hp;
    ggml_context * ctx = p.ctx;
    const int n = (int) x->ne[1];
    ggml_tensor * q = ggml_mul_mat(ctx, blk.cross_q, x);
    q = ggml_reshape_3d(ctx, q, hp.head_dim, hp.n_head, n);
    q = ggml_mul(ctx, ggml_rms_norm(ctx, q, hp.rms_eps), blk.cross_q_norm);
    q = rope(ctx, p.flow, q, rows_view(ctx, p.pos, n));                // [D, nH, n]
    ggml_tensor * kc = p.concepts.k[b];
    ggml_tensor * vt = p.concepts.vt[b];
    const float scale = 1.0f / sqrtf((float) hp.head_dim);

    ggml_tensor * out = nullptr;       // [H, rows so far]
    ggml_tensor * unfolded = nullptr;  // [nH*D, rows] attended, waiting for cross_out
    auto append = [&](ggml_tensor *& acc, ggml_tensor * y) { acc = acc ? ggml_concat(ctx, acc, y, 1) : y; };
    auto flush = [&] {
        if (unfolded != nullptr) {
            append(out, ggml_mul_mat(ctx, blk.cross_out, unfolded));
            unfolded = nullptr;
        }
    };
    for (const flas_concept_run & run : p.runs) {
        if (run.r0 >= n) {
            break;  // rows past n have finished integrating
        }
        const int n_run = std::min(run.n, n - run.r0);
        ggml_tensor * q_run = ggml_view_3d(ctx, q, hp.head_dim, hp.n_head, n_run, q->nb[1], q->nb[2],
                                           (size_t) run.r0 * q->nb[2]);
        q_run = ggml_permute(ctx, q_run, 0, 2, 1, 3);                  // [D, n_run, nH]
        ggml_tensor * k = ggml_view_3d(ctx, kc, hp.head_dim, run.n_keys, hp.n_head_kv, kc->nb[1], kc->nb[2],
                                       (size_t) run.key0 * kc->nb[1]);
        if (run.fold_seq >= 0) {
            // sum over keys j and heads h of a[j, h] U[j + K*h, :]: cross_out's weights are not read
            flush();
            const int64_t KH = (int64_t) run.n_keys * hp.n_head;
            ggml_tensor * uo = p.concepts.uo[b];
            ggml_tensor * u = ggml_view_2d(ctx, uo, KH, hp.n_embd, KH * ggml_element_size(uo),
                                           (size_t) run.fold_seq * uo->nb[1]);
            ggml_tensor * a = attention_weights(ctx, hp, q_run, k, nullptr, scale);                 // [K, n_run, nH]
            a = ggml_reshape_2d(ctx, ggml_cont(ctx, ggml_permute(ctx, a, 0, 2, 1, 3)), KH, n_run);  // [K*nH, n_run]
            append(out, ggml_mul_mat(ctx, u, a));                                                   // [H, n_run]
        } else {
            ggml_tensor * v = ggml_view_3d(ctx, vt, run.n_keys, hp.head_dim, hp.n_head_kv, vt->nb[1], vt->nb[2],
                                           (size_t) run.key0 * ggml_element_size(vt));
            append(unfolded, attend(ctx, hp, q_run, k, v, nullptr, scale));
        }
    }
    flush();
    return out;
}

// Each sequence attends to its own step-`step` cache: the projections and RoPE run over all
// rows at once (one read of the weights), the attention per segment.
ggml_tensor * self_attention(const flas_pass & p, const flas_flow_block & blk, int step, int b, ggml_tensor * x) {
    const flas_flow_hparams & hp = p.flow.hp;
    ggml_context * ctx = p.ctx;
    const int n = (int) x->ne[1];
    const int64_t kv_dim = (int64_t) hp.n_head_kv * hp.head_dim;
    ggml_tensor * pos = rows_view(ctx, p.pos, n);

    ggml_tensor * q = ggml_reshape_3d(ctx, ggml_mul_mat(ctx, blk.attn_q, x), hp.head_dim, hp.n_head, n);
    ggml_tensor * k = ggml_reshape_3d(ctx, ggml_mul_mat(ctx, blk.attn_k, x), hp.head_dim, hp.n_head_kv, n);
    ggml_tensor * v = ggml_mul_mat(ctx, blk.attn_v, x);                // [nKV*D, n]
    if (blk.attn_q_norm != nullptr) {  // qwen3: per-head norms before RoPE
        q = norm(ctx, q, blk.attn_q_norm, hp.rms_eps);
        k = norm(ctx, k, blk.attn_k_norm, hp.rms_eps);
    }
    q = rope(ctx, p.flow, q, pos);                                     // [D, nH, n]
    k = rope(ctx, p.flow, k, pos);                                     // [D, nKV, n]

    ggml_tensor * out = nullptr;
    for (const flas_segment & s : p.segs) {
        if (s.n_steps <= step) {
            break;  // sorted: no later segment is still integrating
        }
        ggml_tensor * ck = s.cache->k [step * hp.n_block + b];
        ggml_tensor * cv = s.cache->vt[step * hp.n_block + b];
        const size_t es = ggml_element_size(ck);
        const int n_kv = s.p0 + s.n;

        // append this segment's keys (after RoPE) and values to its step-`step` cache
        ggml_tensor * k_seg = ggml_view_2d(ctx, k, kv_dim, s.n, k->nb[2], (size_t) s.r0 * k->nb[2]);
        ggml_tensor * v_seg = ggml_view_2d(ctx, v, kv_dim, s.n, v->nb[1], (size_t) s.r0 * v->nb[1]);
        ggml_tensor * k_dst = ggml_view_2d(ctx, ck, kv_dim, s.n, ck->nb[1], (size_t) s.p0 * ck->nb[1]);
        ggml_tensor * v_dst = ggml_view_2d(ctx, cv, s.n, kv_dim, cv->nb[1], (size_t) s.p0 * es);
        ggml_build_forward_expand(p.gf, ggml_cpy(ctx, k_seg, k_dst));
        ggml_build_forward_expand(p.gf, ggml_cpy(ctx, ggml_transpose(ctx, v_seg), v_dst));

        ggml_tensor * q_seg = ggml_view_3d(ctx, q, hp.head_dim, hp.n_head, s.n, q->nb[1], q->nb[2], (size_t) s.r0 * q->nb[2]);
        q_seg = ggml_permute(ctx, q_seg, 0, 2, 1, 3);                  // [D, n, nH]
        ggml_tensor * k_all = ggml_view_3d(ctx, ck, hp.head_dim, n_kv, hp.n_head_kv, ck->nb[1], hp.head_dim * es, 0);
        ggml_tensor * v_all = ggml_view_3d(ctx, cv, n_kv, hp.head_dim, hp.n_head_kv, cv->nb[1], hp.head_dim * cv->nb[1], 0);
        ggml_tensor * o = attend(ctx, hp, q_seg, k_all, v_all, s.mask, 1.0f / sqrtf(hp.query_pre_attn_scalar));
        out = out ? ggml_concat(ctx, out, o, 1) : o;                   // [nH*D, rows so far]
    }
    return ggml_mul_mat(ctx, blk.attn_out, out);
}

ggml_tensor * mlp(ggml_context * ctx, const flas_flow_hparams & hp, const flas_flow_block & blk, ggml_tensor * x) {
    ggml_tensor * g = ggml_mul_mat(ctx, blk.ffn_gate, x);
    ggml_tensor * u = ggml_mul_mat(ctx, blk.ffn_up, x);
    return ggml_mul_mat(ctx, blk.ffn_down, ggml_mul(ctx, hp.silu ? ggml_silu(ctx, g) : gelu_tanh(ctx, g), u));
}

// One FlowBlock: time conditioning added in every block (sic), then gated residual sub-layers.
ggml_tensor * block(const flas_pass & p, int step, int b, ggml_tensor * h, ggml_tensor * e) {
    const flas_flow_hparams & hp = p.flow.hp;
    const flas_flow_block & blk = p.flow.blocks[b];
    ggml_context * ctx = p.ctx;
    h = ggml_add(ctx, h, e);
    if (hp.has_cross_attn) {
        ggml_tensor * y = cross_attention(p, blk, b, norm(ctx, h, blk.cross_norm, hp.rms_eps));
        h = ggml_add(ctx, h, ggml_mul(ctx, norm(ctx, y, blk.cross_post_norm, hp.rms_eps), blk.cross_gate));
    }
    if (hp.has_self_attn) {
        ggml_tensor * y = self_attention(p, blk, step, b, norm(ctx, h, blk.attn_norm, hp.rms_eps));
        h = ggml_add(ctx, h, ggml_mul(ctx, norm(ctx, y, blk.attn_post_norm, hp.rms_eps), blk.attn_gate));
    }
    if (hp.has_mlp) {
        ggml_tensor * y = mlp(ctx, hp, blk, norm(ctx, h, blk.ffn_norm, hp.rms_eps));
        h = ggml_add(ctx, h, ggml_mul(ctx, norm(ctx, y, blk.ffn_post_norm, hp.rms_eps), blk.ffn_res_gate));
    }
    return h;
}

}  // namespace

int flas_pass::rows_at(int step) const {
    int n = 0;
    for (const flas_segment & s : segs) {
        n += s.n_steps > step ? s.n : 0;
    }
    return n;
}

ggml_tensor * flas_build_euler(const flas_pass & p, ggml_tensor * h0) {
    const flas_flow_hparams & hp = p.flow.hp;
    ggml_context * ctx = p.ctx;
    const int R = p.n_rows;
    ggml_tensor * h = h0;
    for (int step = 0; step < p.n_steps_max(); ++step) {
        const int n = p.rows_at(step);
        ggml_tensor * idx = ggml_view_1d(ctx, p.time_idx, n, (size_t) step * R * ggml_element_size(p.time_idx));
        ggml_tensor * e  = ggml_get_rows(ctx, p.concepts.time_emb, idx);             // [H, n]
        ggml_tensor * hs = n == R ? h : ggml_view_2d(ctx, h, hp.n_embd, n, h->nb[1], 0);
        ggml_tensor * x  = hs;
        for (int b = 0; b < hp.n_block; ++b) {
            x = block(p, step, b, x, e);
        }
        // v = flow(h) - h;  h <- h + dt * v, each row with its own dt
        ggml_tensor * dt = ggml_view_2d(ctx, p.dt, 1, n, p.dt->nb[1], 0);
        hs = ggml_add(ctx, hs, ggml_mul(ctx, ggml_sub(ctx, x, hs), dt));
        h = n == R ? hs : ggml_concat(ctx, hs, ggml_view_2d(ctx, h, hp.n_embd, R - n, h->nb[1], (size_t) n * h->nb[1]), 1);
    }
    return h;
}

ggml_tensor * flas_build_time_embedding(ggml_context * ctx, const flas_flow & flow, ggml_tensor * sinusoids) {
    ggml_tensor * x = ggml_add(ctx, ggml_mul_mat(ctx, flow.time_in_w, sinusoids), flow.time_in_b);
    x = ggml_silu(ctx, x);
    return ggml_add(ctx, ggml_mul_mat(ctx, flow.time_out_w, x), flow.time_out_b);
}

void flas_build_concept_kv(ggml_context * ctx, ggml_cgraph * gf, const flas_flow & flow, const flas_concept_state & cs,
                           int b, int slot, ggml_tensor * c, ggml_tensor * pos_c) {
    const flas_flow_hparams & hp = flow.hp;
    const flas_flow_block & blk = flow.blocks[b];
    const int64_t K = c->ne[1];
    const int64_t kv_dim = (int64_t) hp.n_head_kv * hp.head_dim;
    ggml_tensor * k = ggml_reshape_3d(ctx, ggml_mul_mat(ctx, blk.cross_k, c), hp.head_dim, hp.n_head_kv, K);
    k = ggml_mul(ctx, ggml_rms_norm(ctx, k, hp.rms_eps), blk.cross_k_norm);
    k = ggml_permute(ctx, rope(ctx, flow, k, pos_c), 0, 2, 1, 3);       // [D, K, nKV]
    ggml_tensor * v = ggml_mul_mat(ctx, blk.cross_v, c);              // [nKV*D, K]
    ggml_tensor * kc = cs.k[b];
    ggml_tensor * vt = cs.vt[b];
    const size_t key0 = (size_t) slot * cs.k_max;
    ggml_tensor * k_dst = ggml_view_3d(ctx, kc, hp.head_dim, K, hp.n_head_kv, kc->nb[1], kc->nb[2], key0 * kc->nb[1]);
    ggml_tensor * v_dst = ggml_view_2d(ctx, vt, K, kv_dim, vt->nb[1], key0 * ggml_element_size(vt));
    ggml_build_forward_expand(gf, ggml_cpy(ctx, k, k_dst));
    ggml_build_forward_expand(gf, ggml_cpy(ctx, ggml_transpose(ctx, v), v_dst));
}

void flas_build_folded_values(ggml_context * ctx, ggml_cgraph * gf, const flas_flow & flow, const flas_concept_state & cs,
                              int b, int slot, int K, int seq, ggml_tensor * head_eye) {
    const flas_flow_hparams & hp = flow.hp;
    const int D = hp.head_dim, nH = hp.n_head, nKV = hp.n_head_kv;
    ggml_tensor * vt = cs.vt[b];
    ggml_tensor * v = ggml_view_3d(ctx, vt, K, D, nKV, vt->nb[1], vt->nb[2], (size_t) slot * cs.k_max * ggml_element_size(vt));
    v = ggml_cont(ctx, ggml_permute(ctx, v, 1, 0, 2, 3));                            // [D, K, nKV]
    // query head h = g*(nH/nKV) + i reads KV head g
    v = ggml_repeat_4d(ctx, ggml_reshape_4d(ctx, v, D, K, 1, nKV), D, K, nH / nKV, nKV);
    // x[(h', d), (j, h)] = v[d, j, h] if h' == h else 0: cross_out times x is every head's
    // values through that head's slice of cross_out, in one product
    ggml_tensor * x = ggml_repeat_4d(ctx, ggml_reshape_4d(ctx, v, D, 1, K, nH), D, nH, K, nH);
    x = ggml_reshape_2d(ctx, ggml_mul(ctx, x, head_eye), (int64_t) D * nH, (int64_t) K * nH);
    ggml_tensor * u = ggml_mul_mat(ctx, flow.blocks[b].cross_out, x);               // [H, K*nH]
    ggml_tensor * uo = cs.uo[b];
    const int64_t KH = (int64_t) K * nH;
    ggml_tensor * dst = ggml_view_2d(ctx, uo, KH, hp.n_embd, KH * ggml_element_size(uo), (size_t) seq * uo->nb[1]);
    ggml_build_forward_expand(gf, ggml_cpy(ctx, ggml_transpose(ctx, u), dst));       // [K*nH, H]
}

size_t flas_graph_max_nodes(const flas_flow & flow, int n_steps, int n_seg) {
    return (size_t) n_steps * (size_t) flow.hp.n_block * (96 + 48 * (size_t) n_seg) + (size_t) n_steps * 16 + 64;
}

ggml_context_ptr flas_graph_context(size_t n_nodes) {
    ggml_init_params ip = { n_nodes * ggml_tensor_overhead() + ggml_graph_overhead_custom(n_nodes, false), nullptr, true };
    return ggml_context_ptr(ggml_init(ip));
}

void flas_compute_once(ggml_backend_t backend, ggml_cgraph * gf, const std::function<void()> & set_inputs) {
    ggml_gallocr_ptr allocr(ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend)));
    if (!ggml_gallocr_alloc_graph(allocr.get(), gf)) {
        throw std::runtime_error("cannot allocate a flow compute buffer");
    }
    set_inputs();
    if (ggml_backend_graph_compute(backend, gf) != GGML_STATUS_SUCCESS) {
        throw std::runtime_error(std::string("a flow graph failed to compute on ") + ggml_backend_name(backend));
    }
}

// One flow pass in the eval callback: the steered rows of every sequence in the batch go
// through N Euler steps in one graph on the flow's backend (FLAS_SPEC.md 3). Projections and
// MLPs read the weights once for all rows; each row is conditioned on its own sequence's
// time embeddings, step size and concept; each sequence attends only to its own caches.
#include "flas-graph.h"
#include "flas-steering.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

// The graph of one pass and the inputs it reads.
struct flas_steering::flow_pass {
    ggml_context_ptr ctx;
    ggml_cgraph * gf = nullptr;
    flas_pass p;
    std::vector<flas_seq_rows> order;   // the steered rows, sorted by N, descending
    ggml_tensor * rows = nullptr, * gather = nullptr, * scatter = nullptr, * out = nullptr;
    ggml_tensor * sums = nullptr;     // [1, R]: each steered row's sum, NaN or Inf if the row holds one
};

// One builder for the worst-case reservations and every real pass, so they cannot drift apart.
flas_steering::flow_pass flas_steering::build_flow_pass(const std::vector<flas_seq_rows> & steered, int n_all, pass_shape shape) {
    const flas_flow_hparams & hp = flow_.hp;

    // segments sorted by N, descending: the rows still integrating at step k are a prefix; then
    // by concept, so that sequences of one concept make one run
    std::vector<flas_seq_rows> order = steered;
    std::stable_sort(order.begin(), order.end(), [&](const flas_seq_rows & a, const flas_seq_rows & b) {
        const flas_seq_steering & sa = seqs_[a.seq], & sb = seqs_[b.seq];
        return sa.n_steps != sb.n_steps ? sa.n_steps > sb.n_steps : sa.slot < sb.slot;
    });
    int R = 0;
    for (const flas_seq_rows & e : order) {
        R += e.n;
    }
    const int n_steps_max = seqs_[order.front().seq].n_steps;

    const size_t max_nodes = flas_graph_max_nodes(flow_, n_steps_max, (int) order.size()) + 4 * order.size() + 32;
    const size_t meta = max_nodes * ggml_tensor_overhead() + ggml_graph_overhead_custom(max_nodes, false);
    if (graph_meta_.size() < meta) {
        graph_meta_.resize(meta);
    }
    ggml_init_params ip = { graph_meta_.size(), graph_meta_.data(), /*no_alloc =*/ true };
    ggml_context_ptr ctx_owner(ggml_init(ip));
    ggml_context * ctx = ctx_owner.get();
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, max_nodes, false);

    auto input = [&](ggml_tensor * x) { ggml_set_input(x); return x; };
    flow_pass fp{std::move(ctx_owner), gf, flas_pass{ctx, gf, flow_, concept_, {}, R}, order};
    flas_pass & p = fp.p;
    p.pos      = input(ggml_new_tensor_1d(ctx, GGML_TYPE_I32, R));
    p.time_idx = input(ggml_new_tensor_1d(ctx, GGML_TYPE_I32, (int64_t) R * n_steps_max));
    p.dt       = input(ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1, R));

    // each sequence's rows: a segment, and a run of its concept (or part of one); a sequence folds
    // when its concept is short enough and it holds that concept's folded values
    // (flas_fold_max_keys, compute_folded_values)
    int r0 = 0;
    for (const flas_seq_rows & e : order) {
        flas_concept_run run;
        run.r0 = r0;
        run.n  = e.n;
        if (shape == pass_shape::worst_unfolded) {  // the sequence may hold no concept yet
            run.n_keys = concept_.k_max;
        } else if (shape == pass_shape::worst_folded) {
            run.n_keys   = concept_.fold_keys;
            run.fold_seq = e.seq;
        } else {
            const flas_seq_steering & s = seqs_[e.seq];
            const flas_concept_entry & entry = concepts_.slots[s.slot];
            run.key0     = s.slot * concept_.k_max;
            run.n_keys   = entry.n_tokens;
            run.fold_seq = entry.n_tokens <= concept_.fold_keys && s.values_encoding == entry.encoding ? e.seq : -1;
        }
        flas_concept_run * last = p.runs.empty() ? nullptr : &p.runs.back();
        if (last != nullptr && last->key0 == run.key0 && (last->fold_seq >= 0) == (run.fold_seq >= 0)) {
            last->n += e.n;  // the same concept: its folded values are the same in every sequence holding them
        } else {
            p.runs.push_back(run);
        }

        flas_segment sg;
        sg.r0 = r0;
        sg.n  = e.n;
        sg.p0 = e.p0;
        sg.n_steps = seqs_[e.seq].n_steps;
        sg.cache = &seqs_[e.seq].cache;
        if (e.n > 1 && hp.has_self_attn) {  // a single row sees every cached position: no mask
            sg.mask = input(ggml_new_tensor_2d(ctx, GGML_TYPE_F32, e.p0 + e.n, e.n));
        }
        p.segs.push_back(sg);
        r0 += e.n;
    }

    // gather the steered rows, integrate, and scatter them back among the untouched ones
    fp.rows    = input(ggml_new_tensor_2d(ctx, GGML_TYPE_F32, hp.n_embd, n_all));
    fp.gather  = input(ggml_new_tensor_1d(ctx, GGML_TYPE_I32, R));
    fp.scatter = input(ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_all));
    ggml_tensor * h = flas_build_euler(p, ggml_get_rows(ctx, fp.rows, fp.gather));
    fp.out = ggml_get_rows(ctx, ggml_concat(ctx, h, fp.rows, 1), fp.scatter);
    fp.sums = ggml_sum_rows(ctx, h);  // R floats read back: garbage never leaves the pass unnoticed
    ggml_set_output(fp.out);
    ggml_set_output(fp.sums);
    ggml_set_output(fp.rows);  // kept: the rows of a sequence whose steering fails are put back
    ggml_build_forward_expand(gf, fp.out);
    ggml_build_forward_expand(gf, fp.sums);
    return fp;
}

// The compute buffer, reserved for the largest pass a sequence steered like `seq` can make (a
// full pass at the end of its context, the longest concept): reserved once, it is not
// reallocated (and the freed buffers left resident) as positions grow. Both ways of attending:
// a folded run holds its scores twice at once (the softmax and its copy), which with a small
// head dimension outweighs an unfolded run; a reservation only ever grows the buffer.
void flas_steering::reserve_flow(int seq) {
    const int rows = std::min(FLAS_MAX_PASS_ROWS, params_.n_ctx_seq);
    for (pass_shape shape : {pass_shape::worst_unfolded, pass_shape::worst_folded}) {
        if (shape == pass_shape::worst_folded && concept_.fold_keys == 0) {
            continue;
        }
        flow_pass fp = build_flow_pass({{seq, 0, rows, params_.n_ctx_seq - rows}}, params_.n_batch, shape);
        if (!ggml_gallocr_reserve(allocr_.get(), fp.gf)) {
            throw std::runtime_error("cannot reserve the flow's compute buffer on " + backend_name());
        }
    }
}

void flas_steering::run_flow(ggml_tensor * t, const std::vector<flas_seq_rows> & steered, flas_pass_failures & failed) {
    const int n_all = (int) t->ne[1];
    flow_pass fp = build_flow_pass(steered, n_all, pass_shape::real);
    const flas_pass & p = fp.p;
    const std::vector<flas_seq_rows> & order = fp.order;
    const int R = p.n_rows;
    const int n_steps_max = p.n_steps_max();
    if (!ggml_gallocr_alloc_graph(allocr_.get(), fp.gf)) {
        throw std::runtime_error("cannot allocate the flow's compute buffer on " + backend_name());
    }

    // inputs (an ablated flow may not read some of them: those are not allocated)
    auto set = [](ggml_tensor * x, const void * data) {
        if (x != nullptr && x->buffer != nullptr) {
            ggml_backend_tensor_set(x, data, 0, ggml_nbytes(x));
        }
    };
    std::vector<int32_t> pos(R), time_idx((size_t) R * n_steps_max), gather_idx(R), scatter_idx(n_all);
    std::vector<float> dt(R);
    for (int i = 0; i < n_all; ++i) {
        scatter_idx[i] = R + i;  // untouched: the row itself, after the R steered rows
    }
    int r0 = 0;
    for (const flas_seq_rows & e : order) {
        const flas_seq_steering & s = seqs_[e.seq];
        for (int j = 0; j < e.n; ++j) {
            const int r = r0 + j;
            pos[r] = e.p0 + j;
            dt[r]  = s.flowtime / s.n_steps;
            gather_idx[r] = e.row0 + j;
            scatter_idx[e.row0 + j] = r;
            for (int k = 0; k < n_steps_max; ++k) {  // steps past its N are never read
                time_idx[(size_t) k * R + r] = e.seq * FLAS_MAX_STEPS + std::min(k, s.n_steps - 1);
            }
        }
        r0 += e.n;
    }
    set(p.pos, pos.data());
    set(p.time_idx, time_idx.data());
    set(p.dt, dt.data());
    set(fp.gather, gather_idx.data());
    set(fp.scatter, scatter_idx.data());
    for (const flas_segment & s : p.segs) {
        if (s.mask != nullptr && s.mask->buffer != nullptr) {
            const int n_kv = s.p0 + s.n;
            std::vector<float> m((size_t) n_kv * s.n, 0.0f);
            for (int i = 0; i < s.n; ++i) {
                std::fill(m.begin() + (size_t) i * n_kv + s.p0 + i + 1, m.begin() + (size_t) (i + 1) * n_kv, -INFINITY);
            }
            set(s.mask, m.data());
        }
    }

    ggml_backend_tensor_copy(t, fp.rows);
    if (ggml_backend_graph_compute(backend_.get(), fp.gf) != GGML_STATUS_SUCCESS) {
        throw std::runtime_error("the flow graph failed to compute on " + backend_name());
    }
    std::vector<float> sums(R);
    ggml_backend_tensor_get(fp.sums, sums.data(), 0, R * sizeof(float));
    ggml_backend_tensor_copy(fp.out, t);
    // a sequence with a non-finite row gets its unsteered rows back (NaN in llama.cpp's shared KV
    // cache would reach the other sequences through masked attention) and fails alone
    const size_t row_bytes = (size_t) flow_.hp.n_embd * sizeof(float);
    r0 = 0;
    for (const flas_seq_rows & e : order) {
        bool finite = true;
        for (int j = 0; j < e.n && finite; ++j) {
            finite = std::isfinite(sums[r0 + j]);
        }
        if (!finite) {  // rare: the staging row is allocated only here, not on every pass
            std::vector<float> row((size_t) flow_.hp.n_embd);
            for (int j = 0; j < e.n; ++j) {
                ggml_backend_tensor_get(fp.rows, row.data(), (size_t) (e.row0 + j) * row_bytes, row_bytes);
                ggml_backend_tensor_set(t, row.data(), (size_t) (e.row0 + j) * row_bytes, row_bytes);
            }
            failed.seqs.push_back(e.seq);
            failed.why = "the flow produced non-finite activations (NaN or Inf) at layer " +
                       std::to_string(flow_.hp.layer) + "; the flow's weights or the input rows are out of range "
                       "for it (a damaged or mismatched flow, or an extreme flowtime)";
        }
        r0 += e.n;
    }
}

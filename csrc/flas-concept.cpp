// The parts of the runtime that depend only on the concept or on (T, N): concept encoding
// through the base model, cross-attention K/V, time embeddings, and buffer sizing.
#include "flas-graph.h"
#include "flas-runtime.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

extern bool flas_log_quiet;

static bool concept_callback(ggml_tensor * t, bool ask, void * user_data) {
    return static_cast<flas_runtime *>(user_data)->on_concept_node(t, ask);
}

// Only layers 0 and 1 matter: stop the side pass once l_out-1 is captured.
static bool concept_abort(void * user_data) {
    return static_cast<flas_runtime *>(user_data)->concept_captured();
}

// Runs a small one-off graph (concept K/V, time embeddings) on the flow backend.
static void compute_once(ggml_backend_t backend, ggml_cgraph * gf, const std::function<void()> & set_inputs) {
    ggml_gallocr_ptr allocr(ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend)));
    if (!ggml_gallocr_alloc_graph(allocr.get(), gf)) {
        throw std::runtime_error("cannot allocate a flow compute buffer");
    }
    set_inputs();
    if (ggml_backend_graph_compute(backend, gf) != GGML_STATUS_SUCCESS) {
        throw std::runtime_error(std::string("a flow graph failed to compute on ") + ggml_backend_name(backend));
    }
}

static ggml_context_ptr graph_context(size_t n_nodes) {
    ggml_init_params ip = { n_nodes * ggml_tensor_overhead() + ggml_graph_overhead_custom(n_nodes, false), nullptr, true };
    return ggml_context_ptr(ggml_init(ip));
}

void flas_runtime::init_concept_context() {
    const int n_ctx = std::max(256, flow_.hp.concept_max_len);
    llama_context_params cparams = context_params(n_ctx, n_ctx);
    cparams.cb_eval = concept_callback;
    cparams.cb_eval_user_data = this;
    cparams.abort_callback = concept_abort;
    cparams.abort_callback_data = this;
    ctx_concept_.reset(llama_init_from_model(model_.get(), cparams));
    if (!ctx_concept_) {
        throw std::runtime_error("llama.cpp could not create the concept-encoding context");
    }
}

bool flas_runtime::on_concept_node(ggml_tensor * t, bool ask) noexcept {
    if (strcmp(t->name, "l_out-1") != 0) {
        return false;
    }
    if (ask) {
        return true;
    }
    if (t->type == GGML_TYPE_F32 && t->ne[0] == flow_.hp.n_embd && ggml_is_contiguous(t)) {
        concept_rows_.resize(ggml_nelements(t));
        ggml_backend_tensor_get(t, concept_rows_.data(), 0, ggml_nbytes(t));
        concept_captured_ = true;
    }
    return true;
}

int flas_runtime::set_concept(const std::string & text) {
    const flas_flow_hparams & hp = flow_.hp;
    std::vector<llama_token> tokens = tokenize(text, /*add_special =*/ true, /*parse_special =*/ true);
    const int n_total = (int) tokens.size();
    if (text.find_first_not_of(" \t\r\n") == std::string::npos || tokens.empty()) {
        throw std::invalid_argument("the concept is empty; describe it in words, e.g. \"Talk like a pirate\"");
    }
    tokens.resize(std::min(n_total, hp.concept_max_len));  // as trained: the first concept_max_len tokens
    const int K = (int) tokens.size();
    if (!ctx_concept_) {
        init_concept_context();
    }
    llama_memory_clear(llama_get_memory(ctx_concept_.get()), true);
    concept_captured_ = false;
    flas_log_quiet = true;  // the abort after layer 1 is logged as a failed compute
    const int32_t ret = llama_decode(ctx_concept_.get(), llama_batch_get_one(tokens.data(), K));
    flas_log_quiet = false;
    if (!concept_captured_ || (ret != 0 && ret != 2) || (int) concept_rows_.size() != K * hp.n_embd) {
        throw std::runtime_error("concept encoding failed (llama_decode status " + std::to_string(ret) + ")");
    }

    // c = final_norm(layer1(layer0(...))) in float32, Gemma form (the weight holds 1 + w)
    std::vector<float> c(concept_rows_.size());
    for (int r = 0; r < K; ++r) {
        const float * x = concept_rows_.data() + (size_t) r * hp.n_embd;
        double ss = 0.0;
        for (int i = 0; i < hp.n_embd; ++i) {
            ss += (double) x[i] * x[i];
        }
        const float scale = (float) (1.0 / std::sqrt(ss / hp.n_embd + hp.rms_eps));
        for (int i = 0; i < hp.n_embd; ++i) {
            c[(size_t) r * hp.n_embd + i] = x[i] * scale * output_norm_[i];
        }
    }

    if (hp.has_cross_attn) {
        const size_t n_nodes = 32 * (size_t) hp.n_block + 16;
        ggml_context_ptr ctx = graph_context(n_nodes);
        ggml_cgraph * gf = ggml_new_graph_custom(ctx.get(), n_nodes, false);
        ggml_tensor * c_in = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, hp.n_embd, K);
        ggml_tensor * pos  = ggml_new_tensor_1d(ctx.get(), GGML_TYPE_I32, K);
        ggml_set_input(c_in);
        ggml_set_input(pos);
        concept_.n_tokens = K;
        for (int b = 0; b < hp.n_block; ++b) {
            flas_build_concept_kv(ctx.get(), gf, flow_, concept_, b, c_in, pos);
        }
        std::vector<int32_t> positions(K);
        for (int i = 0; i < K; ++i) {
            positions[i] = i;  // the concept's own positions
        }
        compute_once(backend_.get(), gf, [&] {
            ggml_backend_tensor_set(c_in, c.data(), 0, ggml_nbytes(c_in));
            ggml_backend_tensor_set(pos, positions.data(), 0, ggml_nbytes(pos));
        });
    }
    concept_.n_tokens = K;
    reset();
    return n_total;
}

void flas_runtime::set_steering(float flowtime, int n_steps) {
    if (!std::isfinite(flowtime) || flowtime < 0.0f) {
        throw std::invalid_argument("flowtime must be a finite number >= 0, got " + std::to_string(flowtime));
    }
    if (n_steps < 1 || n_steps > FLAS_MAX_STEPS) {
        throw std::invalid_argument("n_steps must be in 1.." + std::to_string(FLAS_MAX_STEPS) + ", got " +
                                    std::to_string(n_steps));
    }
    flowtime_ = flowtime;
    n_steps_  = n_steps;
    if (cache_.n_steps < n_steps) {
        flas_flow_cache_init(cache_, flow_, backend_.get(), n_ctx_, n_steps,
                             params_.exact ? GGML_TYPE_F32 : GGML_TYPE_F16);
        reserve_compute();
    }
    compute_time_embeddings();
    reset();
}

// Columns 0..N-1 of the concept state's time_emb: time_embed(k * T / N) (FLAS_SPEC.md 4).
void flas_runtime::compute_time_embeddings() {
    const flas_flow_hparams & hp = flow_.hp;
    const int F = hp.time_freq_dim, half = F / 2, N = n_steps_;
    const float dt = flowtime_ / N;
    std::vector<float> sinusoids((size_t) F * N);
    for (int k = 0; k < N; ++k) {
        const float t = k * dt;
        for (int j = 0; j < half; ++j) {
            const float freq = expf((float) -std::log(10000.0) * (float) j / (float) half);
            sinusoids[(size_t) k * F + j]        = sinf(t * freq);  // sin first
            sinusoids[(size_t) k * F + half + j] = cosf(t * freq);
        }
    }
    ggml_context_ptr ctx = graph_context(32);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx.get(), 32, false);
    ggml_tensor * s = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, F, N);
    ggml_set_input(s);
    ggml_tensor * emb = flas_build_time_embedding(ctx.get(), flow_, s);
    ggml_tensor * dst = ggml_view_2d(ctx.get(), concept_.time_emb, hp.n_embd, N, concept_.time_emb->nb[1], 0);
    ggml_build_forward_expand(gf, ggml_cpy(ctx.get(), emb, dst));
    compute_once(backend_.get(), gf, [&] { ggml_backend_tensor_set(s, sinusoids.data(), 0, ggml_nbytes(s)); });
}

// The compute buffer is sized once for the worst pass: a full batch at the end of the context
// with the longest concept.
void flas_runtime::reserve_compute() {
    const int n  = std::min(params_.n_batch, n_ctx_);
    const size_t max_nodes = flas_graph_max_nodes(flow_, cache_.n_steps);
    graph_meta_.resize(max_nodes * ggml_tensor_overhead() + ggml_graph_overhead_custom(max_nodes, false));
    const int saved = concept_.n_tokens;
    concept_.n_tokens = flow_.hp.concept_max_len;
    pass_graph g = build_pass(n_ctx_ - n, n, cache_.n_steps, 1.0f);
    concept_.n_tokens = saved;
    if (!ggml_gallocr_reserve(allocr_.get(), g.gf)) {
        throw std::runtime_error("cannot reserve the flow's compute buffer on " + flow_backend());
    }
}

void flas_runtime::set_steer_hook(flas_steer_hook hook) {
    hook_ = std::move(hook);
    reset();
}

void flas_runtime::set_trace(bool on) {
    trace_ = on;
    trace_in_.clear();
    trace_out_.clear();
}

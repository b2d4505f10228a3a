// The concept encoder (flas-concept.h).
#include "flas-concept.h"

#include "flas-graph.h"
#include "flas-log.h"

#include "llama-cpp.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

static bool concept_callback(ggml_tensor * t, bool ask, void * user_data) {
    return static_cast<flas_concept_encoder *>(user_data)->on_node(t, ask);
}

// Stops the side pass once l_out-1 is captured.
static bool concept_abort(void * user_data) {
    return static_cast<flas_concept_encoder *>(user_data)->captured();
}

flas_concept_encoder::flas_concept_encoder(llama_model * model, const flas_flow & flow, ggml_backend_t backend,
                                           llama_context_params cparams, std::vector<float> output_norm)
    : model_(model), flow_(flow), backend_(backend), cparams_(cparams), output_norm_(std::move(output_norm)) {
    if ((int) output_norm_.size() != flow.hp.n_embd) {
        throw std::invalid_argument("the base model's final norm has " + std::to_string(output_norm_.size()) +
                                    " values, the flow's width is " + std::to_string(flow.hp.n_embd));
    }
}

bool flas_concept_encoder::on_node(ggml_tensor * t, bool ask) noexcept {
    if (strcmp(t->name, "l_out-1") != 0) {
        return false;
    }
    if (ask) {
        return true;
    }
    if (t->type == GGML_TYPE_F32 && t->ne[0] == flow_.hp.n_embd && ggml_is_contiguous(t)) {
        rows_.resize(ggml_nelements(t));
        ggml_backend_tensor_get(t, rows_.data(), 0, ggml_nbytes(t));
        captured_ = true;
    }
    return true;
}

std::vector<float> flas_concept_encoder::rows(std::vector<llama_token> tokens) {
    const flas_flow_hparams & hp = flow_.hp;
    const int K = (int) tokens.size();
    // a side context for this concept only: at most concept_max_len cells and one ubatch of that size
    llama_context_params cparams = cparams_;
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = hp.concept_max_len;
    cparams.n_seq_max = 1;
    cparams.cb_eval = concept_callback;
    cparams.cb_eval_user_data = this;
    cparams.abort_callback = concept_abort;  // only layers 0 and 1 matter
    cparams.abort_callback_data = this;
    llama_context_ptr ctx(llama_init_from_model(model_, cparams));
    if (!ctx) {
        throw std::runtime_error("llama.cpp could not create the concept-encoding context");
    }
    captured_ = false;
    flas_log_quiet = true;  // the abort after layer 1 is logged as a failed compute
    const int32_t ret = llama_decode(ctx.get(), llama_batch_get_one(tokens.data(), K));
    flas_log_quiet = false;
    if (!captured_ || (ret != 0 && ret != 2) || (int) rows_.size() != K * hp.n_embd) {
        throw std::runtime_error("concept encoding failed (llama_decode status " + std::to_string(ret) + ")");
    }
    // c = final_norm(layer1(layer0(...))) in float32, with the weight as the family stores it
    std::vector<float> c(rows_.size());
    for (int r = 0; r < K; ++r) {
        const float * x = rows_.data() + (size_t) r * hp.n_embd;
        double ss = 0.0;
        for (int i = 0; i < hp.n_embd; ++i) {
            ss += (double) x[i] * x[i];
        }
        const float scale = (float) (1.0 / std::sqrt(ss / hp.n_embd + hp.rms_eps));
        for (int i = 0; i < hp.n_embd; ++i) {
            c[(size_t) r * hp.n_embd + i] = x[i] * scale * output_norm_[i];
        }
    }
    return c;
}

void flas_concept_encoder::encode(std::vector<llama_token> tokens, flas_concept_state & state, int slot) {
    const flas_flow_hparams & hp = flow_.hp;
    const int K = (int) tokens.size();
    const std::vector<float> c = rows(std::move(tokens));
    if (hp.has_cross_attn) {
        const size_t n_nodes = 32 * (size_t) hp.n_block + 16;
        ggml_context_ptr gctx = flas_graph_context(n_nodes);
        ggml_cgraph * gf = ggml_new_graph_custom(gctx.get(), n_nodes, false);
        ggml_tensor * c_in = ggml_new_tensor_2d(gctx.get(), GGML_TYPE_F32, hp.n_embd, K);
        ggml_tensor * pos  = ggml_new_tensor_1d(gctx.get(), GGML_TYPE_I32, K);
        ggml_set_input(c_in);
        ggml_set_input(pos);
        for (int b = 0; b < hp.n_block; ++b) {
            flas_build_concept_kv(gctx.get(), gf, flow_, state, b, slot, c_in, pos);
        }
        std::vector<int32_t> positions(K);
        for (int i = 0; i < K; ++i) {
            positions[i] = i;  // the concept's own positions
        }
        flas_compute_once(backend_, gf, [&] {
            ggml_backend_tensor_set(c_in, c.data(), 0, ggml_nbytes(c_in));
            ggml_backend_tensor_set(pos, positions.data(), 0, ggml_nbytes(pos));
        });
    }
}

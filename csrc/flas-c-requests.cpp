// The C API (include/flas.h), part two: requests on the scheduler, their traces, the steer hook
// and the exclusive calls that drive sequences directly.
#include "flas-c.h"
#include "flas-rules.h"

#include <algorithm>
#include <cmath>

flas_model *& flas_exclusive_model() {
    static thread_local flas_model * model = nullptr;  // flas_seq_* work only there
    return model;
}

// The steering of params; n_steps 0 is default_steps. Checked by the engine (flas_steer_check).
static flas_steer steer_of(const struct flas_request_params & params, int default_steps) {
    flas_steer st;
    st.concept  = params.concept != nullptr ? params.concept : "";
    st.flowtime = flas_schedule::of(params);
    st.n_steps  = params.n_steps == 0 ? default_steps : params.n_steps;
    return st;
}

static flas_request engine_request(const flas_model & m, const struct flas_request_params & params) {
    flas_need(params.prompt != nullptr && params.n_prompt > 0, "the prompt has no tokens");
    flas_request r;
    r.prompt.assign(params.prompt, params.prompt + params.n_prompt);
    r.steer       = steer_of(params, m.flow_info.n_steps);
    r.max_tokens  = params.max_tokens;
    r.sampling    = params.sampling;
    r.trace       = params.trace;
    r.telemetry   = params.telemetry;
    r.logprobs    = params.logprobs;
    return r;
}

static flas_runtime & exclusive_runtime(flas_model * model, const char * fn) {
    flas_need(model != nullptr, "the model is NULL");
    if (flas_exclusive_model() != model) {
        throw std::invalid_argument(std::string(fn) + " works only inside flas_exclusive, on its thread");
    }
    return model->engine->runtime();
}

static int64_t copy_floats(const std::vector<float> & v, float * out, int64_t n_max) {
    flas_need(out != nullptr || n_max == 0, "out is NULL");
    return flas_copy_out(v, out, n_max);
}

// flas_poll and flas_poll_data: the update's tokens through put(update).
template <typename Put>
static int32_t poll(flas_model * model, uint64_t id, int32_t timeout_ms, bool has_out, int32_t n_max,
                    struct flas_result * result, const Put & put) {
    if (result != nullptr) {
        *result = {};
    }
    return flas_guarded([&] {
        flas_need(model != nullptr && result != nullptr && (has_out || n_max == 0),
                  "flas_poll: model, tokens and result must not be NULL");
        flas_need(n_max >= 0, "flas_poll: n_max must be >= 0");
        const flas_update u = model->engine->wait(id, std::max(0, timeout_ms), (size_t) n_max);
        put(u);
        if (u.done) {
            result->finish         = u.end.finish;
            result->status         = u.end.status;
            result->n_prompt       = u.end.n_prompt;
            result->n_cached       = u.end.n_cached;
            result->prompt_seconds = u.end.prompt_seconds;
            result->seconds        = u.end.seconds;
            if (u.end.finish == FLAS_FINISH_ERROR) {
                flas_error_slot() = u.end.error;
            }
        }
        return (int32_t) u.tokens.size();
    });
}

extern "C" {

struct flas_request_params flas_request_default_params(void) {
    const flas_request d;
    struct flas_request_params p;
    p.prompt      = nullptr;
    p.n_prompt    = 0;
    p.concept     = nullptr;
    p.flowtime    = 2.0f;
    p.schedule    = nullptr;
    p.n_schedule  = 0;
    p.n_steps     = 0;
    p.max_tokens  = d.max_tokens;
    p.sampling    = d.sampling;
    p.trace       = d.trace;
    p.telemetry   = d.telemetry;
    p.logprobs    = d.logprobs;
    return p;
}

int flas_submit(flas_model * model, const struct flas_request_params * params, uint64_t * id) {
    return flas_submit_many(model, params, 1, id);
}

int flas_submit_many(flas_model * model, const struct flas_request_params * params, int32_t n, uint64_t * ids) {
    return flas_guarded([&] {
        flas_need(model != nullptr && params != nullptr && ids != nullptr, "flas_submit: model, params and id must not be NULL");
        flas_need(n >= 1, "flas_submit_many: n must be >= 1");
        std::vector<flas_request> reqs;
        for (int32_t i = 0; i < n; ++i) {
            try {
                reqs.push_back(engine_request(*model, params[i]));
            } catch (const std::invalid_argument & e) {
                throw std::invalid_argument(n == 1 ? std::string("flas_submit: ") + e.what()
                                                   : "request " + std::to_string(i) + ": " + e.what());
            }
        }
        const std::vector<uint64_t> got = n == 1 ? std::vector<uint64_t>{model->engine->submit(std::move(reqs[0]))}
                                                 : model->engine->submit_many(std::move(reqs));
        std::copy(got.begin(), got.end(), ids);
        return (int) FLAS_OK;
    });
}

int32_t flas_poll(flas_model * model, uint64_t id, int32_t timeout_ms, int32_t * tokens, int32_t n_max,
                  struct flas_result * result) {
    return poll(model, id, timeout_ms, tokens != nullptr, n_max, result, [&](const flas_update & u) {
        for (size_t i = 0; i < u.tokens.size(); ++i) {
            tokens[i] = u.tokens[i].token;
        }
    });
}

int32_t flas_poll_data(flas_model * model, uint64_t id, int32_t timeout_ms, struct flas_token_data * tokens,
                       int32_t n_max, struct flas_result * result) {
    return poll(model, id, timeout_ms, tokens != nullptr, n_max, result,
                [&](const flas_update & u) { std::copy(u.tokens.begin(), u.tokens.end(), tokens); });
}

int flas_request_steer(flas_model * model, uint64_t id, const struct flas_request_params * params, int32_t * at) {
    if (at != nullptr) {
        *at = -1;
    }
    return flas_guarded([&] {
        flas_need(model != nullptr && params != nullptr, "flas_request_steer: model and params must not be NULL");
        const int first = model->engine->steer(id, steer_of(*params, model->flow_info.n_steps));
        if (at != nullptr) {
            *at = first;
        }
        return (int) FLAS_OK;
    });
}

int flas_wait_any(flas_model * model, const uint64_t * ids, int32_t n, int32_t timeout_ms, uint64_t * ready) {
    if (ready != nullptr) {
        *ready = 0;
    }
    return flas_guarded([&] {
        flas_need(model != nullptr && ready != nullptr && (ids != nullptr || n == 0),
                  "flas_wait_any: model, ids and ready must not be NULL");
        flas_need(n >= 0, "flas_wait_any: n must be >= 0");
        *ready = model->engine->wait_any(std::vector<uint64_t>(ids, ids + n), std::max(0, timeout_ms));
        return (int) FLAS_OK;
    });
}

int flas_cancel(flas_model * model, uint64_t id) {
    return flas_guarded([&] {
        flas_need(model != nullptr, "flas_cancel: model is NULL");
        model->engine->cancel(id);
        return (int) FLAS_OK;
    });
}

int flas_release(flas_model * model, uint64_t id) {
    return flas_guarded([&] {
        flas_need(model != nullptr, "flas_release: model is NULL");
        model->engine->release(id);
        return (int) FLAS_OK;
    });
}

int64_t flas_trace(flas_model * model, uint64_t id, enum flas_trace_kind kind, float * out, int64_t n_max) {
    return flas_guarded([&] {
        flas_need(model != nullptr, "flas_trace: model is NULL");
        return copy_floats(model->engine->trace(id, kind), out, n_max);
    });
}

int flas_model_stats(const flas_model * model, struct flas_stats * out) {
    return flas_guarded([&] {
        flas_need(model != nullptr && out != nullptr, "flas_model_stats: model and out must not be NULL");
        const flas_engine_stats st = model->engine->stats();
        out->n_active         = st.n_active;
        out->n_queued         = st.n_queued;
        out->n_decoded        = st.n_decoded;
        out->n_decode_calls   = st.n_steps;
        out->concepts_encoded = st.concepts.concepts_encoded;
        out->concept_hits     = st.concepts.concept_hits;
        out->concepts_cached  = st.concepts.concepts_cached;
        return (int) FLAS_OK;
    });
}

int flas_set_steer_hook(flas_model * model, flas_steer_hook hook, void * user_data) {
    return flas_guarded([&] {
        flas_need(model != nullptr, "flas_set_steer_hook: model is NULL");
        flas_row_hook row_hook;
        if (hook != nullptr) {
            const int32_t n_embd = model->flow_info.n_embd;
            row_hook = [hook, user_data, n_embd](const float * in, float * out, int n, int pos0) {
                if (!hook(in, out, n, n_embd, pos0, user_data)) {
                    throw std::runtime_error("the steer hook failed (it returned false)");
                }
            };
        }
        flas_on_runtime(model, [&](flas_runtime & rt) { rt.set_steer_hook(row_hook); });
        return (int) FLAS_OK;
    });
}

int flas_exclusive(flas_model * model, flas_exclusive_fn fn, void * user_data) {
    return flas_guarded([&] {
        flas_need(model != nullptr && fn != nullptr, "flas_exclusive: model and fn must not be NULL");
        flas_need(flas_exclusive_model() == nullptr, "flas_exclusive: already inside flas_exclusive on this thread");
        model->engine->run_exclusive([&] {
            struct scope {
                explicit scope(flas_model * m) { flas_exclusive_model() = m; }
                ~scope() { flas_exclusive_model() = nullptr; }
            } in(model);
            fn(model, user_data);
        });
        return (int) FLAS_OK;
    });
}

int flas_check_steering(const char * concept, float flowtime, int32_t n_steps) {
    return flas_guarded([&] {
        flas_steering_check(concept != nullptr && concept[0] != '\0', flowtime, n_steps);
        return (int) FLAS_OK;
    });
}

int flas_check_request(const struct flas_request_params * params) {
    return flas_guarded([&] {
        flas_need(params != nullptr, "flas_check_request: params is NULL");
        // n_steps 0: the flow's default, valid by construction
        flas_request_check(steer_of(*params, 1), params->max_tokens, params->logprobs, params->sampling);
        return (int) FLAS_OK;
    });
}

int32_t flas_seq_set_steering(flas_model * model, int32_t seq, const char * concept, float flowtime, int32_t n_steps) {
    return flas_guarded([&] {
        flas_runtime & rt = exclusive_runtime(model, "flas_seq_set_steering");
        return (int32_t) rt.set_steering(seq, concept != nullptr ? concept : "", flowtime, n_steps);
    });
}

int flas_seq_set_flowtime(flas_model * model, int32_t seq, float flowtime) {
    return flas_guarded([&] {
        exclusive_runtime(model, "flas_seq_set_flowtime").set_flowtime(seq, flowtime);
        return (int) FLAS_OK;
    });
}

int flas_seq_decode(flas_model * model, int32_t n_entries, const int32_t * seqs, const int32_t * const * tokens,
                    const int32_t * n_tokens) {
    return flas_guarded([&] {
        flas_runtime & rt = exclusive_runtime(model, "flas_seq_decode");
        flas_need(n_entries >= 1 && seqs != nullptr && tokens != nullptr && n_tokens != nullptr,
                  "flas_seq_decode: no entries, or seqs, tokens or n_tokens is NULL");
        std::vector<flas_seq_tokens> batch;
        for (int32_t i = 0; i < n_entries; ++i) {
            flas_need(tokens[i] != nullptr && n_tokens[i] > 0, "flas_seq_decode: an entry has no tokens");
            batch.push_back({seqs[i], std::vector<llama_token>(tokens[i], tokens[i] + n_tokens[i])});
        }
        rt.decode(batch);
        return (int) FLAS_OK;
    });
}

int flas_seq_reset(flas_model * model, int32_t seq) {
    return flas_guarded([&] {
        exclusive_runtime(model, "flas_seq_reset").reset(seq);
        return (int) FLAS_OK;
    });
}

int flas_seq_rewind(flas_model * model, int32_t seq, int32_t n_keep) {
    return flas_guarded([&] {
        exclusive_runtime(model, "flas_seq_rewind").rewind(seq, n_keep);
        return (int) FLAS_OK;
    });
}

int flas_seq_set_trace(flas_model * model, int32_t seq, bool on) {
    return flas_guarded([&] {
        exclusive_runtime(model, "flas_seq_set_trace").set_trace(seq, on);
        return (int) FLAS_OK;
    });
}

int flas_seq_set_telemetry(flas_model * model, int32_t seq, bool on) {
    return flas_guarded([&] {
        exclusive_runtime(model, "flas_seq_set_telemetry").set_telemetry(seq, on);
        return (int) FLAS_OK;
    });
}

int flas_seq_displacement(flas_model * model, int32_t seq, float * out) {
    return flas_guarded([&] {
        flas_need(out != nullptr, "flas_seq_displacement: out is NULL");
        *out = exclusive_runtime(model, "flas_seq_displacement").take_displacement(seq);
        return (int) FLAS_OK;
    });
}

int64_t flas_seq_get(flas_model * model, int32_t seq, enum flas_trace_kind kind, float * out, int64_t n_max) {
    return flas_guarded([&] {
        flas_runtime & rt = exclusive_runtime(model, "flas_seq_get");
        switch (kind) {
            case FLAS_TRACE_UNSTEERED: return copy_floats(rt.trace_unsteered(seq), out, n_max);
            case FLAS_TRACE_STEERED:   return copy_floats(rt.trace_steered(seq), out, n_max);
            case FLAS_TRACE_LOGITS:    return copy_floats(rt.logits(seq), out, n_max);
        }
        throw std::invalid_argument("flas_seq_get: unknown kind " + std::to_string((int) kind));
    });
}

}  // extern "C"

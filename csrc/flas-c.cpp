// The C API (include/flas.h) over the engine and the runtime: every exception is caught here
// and becomes a status code plus a thread-local message.
#include "flas.h"

#include "flas-engine.h"
#include "flas-info.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>

struct flas_model {
    std::unique_ptr<flas_engine> engine;
    std::mutex mutex;  // guards the two maps
    std::map<uint64_t, std::deque<llama_token>> pending;  // handed over by the engine, not yet by flas_poll
    std::map<uint64_t, flas_update> ended;                 // finished, with tokens still pending
};

static thread_local std::string t_error;

template <typename F>
static int guarded(F && fn) {
    try {
        t_error.clear();
        return fn();
    } catch (const flas_device_lost & e) {
        t_error = e.what();
        return FLAS_ERR_DEVICE_LOST;
    } catch (const std::invalid_argument & e) {
        t_error = e.what();
        return FLAS_ERR_INVALID_ARGUMENT;
    } catch (const std::exception & e) {
        t_error = e.what();
        return FLAS_ERR_RUNTIME;
    } catch (...) {
        t_error = "unknown error";
        return FLAS_ERR_RUNTIME;
    }
}

static void need(bool ok, const char * what) {
    if (!ok) {
        throw std::invalid_argument(what);
    }
}

static std::vector<std::string> split_endpoints(const char * list) {
    std::vector<std::string> out;
    std::stringstream ss(list != nullptr ? list : "");
    for (std::string item; std::getline(ss, item, ',');) {
        item.erase(0, item.find_first_not_of(" \t"));
        item.erase(item.find_last_not_of(" \t") + 1);
        if (!item.empty()) {
            out.push_back(item);
        }
    }
    return out;
}

extern "C" {

const char * flas_last_error(void) { return t_error.c_str(); }

void flas_log_set(flas_log_callback callback, void * user_data) {
    // the same signature as ggml_log_callback, with the level as an int
    flas_log_route(reinterpret_cast<ggml_log_callback>(callback), user_data);
}

const char * flas_system_info(void) {
    static const std::string info = [] {
        const flas_build_info bi = flas_build_info_get();
        std::string s = "ggml " + bi.ggml_version + " (" + bi.ggml_commit + "); backends";
        for (const std::string & b : bi.backends) {
            s += " " + b;
        }
        s += "; devices";
        for (const flas_device_info & d : bi.devices) {
            s += " " + d.name + " (" + d.type + ")";
        }
        return s;
    }();
    return info.c_str();
}

struct flas_model_params flas_model_default_params(void) {
    const flas_runtime_params d;
    struct flas_model_params p;
    p.base_path     = nullptr;
    p.flow_path     = nullptr;
    p.n_ctx         = d.n_ctx;
    p.n_batch       = d.n_batch;
    p.n_seq         = d.n_seq;
    p.concept_cache = d.concept_cache;
    p.n_gpu_layers  = d.n_gpu_layers;
    p.main_gpu      = d.main_gpu;
    p.n_threads     = d.n_threads;
    p.rpc_servers   = nullptr;
    p.exact         = d.exact;
    p.verbose       = d.verbose;
    p.cb_eval           = nullptr;
    p.cb_eval_user_data = nullptr;
    return p;
}

static int load_model(llama_model * app_model, const struct flas_model_params * params, flas_model ** out) {
    if (out != nullptr) {
        *out = nullptr;
    }
    return guarded([&] {
        need(params != nullptr && out != nullptr, "flas_model_load: params and out must not be NULL");
        need(params->flow_path != nullptr && (app_model != nullptr || params->base_path != nullptr),
             "flas_model_load: base_path and flow_path are required");
        flas_runtime_params p;
        p.base_path     = app_model != nullptr ? "" : params->base_path;
        p.flow_path     = params->flow_path;
        p.n_ctx         = params->n_ctx;
        p.n_batch       = std::min(params->n_batch, params->n_ctx);
        p.n_seq         = params->n_seq;
        p.concept_cache = params->concept_cache;
        p.n_gpu_layers  = params->n_gpu_layers;
        p.main_gpu      = params->main_gpu;
        p.n_threads     = params->n_threads;
        p.rpc_servers   = split_endpoints(params->rpc_servers);
        p.exact         = params->exact;
        p.verbose       = params->verbose;
        p.model         = app_model;
        p.cb_eval           = params->cb_eval;  // the same signature as ggml_backend_sched_eval_callback
        p.cb_eval_user_data = params->cb_eval_user_data;
        p.set_llama_log = app_model == nullptr;
        auto m = std::make_unique<flas_model>();
        m->engine = std::make_unique<flas_engine>(p);
        *out = m.release();
        return FLAS_OK;
    });
}

int flas_model_load(const struct flas_model_params * params, flas_model ** out) { return load_model(nullptr, params, out); }

int flas_model_attach(struct llama_model * model, const struct flas_model_params * params, flas_model ** out) {
    if (model == nullptr) {
        if (out != nullptr) {
            *out = nullptr;
        }
        t_error = "flas_model_attach: model is NULL";
        return FLAS_ERR_INVALID_ARGUMENT;
    }
    return load_model(model, params, out);
}

void flas_model_free(flas_model * model) { delete model; }

const char * flas_model_family(const flas_model * model) {
    return model != nullptr ? model->engine->runtime().flow_hparams().base_arch.c_str() : "";
}

int32_t flas_model_n_vocab(const flas_model * model) { return model != nullptr ? model->engine->runtime().n_vocab() : 0; }

int32_t flas_model_n_ctx_seq(const flas_model * model) {
    return model != nullptr ? model->engine->runtime().n_ctx_seq() : 0;
}

int32_t flas_model_memory(const flas_model * model, struct flas_memory_row * rows, int32_t n_max) {
    return guarded([&] {
        need(model != nullptr && (rows != nullptr || n_max == 0), "flas_model_memory: model and rows must not be NULL");
        const std::vector<flas_device_memory> mem = model->engine->runtime().memory();
        for (int32_t i = 0; i < n_max && i < (int32_t) mem.size(); ++i) {
            struct flas_memory_row & r = rows[i];
            snprintf(r.device, sizeof(r.device), "%s", mem[i].device.c_str());
            snprintf(r.type, sizeof(r.type), "%s", mem[i].type.c_str());
            snprintf(r.description, sizeof(r.description), "%s", mem[i].description.c_str());
            r.base_weights = mem[i].base_weights;
            r.kv_cache     = mem[i].kv_cache;
            r.base_compute = mem[i].base_compute;
            r.flow_weights = mem[i].flow_weights;
            r.flow_caches  = mem[i].flow_caches;
            r.flow_compute = mem[i].flow_compute;
            r.total        = mem[i].total();
        }
        return (int) mem.size();
    });
}

int32_t flas_prompt_tokens(const flas_model * model, const char * prompt, int32_t * tokens, int32_t n_max) {
    return guarded([&] {
        need(model != nullptr && prompt != nullptr, "flas_prompt_tokens: model and prompt must not be NULL");
        need(tokens != nullptr || n_max == 0, "flas_prompt_tokens: tokens is NULL");
        const flas_runtime & rt = model->engine->runtime();
        // as trained (FLAS_SPEC.md 5): the chat template with the generation prompt, or alpaca
        const std::string text = rt.flow_hparams().prompt_format == "alpaca"
            ? "### Instruction:\n" + std::string(prompt) + "\n\n### Response:\n"
            : rt.apply_chat_template({{"user", prompt}});
        const std::vector<llama_token> ids = rt.tokenize(text, /*add_special =*/ true, /*parse_special =*/ true);
        if ((int32_t) ids.size() <= n_max) {
            std::copy(ids.begin(), ids.end(), tokens);
        }
        return (int) ids.size();
    });
}

int32_t flas_token_to_piece(const flas_model * model, int32_t token, char * buf, int32_t size) {
    return guarded([&] {
        need(model != nullptr && (buf != nullptr || size == 0), "flas_token_to_piece: model and buf must not be NULL");
        const flas_runtime & rt = model->engine->runtime();
        need(token >= 0 && token < rt.n_vocab(), "flas_token_to_piece: token outside the vocabulary");
        const std::string piece = rt.token_to_piece(token);
        if ((int32_t) piece.size() > size) {
            return -(int) piece.size();
        }
        memcpy(buf, piece.data(), piece.size());
        return (int) piece.size();
    });
}

int32_t flas_encode_concept(flas_model * model, const char * concept) {
    return guarded([&] {
        need(model != nullptr && concept != nullptr, "flas_encode_concept: model and concept must not be NULL");
        int n = 0;
        model->engine->run_exclusive([&] { n = model->engine->runtime().prepare_concept(concept); });
        return n;
    });
}

struct flas_request_params flas_request_default_params(void) {
    const flas_request d;
    struct flas_request_params p;
    p.prompt      = nullptr;
    p.n_prompt    = 0;
    p.concept     = nullptr;
    p.flowtime    = 2.0f;
    p.n_steps     = 0;
    p.max_tokens  = d.max_tokens;
    p.temperature = d.temperature;
    p.top_k       = d.top_k;
    p.top_p       = d.top_p;
    p.seed        = d.seed;
    return p;
}

int flas_submit(flas_model * model, const struct flas_request_params * params, uint64_t * id) {
    return guarded([&] {
        need(model != nullptr && params != nullptr && id != nullptr, "flas_submit: model, params and id must not be NULL");
        need(params->prompt != nullptr && params->n_prompt > 0, "flas_submit: the prompt has no tokens");
        const bool has_concept = params->concept != nullptr && params->concept[0] != '\0';
        need(std::isfinite(params->flowtime) && params->flowtime >= 0.0f,
             "flas_submit: flowtime must be a finite number >= 0 (0: unsteered)");
        need(!(params->flowtime > 0.0f && !has_concept),
             "flas_submit: steering (flowtime > 0) needs a concept, e.g. \"Talk like a pirate\"; use flowtime 0 for "
             "the unsteered model");
        flas_request r;
        r.prompt.assign(params->prompt, params->prompt + params->n_prompt);
        r.concept     = has_concept ? params->concept : "";
        r.flowtime    = has_concept ? params->flowtime : 0.0f;
        r.n_steps     = params->n_steps == 0 ? model->engine->runtime().flow_hparams().n_steps : params->n_steps;
        r.max_tokens  = params->max_tokens;
        r.temperature = params->temperature;
        r.top_k       = params->top_k;
        r.top_p       = params->top_p;
        r.seed        = params->seed;
        *id = model->engine->submit(std::move(r));
        return FLAS_OK;
    });
}

static enum flas_finish finish_of(const std::string & reason) {
    if (reason == "eog")        return FLAS_FINISH_EOG;
    if (reason == "max_tokens") return FLAS_FINISH_MAX_TOKENS;
    if (reason == "context")    return FLAS_FINISH_CONTEXT;
    if (reason == "cancelled")  return FLAS_FINISH_CANCELLED;
    return FLAS_FINISH_ERROR;
}

int32_t flas_poll(flas_model * model, uint64_t id, int32_t timeout_ms, int32_t * tokens, int32_t n_max,
                  enum flas_finish * finish) {
    if (finish != nullptr) {
        *finish = FLAS_FINISH_NONE;
    }
    return guarded([&] {
        need(model != nullptr && finish != nullptr && (tokens != nullptr || n_max == 0),
             "flas_poll: model, tokens and finish must not be NULL");
        bool ended, have;
        {
            std::lock_guard<std::mutex> lk(model->mutex);
            ended = model->ended.count(id) != 0;
            have  = !model->pending[id].empty();
        }
        if (!ended) {
            flas_update u;
            try {
                u = model->engine->wait(id, have ? 0 : std::max(0, timeout_ms));
            } catch (const std::invalid_argument & e) {
                std::lock_guard<std::mutex> lk(model->mutex);
                model->pending.erase(id);
                t_error = e.what();
                return (int) FLAS_ERR_NOT_FOUND;
            }
            std::lock_guard<std::mutex> lk(model->mutex);
            std::deque<llama_token> & q = model->pending[id];
            q.insert(q.end(), u.tokens.begin(), u.tokens.end());
            if (u.done) {
                model->ended[id] = std::move(u);
            }
        }
        std::lock_guard<std::mutex> lk(model->mutex);
        std::deque<llama_token> & q = model->pending[id];
        const int32_t n = std::min<int32_t>(n_max, (int32_t) q.size());
        std::copy(q.begin(), q.begin() + n, tokens);
        q.erase(q.begin(), q.begin() + n);
        auto it = model->ended.find(id);
        if (q.empty() && it != model->ended.end()) {
            *finish = finish_of(it->second.finish);
            if (*finish == FLAS_FINISH_ERROR) {
                t_error = it->second.error;
            }
            model->ended.erase(it);
            model->pending.erase(id);
        }
        return (int) n;
    });
}

int flas_cancel(flas_model * model, uint64_t id) {
    return guarded([&] {
        need(model != nullptr, "flas_cancel: model is NULL");
        model->engine->cancel(id);
        return FLAS_OK;
    });
}

int flas_release(flas_model * model, uint64_t id) {
    return guarded([&] {
        need(model != nullptr, "flas_release: model is NULL");
        model->engine->release(id);
        std::lock_guard<std::mutex> lk(model->mutex);
        model->pending.erase(id);
        model->ended.erase(id);
        return FLAS_OK;
    });
}

}  // extern "C"

// The C API (include/flas.h), part one: errors, information, models, tokens and utilities.
// Requests, traces and the exclusive sequence calls are in flas-c-requests.cpp.
#include "flas-c.h"

#include "flas-info.h"

#include <algorithm>
#include <cstring>
#include <sstream>

std::string & flas_error_slot() {
    static thread_local std::string error;
    return error;
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

// The runtime's parameters from the C ones (checked: what llama.cpp would take silently).
static flas_runtime_params runtime_params(const struct flas_model_params * params, llama_model * app_model) {
    flas_need(params != nullptr, "params must not be NULL");
    flas_need(params->flow_path != nullptr && (app_model != nullptr || params->base_path != nullptr),
              "base_path and flow_path are required");
    flas_need(params->n_tensor_split >= 0 && (params->n_tensor_split == 0 || params->tensor_split != nullptr),
              "tensor_split is NULL but n_tensor_split is not 0");
    flas_runtime_params p;
    p.base_path     = app_model != nullptr || params->base_path == nullptr ? "" : params->base_path;
    p.flow_path     = params->flow_path;
    p.n_ctx         = params->n_ctx;
    p.n_batch       = std::min(params->n_batch, params->n_ctx);
    p.n_seq         = params->n_seq;
    p.concept_cache = params->concept_cache;
    p.n_gpu_layers  = params->n_gpu_layers;
    p.main_gpu      = params->main_gpu;
    p.n_threads     = params->n_threads;
    p.rpc_servers   = split_endpoints(params->rpc_servers);
    p.tensor_split.assign(params->tensor_split, params->tensor_split + params->n_tensor_split);
    p.exact         = params->exact;
    p.verbose       = params->verbose;
    p.model         = app_model;
    p.cb_eval           = params->cb_eval;  // the same signature as ggml_backend_sched_eval_callback
    p.cb_eval_user_data = params->cb_eval_user_data;
    p.set_llama_log = app_model == nullptr;
    return p;
}

static void fill_flow_info(flas_model & m) {
    const flas_runtime & rt = m.engine->runtime();
    const flas_flow_hparams & hp = rt.flow_hparams();
    m.flow_device = rt.flow_device();
    m.activation  = hp.silu ? "silu" : "gelu_tanh";
    struct flas_flow_info & fi = m.flow_info;
    fi.base_model_id   = hp.base_model_id.c_str();
    fi.prompt_format   = hp.prompt_format.c_str();
    fi.family          = hp.base_arch.c_str();
    fi.activation      = m.activation.c_str();
    fi.format_version  = hp.format_version;
    fi.layer           = hp.layer;
    fi.n_block         = hp.n_block;
    fi.n_steps         = hp.n_steps;
    fi.t_min           = hp.t_min;
    fi.t_max           = hp.t_max;
    fi.concept_max_len = hp.concept_max_len;
    fi.has_cross_attn  = hp.has_cross_attn;
    fi.has_self_attn   = hp.has_self_attn;
    fi.has_mlp         = hp.has_mlp;
    fi.n_embd          = hp.n_embd;
    fi.n_head          = hp.n_head;
    fi.n_head_kv       = hp.n_head_kv;
    fi.head_dim        = hp.head_dim;
    fi.softcap         = hp.softcap;
    fi.rope_freq_base  = hp.rope_freq_base;
    fi.rope_freq_scale = hp.rope_freq_scale;
}

static int32_t memory_rows(const std::vector<flas_device_memory> & mem, struct flas_memory_row * rows, int32_t n_max) {
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
    return (int32_t) mem.size();
}

extern "C" {

const char * flas_last_error(void) { return flas_error_slot().c_str(); }

void flas_log_set(flas_log_callback callback, void * user_data) {
    // the same signature as ggml_log_callback, with the level as an int
    flas_log_route(reinterpret_cast<ggml_log_callback>(callback), user_data);
}

const char * flas_system_info(void) {
    static const std::string info = []() -> std::string {
        try {
        const flas_build_facts bi = flas_build_facts_get();
        std::string s = "ggml " + bi.ggml_version + " (" + bi.ggml_commit + "); backends";
        for (const std::string & b : bi.backends) {
            s += " " + b;
        }
        s += "; devices";
        for (const flas_device_facts & d : bi.devices) {
            s += " " + d.name + " (" + d.type + ")";
        }
        return s;
        } catch (...) {
            return "unknown";
        }
    }();
    return info.c_str();
}

const struct flas_build_info * flas_build_info(void) {
    // per thread: valid until this thread's next call
    static thread_local flas_build_facts facts;
    static thread_local std::string backends;
    static thread_local std::vector<struct flas_device_info> devices;
    static thread_local struct flas_build_info info;
    try {
        facts = flas_build_facts_get();
    } catch (...) {
        facts = flas_build_facts();  // nothing known rather than an exception across C
    }
    backends.clear();
    for (const std::string & b : facts.backends) {
        backends += (backends.empty() ? "" : ",") + b;
    }
    devices.assign(facts.devices.size(), {});
    for (size_t i = 0; i < facts.devices.size(); ++i) {
        snprintf(devices[i].name, sizeof(devices[i].name), "%s", facts.devices[i].name.c_str());
        snprintf(devices[i].description, sizeof(devices[i].description), "%s", facts.devices[i].description.c_str());
        snprintf(devices[i].type, sizeof(devices[i].type), "%s", facts.devices[i].type.c_str());
        devices[i].memory_free  = facts.devices[i].memory_free;
        devices[i].memory_total = facts.devices[i].memory_total;
    }
    info.ggml_version = facts.ggml_version.c_str();
    info.ggml_commit  = facts.ggml_commit.c_str();
    info.system_info  = facts.system_info.c_str();
    info.backends     = backends.c_str();
    info.libllama     = facts.libllama_path.c_str();
    info.libggml      = facts.libggml_path.c_str();
    info.libggml_base = facts.libggml_base_path.c_str();
    info.n_devices    = (int32_t) devices.size();
    info.devices      = devices.data();
    return &info;
}

struct flas_model_params flas_model_default_params(void) {
    const flas_runtime_params d;
    struct flas_model_params p;
    p.base_path      = nullptr;
    p.flow_path      = nullptr;
    p.n_ctx          = d.n_ctx;
    p.n_batch        = d.n_batch;
    p.n_seq          = d.n_seq;
    p.concept_cache  = d.concept_cache;
    p.n_gpu_layers   = d.n_gpu_layers;
    p.main_gpu       = d.main_gpu;
    p.n_threads      = d.n_threads;
    p.rpc_servers    = nullptr;
    p.tensor_split   = nullptr;
    p.n_tensor_split = 0;
    p.exact          = d.exact;
    p.verbose        = d.verbose;
    p.cb_eval           = nullptr;
    p.cb_eval_user_data = nullptr;
    return p;
}

int32_t flas_default_threads(void) {
    try {
        return flas_physical_cores();
    } catch (...) {
        return 1;
    }
}

static int load_model(llama_model * app_model, const struct flas_model_params * params, flas_model ** out) {
    if (out != nullptr) {
        *out = nullptr;
    }
    return flas_guarded([&] {
        flas_need(out != nullptr, "flas_model_load: out must not be NULL");
        const flas_runtime_params p = runtime_params(params, app_model);
        auto m = std::make_unique<flas_model>();
        m->engine = std::make_unique<flas_engine>(p);  // loads the runtime on the engine's thread
        fill_flow_info(*m);
        *out = m.release();
        return (int) FLAS_OK;
    });
}

int flas_model_load(const struct flas_model_params * params, flas_model ** out) {
    if (params == nullptr) {  // named apart: the most common mistake
        flas_error_slot() = "flas_model_load: params must not be NULL";
        if (out != nullptr) {
            *out = nullptr;
        }
        return FLAS_ERR_INVALID_ARGUMENT;
    }
    return load_model(nullptr, params, out);
}

int flas_model_attach(struct llama_model * model, const struct flas_model_params * params, flas_model ** out) {
    if (model == nullptr) {
        if (out != nullptr) {
            *out = nullptr;
        }
        flas_error_slot() = "flas_model_attach: model is NULL";
        return FLAS_ERR_INVALID_ARGUMENT;
    }
    return load_model(model, params, out);
}

void flas_model_free(flas_model * model) { delete model; }

const char * flas_model_family(const flas_model * model) { return model != nullptr ? model->flow_info.family : ""; }
int32_t flas_model_n_vocab(const flas_model * model) { return model != nullptr ? model->engine->runtime().n_vocab() : 0; }
int32_t flas_model_n_embd(const flas_model * model) { return model != nullptr ? model->flow_info.n_embd : 0; }
int32_t flas_model_n_ctx(const flas_model * model) { return model != nullptr ? model->engine->runtime().n_ctx() : 0; }
int32_t flas_model_n_seq(const flas_model * model) { return model != nullptr ? model->engine->runtime().n_seq() : 0; }
int32_t flas_model_n_ctx_seq(const flas_model * model) {
    return model != nullptr ? model->engine->runtime().n_ctx_seq() : 0;
}
const char * flas_model_flow_device(const flas_model * model) {
    return model != nullptr ? model->flow_device.c_str() : "";
}
const struct flas_flow_info * flas_model_flow_info(const flas_model * model) {
    return model != nullptr ? &model->flow_info : nullptr;
}

int32_t flas_model_memory(const flas_model * model, struct flas_memory_row * rows, int32_t n_max) {
    return flas_guarded([&] {
        flas_need(model != nullptr && (rows != nullptr || n_max == 0), "flas_model_memory: model and rows must not be NULL");
        std::vector<flas_device_memory> mem;
        flas_on_runtime(const_cast<flas_model *>(model), [&](flas_runtime & rt) { mem = rt.memory(); });  // buffers the decode may grow
        return memory_rows(mem, rows, n_max);
    });
}

int32_t flas_estimate_memory(const struct flas_model_params * params, int32_t n_steps, struct flas_memory_row * rows,
                             int32_t n_max) {
    return flas_guarded([&] {
        flas_need(rows != nullptr || n_max == 0, "flas_estimate_memory: rows must not be NULL");
        flas_need(n_steps >= 1 && n_steps <= FLAS_MAX_STEPS, "flas_estimate_memory: n_steps outside 1..FLAS_MAX_STEPS");
        return memory_rows(flas_estimate_buffers(runtime_params(params, nullptr), n_steps), rows, n_max);
    });
}

int flas_model_reserve(flas_model * model, int32_t n_steps) {
    return flas_guarded([&] {
        flas_need(model != nullptr, "flas_model_reserve: model is NULL");
        flas_need(n_steps >= 1 && n_steps <= FLAS_MAX_STEPS, "flas_model_reserve: n_steps outside 1..FLAS_MAX_STEPS");
        flas_on_runtime(model, [&](flas_runtime & rt) { rt.reserve_steering(n_steps); });
        return (int) FLAS_OK;
    });
}

int32_t flas_tokenize(const flas_model * model, const char * text, bool add_special, bool parse_special,
                      int32_t * tokens, int32_t n_max) {
    return flas_guarded([&] {
        flas_need(model != nullptr && text != nullptr, "flas_tokenize: model and text must not be NULL");
        flas_need(tokens != nullptr || n_max == 0, "flas_tokenize: tokens is NULL");
        const std::vector<llama_token> ids = model->engine->runtime().tokenize(text, add_special, parse_special);
        return (int32_t) flas_copy_out(ids, tokens, n_max);
    });
}

static std::vector<flas_turn> turns_of(const struct flas_chat_message * messages, int32_t n_messages,
                                       const char * fn) {
    flas_need(messages != nullptr || n_messages == 0, (std::string(fn) + ": messages is NULL").c_str());
    flas_need(n_messages >= 0, (std::string(fn) + ": n_messages is negative").c_str());
    std::vector<flas_turn> turns;
    for (int32_t i = 0; i < n_messages; ++i) {
        flas_need(messages[i].role != nullptr && messages[i].content != nullptr,
                  (std::string(fn) + ": a message's role or content is NULL").c_str());
        turns.push_back({messages[i].role, messages[i].content});
    }
    return turns;
}

int32_t flas_chat_template(const flas_model * model, const struct flas_chat_message * messages, int32_t n_messages,
                           char * buf, int32_t size) {
    return flas_guarded([&] {
        flas_need(model != nullptr && (buf != nullptr || size == 0), "flas_chat_template: model and buf must not be NULL");
        const std::string text = model->engine->runtime().apply_chat_template(
            turns_of(messages, n_messages, "flas_chat_template"));
        if ((int32_t) text.size() < size) {
            memcpy(buf, text.c_str(), text.size() + 1);
        }
        return (int32_t) text.size();
    });
}

int32_t flas_chat_tokens(const flas_model * model, const struct flas_chat_message * messages, int32_t n_messages,
                         bool content_special, int32_t * tokens, int32_t n_max) {
    return flas_guarded([&] {
        flas_need(model != nullptr, "flas_chat_tokens: model must not be NULL");
        flas_need(tokens != nullptr || n_max == 0, "flas_chat_tokens: tokens is NULL");
        const std::vector<flas_turn> turns = turns_of(messages, n_messages, "flas_chat_tokens");
        flas_need(!turns.empty(), "flas_chat_tokens: no messages");
        return (int32_t) flas_copy_out(model->engine->runtime().prompt_tokens(turns, content_special), tokens, n_max);
    });
}

int32_t flas_text_tokens(const flas_model * model, const char * text, bool parse_special, int32_t * tokens,
                         int32_t n_max) {
    return flas_guarded([&] {
        flas_need(model != nullptr && text != nullptr, "flas_text_tokens: model and text must not be NULL");
        flas_need(tokens != nullptr || n_max == 0, "flas_text_tokens: tokens is NULL");
        return (int32_t) flas_copy_out(model->engine->runtime().text_tokens(text, parse_special), tokens, n_max);
    });
}

int32_t flas_prompt_tokens(const flas_model * model, const char * prompt, int32_t * tokens, int32_t n_max) {
    return flas_guarded([&] {
        flas_need(model != nullptr && prompt != nullptr, "flas_prompt_tokens: model and prompt must not be NULL");
        flas_need(tokens != nullptr || n_max == 0, "flas_prompt_tokens: tokens is NULL");
        return (int32_t) flas_copy_out(model->engine->runtime().prompt_tokens({{"user", prompt}}, false), tokens, n_max);
    });
}

int32_t flas_token_to_piece(const flas_model * model, int32_t token, char * buf, int32_t size) {
    return flas_guarded([&] {
        flas_need(model != nullptr && (buf != nullptr || size == 0), "flas_token_to_piece: model and buf must not be NULL");
        const flas_runtime & rt = model->engine->runtime();
        flas_need(token >= 0 && token < rt.n_vocab(), "flas_token_to_piece: token outside the vocabulary");
        const std::string piece = rt.token_to_piece(token);
        if ((int32_t) piece.size() <= size) {
            memcpy(buf, piece.data(), piece.size());
        }
        return (int32_t) piece.size();
    });
}

int32_t flas_encode_concept(flas_model * model, const char * concept) {
    return flas_guarded([&] {
        flas_need(model != nullptr && concept != nullptr, "flas_encode_concept: model and concept must not be NULL");
        int n = 0;
        flas_on_runtime(model, [&](flas_runtime & rt) { n = rt.prepare_concept(concept); });
        return (int32_t) n;
    });
}

int64_t flas_concept_rows(flas_model * model, const char * concept, float * out, int64_t n_max) {
    return flas_guarded([&] {
        flas_need(model != nullptr && concept != nullptr, "flas_concept_rows: model and concept must not be NULL");
        flas_need(out != nullptr || n_max == 0, "flas_concept_rows: out is NULL");
        std::vector<float> rows;
        flas_on_runtime(model, [&](flas_runtime & rt) { rows = rt.concept_rows(concept); });
        return (int64_t) flas_copy_out(rows, out, n_max);
    });
}

int flas_flow_validate(const char * path) {
    return flas_guarded([&] {
        flas_need(path != nullptr, "flas_flow_validate: path must not be NULL");
        flas_flow_validate(std::string(path));
        return (int) FLAS_OK;
    });
}

int64_t flas_quantize_rows(int32_t type, const float * src, void * dst, int64_t n_rows, int64_t n_per_row) {
    return flas_guarded([&] {
        flas_need(src != nullptr && dst != nullptr, "flas_quantize_rows: src and dst must not be NULL");
        flas_need(type >= 0 && type < GGML_TYPE_COUNT && ggml_get_type_traits((ggml_type) type)->blck_size > 0 &&
                  ggml_get_type_traits((ggml_type) type)->from_float_ref != nullptr,
                  "flas_quantize_rows: not a ggml type it can quantize to");
        const ggml_type t = (ggml_type) type;
        if (n_rows < 0 || n_per_row <= 0 || n_per_row % ggml_blck_size(t) != 0) {
            throw std::invalid_argument("flas_quantize_rows: rows of " + std::to_string(n_per_row) + " values do not fill "
                                        "whole " + ggml_type_name(t) + " blocks of " +
                                        std::to_string(ggml_blck_size(t)));
        }
        if (ggml_quantize_requires_imatrix(t)) {
            throw std::invalid_argument(std::string("flas_quantize_rows: ") + ggml_type_name(t) + " needs an importance matrix");
        }
        ggml_quantize_init(t);
        return (int64_t) ggml_quantize_chunk(t, src, dst, 0, n_rows, n_per_row, nullptr);
    });
}

int flas_quantize(const char * path_in, const char * path_out, int32_t ftype, int32_t n_threads) {
    return flas_guarded([&] {
        flas_need(path_in != nullptr && path_out != nullptr, "flas_quantize: the paths must not be NULL");
        flas_model_quantize(path_in, path_out, ftype, n_threads);
        return (int) FLAS_OK;
    });
}

int flas_rpc_serve(const char * endpoint, int32_t n_threads, const char * cache_dir) {
    return flas_guarded([&] {
        flas_need(endpoint != nullptr, "flas_rpc_serve: endpoint must not be NULL");
        flas_serve_rpc(endpoint, n_threads > 0 ? n_threads : flas_physical_cores(), cache_dir != nullptr ? cache_dir : "");
        return (int) FLAS_OK;
    });
}

bool flas_endpoint_reachable(const char * endpoint, int32_t timeout_ms) {
    try {
        return endpoint != nullptr && flas_endpoint_open(endpoint, timeout_ms);
    } catch (...) {
        return false;
    }
}

void * flas_rpc_device(const char * endpoint) {
    void * dev = nullptr;
    flas_guarded([&] {
        flas_need(endpoint != nullptr, "flas_rpc_device: endpoint must not be NULL");
        const std::vector<ggml_backend_dev_t> devs = flas_rpc_devices({endpoint});
        dev = devs.empty() ? nullptr : devs[0];
        return (int) FLAS_OK;
    });
    return dev;
}

}  // extern "C"

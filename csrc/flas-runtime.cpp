#include "flas-runtime.h"

#include "flas-graph.h"
#include "gguf.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <thread>

// ---------------------------------------------------------------------------------------------
// logging and callbacks
// ---------------------------------------------------------------------------------------------

static bool g_verbose = false;
bool flas_log_quiet = false;  // set while a pass is aborted on purpose (concept encoding)

static void log_callback(enum ggml_log_level level, const char * text, void *) {
    if (g_verbose || (!flas_log_quiet && level == GGML_LOG_LEVEL_ERROR)) {
        fputs(text, stderr);
    }
}

static bool eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * rt = static_cast<flas_runtime *>(user_data);
    if (ask) {
        return rt->wants(t);
    }
    rt->on_layer_output(t);
    return true;  // never false: ggml would skip the rest of the split and llama_decode still "succeed"
}

// ---------------------------------------------------------------------------------------------
// construction
// ---------------------------------------------------------------------------------------------

static void require_file(const std::string & path, const char * what) {
    if (!std::ifstream(path).good()) {
        throw std::invalid_argument(std::string(what) + " not found or unreadable: " + path);
    }
}

flas_runtime::flas_runtime(const flas_runtime_params & params) : params_(params) {
    if (params.n_ctx < 16 || params.n_batch < 1) {
        throw std::invalid_argument("n_ctx must be >= 16 and n_batch >= 1");
    }
    require_file(params.base_path, "base model GGUF");
    require_file(params.flow_path, "flow GGUF");
    g_verbose = params.verbose;
    llama_log_set(log_callback, nullptr);
    llama_backend_init();

    n_threads_ = params.n_threads > 0 ? params.n_threads : (int) std::max(1u, std::thread::hardware_concurrency());

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = params.n_gpu_layers;
    model_.reset(llama_model_load_from_file(params.base_path.c_str(), mparams));
    if (!model_) {
        throw std::invalid_argument("llama.cpp could not load the base model " + params.base_path +
                                    " (run with verbose=True for llama.cpp's log)");
    }
    vocab_ = llama_model_get_vocab(model_.get());

    // The flow runs where layer L runs: llama.cpp offloads layers >= n_layer + 1 - n_gpu_layers.
    const flas_flow_hparams hp = flas_flow_read_hparams(params.flow_path);
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    ggml_backend_dev_t gpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
    if (gpu != nullptr && hp.layer >= llama_model_n_layer(model_.get()) + 1 - params.n_gpu_layers) {
        dev = gpu;
    }
    backend_.reset(ggml_backend_dev_init(dev, nullptr));
    if (!backend_) {
        throw std::runtime_error(std::string("cannot initialize the ggml backend ") + ggml_backend_dev_name(dev));
    }
    flas_flow_load(flow_, params.flow_path, backend_.get());
    if (ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(ggml_backend_get_device(backend_.get()))) {
        auto set_threads = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
        if (set_threads) {
            set_threads(backend_.get(), n_threads_);
        }
    }
    check_compatible(params.base_path, params.flow_path);
    load_output_norm(params.base_path);

    llama_context_params cparams = context_params(params.n_ctx, params.n_batch);
    cparams.cb_eval           = eval_callback;
    cparams.cb_eval_user_data = this;
    ctx_.reset(llama_init_from_model(model_.get(), cparams));
    if (!ctx_) {
        throw std::runtime_error("llama.cpp could not create a context (n_ctx " + std::to_string(params.n_ctx) +
                                 "); try a smaller n_ctx");
    }
    n_ctx_ = (int) llama_n_ctx(ctx_.get());
    target_name_ = "l_out-" + std::to_string(flow_.hp.layer);

    flas_concept_state_init(concept_, flow_, backend_.get());
    allocr_.reset(ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend_.get())));
    set_steering(0.0f, flow_.hp.n_steps);
}

flas_runtime::~flas_runtime() = default;

// One sequence, n_ubatch = n_batch (so each llama_decode is one ubatch and rows arrive in
// order), our threads, and with `exact` float32 KV caches without flash attention.
llama_context_params flas_runtime::context_params(int n_ctx, int n_batch) const {
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx           = n_ctx;
    cparams.n_batch         = n_batch;
    cparams.n_ubatch        = n_batch;
    cparams.n_seq_max       = 1;
    cparams.n_threads       = n_threads_;
    cparams.n_threads_batch = n_threads_;
    cparams.no_perf         = true;
    if (params_.exact) {
        cparams.type_k = GGML_TYPE_F32;
        cparams.type_v = GGML_TYPE_F32;
        cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    return cparams;
}

void flas_runtime::check_compatible(const std::string & base_path, const std::string & flow_path) const {
    const flas_flow_hparams & hp = flow_.hp;
    char arch[64] = {0};
    llama_model_meta_val_str(model_.get(), "general.architecture", arch, sizeof(arch));
    auto mismatch = [&](const char * what, long long flow_val, long long base_val) {
        if (flow_val != base_val) {
            throw std::invalid_argument(std::string("the flow ") + flow_path + " does not fit the base model " +
                                        base_path + ": " + what + " is " + std::to_string(flow_val) +
                                        " for the flow but " + std::to_string(base_val) +
                                        " for the base; use the base model the flow was trained on (" +
                                        hp.base_model_id + ")");
        }
    };
    if (std::string(arch) != "gemma2") {
        throw std::invalid_argument("base model " + base_path + " is '" + arch + "', but the flow " + flow_path +
                                    " steers a gemma2 model (" + hp.base_model_id + ")");
    }
    mismatch("hidden size", hp.n_embd, llama_model_n_embd(model_.get()));
    mismatch("layer count", hp.n_base_layer, llama_model_n_layer(model_.get()));
    mismatch("attention heads", hp.n_head, llama_model_n_head(model_.get()));
    mismatch("KV heads", hp.n_head_kv, llama_model_n_head_kv(model_.get()));
    if (hp.layer >= llama_model_n_layer(model_.get())) {
        throw std::invalid_argument("the flow " + flow_path + " steers layer " + std::to_string(hp.layer) +
                                    " but the base model " + base_path + " has " +
                                    std::to_string(llama_model_n_layer(model_.get())) + " layers");
    }
}

// The concept encoder ends with the base model's final RMSNorm (FLAS_SPEC.md 2); llama.cpp does
// not expose model tensors, so read output_norm.weight from the GGUF itself.
void flas_runtime::load_output_norm(const std::string & path) {
    ggml_context * meta = nullptr;
    gguf_init_params gp = { /*no_alloc =*/ true, /*ctx =*/ &meta };
    gguf_context * gctx = gguf_init_from_file(path.c_str(), gp);
    if (gctx == nullptr) {
        throw std::invalid_argument("cannot read GGUF " + path);
    }
    ggml_context_ptr meta_owner(meta);
    const int64_t id = gguf_find_tensor(gctx, "output_norm.weight");
    ggml_tensor * t = id >= 0 ? ggml_get_tensor(meta, "output_norm.weight") : nullptr;
    if (t == nullptr || ggml_nelements(t) != flow_.hp.n_embd ||
        (t->type != GGML_TYPE_F32 && ggml_get_type_traits(t->type)->to_float == nullptr)) {
        gguf_free(gctx);
        throw std::invalid_argument("base model " + path + " has no usable output_norm.weight of size " +
                                    std::to_string(flow_.hp.n_embd));
    }
    std::vector<uint8_t> raw(ggml_nbytes(t));
    std::ifstream file(path, std::ios::binary);
    file.seekg(gguf_get_data_offset(gctx) + gguf_get_tensor_offset(gctx, id));
    file.read(reinterpret_cast<char *>(raw.data()), raw.size());
    gguf_free(gctx);
    if (!file) {
        throw std::invalid_argument("base model " + path + ": truncated output_norm.weight");
    }
    output_norm_.resize(flow_.hp.n_embd);
    if (t->type == GGML_TYPE_F32) {
        memcpy(output_norm_.data(), raw.data(), raw.size());
    } else {
        ggml_get_type_traits(t->type)->to_float(raw.data(), output_norm_.data(), flow_.hp.n_embd);
    }
}

// ---------------------------------------------------------------------------------------------
// vocabulary
// ---------------------------------------------------------------------------------------------

std::vector<llama_token> flas_runtime::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    int n = -llama_tokenize(vocab_, text.data(), (int32_t) text.size(), nullptr, 0, add_special, parse_special);
    std::vector<llama_token> out(std::max(n, 0));
    if (n > 0) {
        llama_tokenize(vocab_, text.data(), (int32_t) text.size(), out.data(), n, add_special, parse_special);
    }
    return out;
}

std::string flas_runtime::token_to_piece(llama_token token) const {
    char buf[256];
    int n = llama_token_to_piece(vocab_, token, buf, sizeof(buf), 0, false);
    if (n < 0) {
        std::string big(-n, '\0');
        llama_token_to_piece(vocab_, token, big.data(), -n, 0, false);
        return big;
    }
    return std::string(buf, n);
}

bool flas_runtime::is_eog(llama_token token) const { return llama_vocab_is_eog(vocab_, token); }

int flas_runtime::n_vocab() const { return llama_vocab_n_tokens(vocab_); }

std::string flas_runtime::apply_chat_template(const std::vector<std::pair<std::string, std::string>> & messages) const {
    const char * tmpl = llama_model_chat_template(model_.get(), nullptr);
    if (tmpl == nullptr) {
        throw std::invalid_argument("the base model has no chat template; use a chat model or prompt_format alpaca");
    }
    std::vector<llama_chat_message> msgs;
    for (const auto & m : messages) {
        msgs.push_back({m.first.c_str(), m.second.c_str()});
    }
    std::vector<char> buf(1024);
    int n = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), true, buf.data(), (int32_t) buf.size());
    if (n > (int) buf.size()) {
        buf.resize(n);
        n = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), true, buf.data(), (int32_t) buf.size());
    }
    if (n < 0) {
        throw std::invalid_argument("llama.cpp does not support this model's chat template");
    }
    return std::string(buf.data(), n);
}

// ---------------------------------------------------------------------------------------------
// the sequence
// ---------------------------------------------------------------------------------------------

void flas_runtime::reset() {
    llama_memory_clear(llama_get_memory(ctx_.get()), true);
    n_past_ = 0;
    trace_in_.clear();
    trace_out_.clear();
}

void flas_runtime::rewind(int n_keep) {
    if (n_keep < 0 || n_keep > n_past_) {
        throw std::invalid_argument("rewind: n_keep " + std::to_string(n_keep) + " outside 0.." + std::to_string(n_past_));
    }
    llama_memory_seq_rm(llama_get_memory(ctx_.get()), 0, n_keep, -1);
    n_past_ = n_keep;  // the flow caches past n_keep are overwritten before they are read again
}

void flas_runtime::decode(const std::vector<llama_token> & tokens) {
    if (tokens.empty()) {
        throw std::invalid_argument("decode: no tokens");
    }
    if (n_past_ + (int) tokens.size() > n_ctx_) {
        throw std::invalid_argument("the sequence would hold " + std::to_string(n_past_ + tokens.size()) +
                                    " tokens but the context holds " + std::to_string(n_ctx_) + "; raise n_ctx");
    }
    const int n_vocab_ = n_vocab();
    for (llama_token t : tokens) {
        if (t < 0 || t >= n_vocab_) {
            throw std::invalid_argument("token id " + std::to_string(t) + " outside the vocabulary");
        }
    }
    for (size_t i = 0; i < tokens.size(); i += params_.n_batch) {
        const int n = (int) std::min<size_t>(params_.n_batch, tokens.size() - i);
        llama_batch batch = llama_batch_get_one(const_cast<llama_token *>(tokens.data() + i), n);
        cursor_ = n_past_;
        error_.clear();
        const int32_t ret = llama_decode(ctx_.get(), batch);
        if (ret != 0) {
            throw std::runtime_error("llama_decode failed with status " + std::to_string(ret) +
                                     (error_.empty() ? "" : ": " + error_));
        }
        if (!error_.empty()) {
            n_past_ += n;
            throw std::runtime_error("steering failed: " + error_);
        }
        if (steering_active() && cursor_ != n_past_ + n) {
            n_past_ += n;
            throw std::runtime_error("the eval callback saw " + std::to_string(cursor_ - (n_past_ - n)) +
                                     " rows of " + target_name_ + " for " + std::to_string(n) + " tokens");
        }
        n_past_ += n;
    }
}

std::vector<float> flas_runtime::logits() const {
    const float * l = llama_get_logits_ith(ctx_.get(), -1);
    if (l == nullptr) {
        throw std::runtime_error("no logits: decode a token first");
    }
    return std::vector<float>(l, l + n_vocab());
}

void flas_runtime::sampler_init(float temperature, int top_k, float top_p, uint32_t seed) {
    llama_sampler_chain_params sp = llama_sampler_chain_default_params();
    sp.no_perf = true;
    sampler_.reset(llama_sampler_chain_init(sp));
    if (temperature <= 0.0f) {
        llama_sampler_chain_add(sampler_.get(), llama_sampler_init_greedy());
        return;
    }
    if (top_k > 0) {
        llama_sampler_chain_add(sampler_.get(), llama_sampler_init_top_k(top_k));
    }
    if (top_p < 1.0f) {
        llama_sampler_chain_add(sampler_.get(), llama_sampler_init_top_p(top_p, 1));
    }
    llama_sampler_chain_add(sampler_.get(), llama_sampler_init_temp(temperature));
    llama_sampler_chain_add(sampler_.get(), llama_sampler_init_dist(seed));
}

llama_token flas_runtime::sample() {
    if (!sampler_) {
        throw std::runtime_error("sample: call sampler_init first");
    }
    return llama_sampler_sample(sampler_.get(), ctx_.get(), -1);
}

std::string flas_runtime::flow_backend() const { return ggml_backend_name(backend_.get()); }

// ---------------------------------------------------------------------------------------------
// steering in the eval callback
// ---------------------------------------------------------------------------------------------

bool flas_runtime::steering_active() const {
    return hook_ || trace_ || (concept_.n_tokens > 0 && flowtime_ > 0.0f);
}

bool flas_runtime::wants(const ggml_tensor * t) const {
    return steering_active() && strcmp(t->name, target_name_.c_str()) == 0;
}

void flas_runtime::on_layer_output(ggml_tensor * t) noexcept {
    try {
        const int H = flow_.hp.n_embd;
        if (t->type != GGML_TYPE_F32 || t->ne[0] != H || !ggml_is_contiguous(t)) {
            throw std::runtime_error(target_name_ + " is not a contiguous f32 [" + std::to_string(H) + ", n] tensor");
        }
        const int n  = (int) t->ne[1];
        const int p0 = cursor_;
        cursor_ += n;
        if (p0 + n > n_ctx_) {
            throw std::runtime_error("position " + std::to_string(p0 + n) + " beyond the flow cache");
        }
        if (trace_) {
            const size_t off = trace_in_.size();
            trace_in_.resize(off + (size_t) n * H);
            ggml_backend_tensor_get(t, trace_in_.data() + off, 0, ggml_nbytes(t));
        }
        if (hook_) {
            std::vector<float> in((size_t) n * H), out((size_t) n * H);
            ggml_backend_tensor_get(t, in.data(), 0, ggml_nbytes(t));
            hook_(in.data(), out.data(), n, p0);
            ggml_backend_tensor_set(t, out.data(), 0, ggml_nbytes(t));
        } else if (concept_.n_tokens > 0 && flowtime_ > 0.0f) {
            run_flow(t, p0, n);
        }  // T = 0: the rows stay untouched, bit for bit
        if (trace_) {
            const size_t off = trace_out_.size();
            trace_out_.resize(off + (size_t) n * H);
            ggml_backend_tensor_get(t, trace_out_.data() + off, 0, ggml_nbytes(t));
        }
    } catch (const std::exception & e) {
        if (error_.empty()) {
            error_ = e.what();
        }
    } catch (...) {
        if (error_.empty()) {
            error_ = "unknown error in the steering callback";
        }
    }
}

flas_runtime::pass_graph flas_runtime::build_pass(int p0, int n, int n_steps, float dt) {
    const size_t max_nodes = flas_graph_max_nodes(flow_, n_steps);
    ggml_init_params ip = { graph_meta_.size(), graph_meta_.data(), /*no_alloc =*/ true };
    pass_graph g;
    g.ctx.reset(ggml_init(ip));
    g.gf   = ggml_new_graph_custom(g.ctx.get(), max_nodes, false);
    g.h0   = ggml_new_tensor_2d(g.ctx.get(), GGML_TYPE_F32, flow_.hp.n_embd, n);
    g.pos  = ggml_new_tensor_1d(g.ctx.get(), GGML_TYPE_I32, n);
    g.mask = ggml_new_tensor_2d(g.ctx.get(), GGML_TYPE_F32, p0 + n, n);
    for (ggml_tensor * in : {g.h0, g.pos, g.mask}) {
        ggml_set_input(in);
    }
    const flas_pass pass{g.ctx.get(), g.gf, flow_, concept_, cache_, g.pos, g.mask, p0, n};
    g.out = flas_build_euler(pass, g.h0, n_steps, dt);
    ggml_set_output(g.out);
    ggml_build_forward_expand(g.gf, g.out);
    return g;
}

void flas_runtime::run_flow(ggml_tensor * t, int p0, int n) {
    pass_graph g = build_pass(p0, n, n_steps_, flowtime_ / n_steps_);
    ggml_tensor * h0 = g.h0, * pos = g.pos, * mask = g.mask, * out = g.out;
    if (!ggml_gallocr_alloc_graph(allocr_.get(), g.gf)) {
        throw std::runtime_error("cannot allocate the flow's compute buffer");
    }

    ggml_backend_tensor_copy(t, h0);
    if (pos->buffer != nullptr) {  // inputs an ablated flow does not read are not allocated
        std::vector<int32_t> positions(n);
        for (int i = 0; i < n; ++i) {
            positions[i] = p0 + i;
        }
        ggml_backend_tensor_set(pos, positions.data(), 0, ggml_nbytes(pos));
    }
    if (mask->buffer != nullptr) {
        std::vector<float> m((size_t) (p0 + n) * n, 0.0f);
        for (int i = 0; i < n; ++i) {
            std::fill(m.begin() + (size_t) i * (p0 + n) + p0 + i + 1, m.begin() + (size_t) (i + 1) * (p0 + n), -INFINITY);
        }
        ggml_backend_tensor_set(mask, m.data(), 0, ggml_nbytes(mask));
    }
    if (ggml_backend_graph_compute(backend_.get(), g.gf) != GGML_STATUS_SUCCESS) {
        throw std::runtime_error("the flow graph failed to compute on " + flow_backend());
    }
    ggml_backend_tensor_copy(out, t);
}

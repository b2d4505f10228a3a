#include "flas-runtime.h"

#include "flas-base-gguf.h"
#include "flas-log.h"
#include "flas-platform.h"
#include "flas-rules.h"
#include "flas-sampling.h"

#include <cstring>
#include <fstream>
#include <stdexcept>
#include <thread>

// ---------------------------------------------------------------------------------------------
// callbacks
// ---------------------------------------------------------------------------------------------

static bool eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * rt = static_cast<flas_runtime *>(user_data);
    if (ask) {
        const bool app = rt->app_eval(t, true);  // asked first: its answer is remembered for this node
        return rt->wants(t) || app;
    }
    if (rt->wants(t)) {
        rt->on_layer_output(t);
    }
    // never false on our account: ggml would skip the rest of the split and llama_decode still
    // "succeed"; the application's callback may stop the computation as it always could
    return rt->app_eval(t, false);
}

// ---------------------------------------------------------------------------------------------
// construction
// ---------------------------------------------------------------------------------------------

flas_runtime::flas_runtime(const flas_runtime_params & params) : params_(params) {
    flas_check_params(params);
    if (params.set_llama_log) {
        flas_log_init(params.verbose);
    }
    llama_backend_init();
    flas_device_guard guard;  // an RPC server lost while loading: an exception, not an abort

    n_threads_ = params.n_threads > 0 ? params.n_threads : flas_physical_cores();

    if (params.model != nullptr) {
        model_ = params.model;
    } else {
        output_norm_ = flas_base_gguf_read_output_norm(params.base_path);  // before llama.cpp reads the file
        llama_model_params mparams = model_params();
        owned_model_.reset(llama_model_load_from_file(params.base_path.c_str(), mparams));
        model_ = owned_model_.get();
        if (model_ == nullptr) {
            throw std::invalid_argument("llama.cpp could not load the base model " + params.base_path +
                                        " (run with verbose=True for llama.cpp's log)");
        }
    }
    vocab_ = llama_model_get_vocab(model_);
    const flas_flow_hparams hp = flas_flow_read_hparams(params.flow_path);
    target_name_ = "l_out-" + std::to_string(hp.layer);

    llama_context_params cparams = context_params(params.n_ctx, params.n_batch, params.n_seq);
    cparams.cb_eval           = eval_callback;
    cparams.cb_eval_user_data = this;
    ctx_.reset(llama_init_from_model(model_, cparams));
    if (!ctx_) {
        throw std::runtime_error("llama.cpp could not create a context (n_ctx " + std::to_string(params.n_ctx) +
                                 "); try a smaller n_ctx");
    }
    n_ctx_     = (int) llama_n_ctx(ctx_.get());
    n_ctx_seq_ = n_ctx_ / params.n_seq;
    prompt_ = std::make_unique<flas_prompt>(model_, hp.prompt_format == "alpaca", n_ctx_seq_,
                                            "n_ctx " + std::to_string(n_ctx_) + " / n_seq " + std::to_string(params.n_seq));

    // The flow runs on the device that computes layer L, so that its rows never leave it; the
    // host places it and checks it fits the model before the steering takes it.
    ggml_backend_dev_t dev = probe_layer_device();
    ggml_backend_ptr backend(ggml_backend_dev_init(dev, nullptr));
    if (!backend) {
        throw std::runtime_error(std::string("cannot initialize the ggml backend ") + ggml_backend_dev_name(dev));
    }
    flas_flow flow;
    flas_flow_load(flow, params.flow_path, backend.get());
    if (ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(ggml_backend_get_device(backend.get()))) {
        auto set_threads = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
        if (set_threads) {
            set_threads(backend.get(), n_threads_);
        }
    }
    check_compatible(flow.hp, params.model != nullptr ? "(the application's model)" : params.base_path, params.flow_path);
    if (params.model != nullptr && (int) output_norm_.size() != flow.hp.n_embd) {  // read from the graph by the probe
        throw std::invalid_argument("the application's model has no final norm the concept encoder can use");
    }

    flas_steering_params sp;
    sp.n_seq         = params.n_seq;
    sp.n_ctx_seq     = n_ctx_seq_;
    sp.n_batch       = params.n_batch;
    sp.concept_cache = params.concept_cache;
    sp.exact         = params.exact;
    steering_ = std::make_unique<flas_steering>(std::move(backend), std::move(flow), sp, model_, context_params(1, 1, 1),
                                                std::move(output_norm_), [this](int seq) { reset(seq); });
    seqs_.resize(params.n_seq);
}

flas_runtime::~flas_runtime() = default;

// n_ubatch = n_batch and one unified KV cache for all sequences: each llama_decode is one
// ubatch whose rows arrive in batch order (per-sequence streams regroup rows by sequence);
// our threads; with `exact` float32 KV caches without flash attention.
llama_context_params flas_runtime::context_params(int n_ctx, int n_batch, int n_seq) const {
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx           = n_ctx;
    cparams.n_batch         = n_batch;
    cparams.n_ubatch        = n_batch;
    cparams.n_seq_max       = n_seq;
    cparams.kv_unified      = true;
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

void flas_runtime::check_compatible(const flas_flow_hparams & hp, const std::string & base_path,
                                    const std::string & flow_path) const {
    char arch[64] = {0};
    llama_model_meta_val_str(model_, "general.architecture", arch, sizeof(arch));
    auto mismatch = [&](const char * what, long long flow_val, long long base_val) {
        if (flow_val != base_val) {
            throw std::invalid_argument(std::string("the flow ") + flow_path + " does not fit the base model " +
                                        base_path + ": " + what + " is " + std::to_string(flow_val) +
                                        " for the flow but " + std::to_string(base_val) +
                                        " for the base; use the base model the flow was trained on (" +
                                        hp.base_model_id + ")");
        }
    };
    if (std::string(arch) != hp.base_arch) {
        throw std::invalid_argument("base model " + base_path + " is '" + arch + "', but the flow " + flow_path +
                                    " steers a " + hp.base_arch + " model (" + hp.base_model_id + ")");
    }
    mismatch("hidden size", hp.n_embd, llama_model_n_embd(model_));
    mismatch("layer count", hp.n_base_layer, llama_model_n_layer(model_));
    mismatch("attention heads", hp.n_head, llama_model_n_head(model_));
    mismatch("KV heads", hp.n_head_kv, llama_model_n_head_kv(model_));
    if (hp.layer >= llama_model_n_layer(model_)) {
        throw std::invalid_argument("the flow " + flow_path + " steers layer " + std::to_string(hp.layer) +
                                    " but the base model " + base_path + " has " +
                                    std::to_string(llama_model_n_layer(model_)) + " layers");
    }
}

// ---------------------------------------------------------------------------------------------
// vocabulary
// ---------------------------------------------------------------------------------------------

std::vector<llama_token> flas_runtime::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    return flas_tokenize(vocab_, text, add_special, parse_special);
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

// ---------------------------------------------------------------------------------------------
// sequences
// ---------------------------------------------------------------------------------------------

int flas_runtime::check_seq(int seq) const {
    if (seq < 0 || seq >= (int) seqs_.size()) {
        throw std::invalid_argument("sequence " + std::to_string(seq) + " outside 0.." + std::to_string(seqs_.size() - 1));
    }
    return seq;
}

void flas_runtime::reset(int seq) {
    flas_seq & s = seqs_[check_seq(seq)];
    llama_memory_seq_rm(llama_get_memory(ctx_.get()), seq, -1, -1);
    s.n_past = 0;
    s.epoch++;
    s.logits_row = -1;
    steering_->clear_trace(seq);
}

void flas_runtime::rewind(int seq, int n_keep) {
    flas_seq & s = seqs_[check_seq(seq)];
    if (n_keep < 0 || n_keep > s.n_past) {
        throw std::invalid_argument("rewind: n_keep " + std::to_string(n_keep) + " outside 0.." + std::to_string(s.n_past));
    }
    llama_memory_seq_rm(llama_get_memory(ctx_.get()), seq, n_keep, -1);
    s.n_past = n_keep;  // the flow caches past n_keep are overwritten before they are read again
    s.epoch++;
    s.logits_row = -1;
}

void flas_runtime::decode(const std::vector<flas_seq_tokens> & batch) {
    if (batch.empty()) {
        throw std::invalid_argument("decode: no tokens");
    }
    std::vector<bool> seen(seqs_.size(), false);
    size_t n_total = 0;
    const int n_vocab_ = n_vocab();
    for (const flas_seq_tokens & e : batch) {
        const flas_seq & s = seqs_[check_seq(e.seq)];
        if (seen[e.seq]) {
            throw std::invalid_argument("decode: sequence " + std::to_string(e.seq) + " appears twice in one batch");
        }
        seen[e.seq] = true;
        if (e.tokens.empty()) {
            throw std::invalid_argument("decode: no tokens for sequence " + std::to_string(e.seq));
        }
        if (s.n_past + (int) e.tokens.size() > n_ctx_seq_) {
            throw std::invalid_argument("sequence " + std::to_string(e.seq) + " would hold " +
                                        std::to_string(s.n_past + e.tokens.size()) + " tokens but a sequence holds " +
                                        std::to_string(n_ctx_seq_) + "; raise n_ctx");
        }
        for (llama_token t : e.tokens) {
            if (t < 0 || t >= n_vocab_) {
                throw std::invalid_argument("token id " + std::to_string(t) + " outside the vocabulary");
            }
        }
        n_total += e.tokens.size();
    }
    if (batch.size() > 1 && n_total > (size_t) params_.n_batch) {
        throw std::invalid_argument("decode: " + std::to_string(n_total) + " tokens of several sequences exceed n_batch " +
                                    std::to_string(params_.n_batch));
    }
    for (flas_seq & s : seqs_) {  // llama.cpp's logits are those of this decode only
        s.logits_row = -1;
    }

    llama_batch lb = llama_batch_init(params_.n_batch, 0, 1);
    struct batch_owner { llama_batch & b; ~batch_owner() { llama_batch_free(b); } } owner{lb};
    std::vector<flas_seq_rows> entries;
    if (batch.size() == 1) {  // one sequence: split into chunks of n_batch
        const flas_seq_tokens & e = batch[0];
        for (size_t i = 0; i < e.tokens.size(); i += params_.n_batch) {
            const int n = (int) std::min<size_t>(params_.n_batch, e.tokens.size() - i);
            lb.n_tokens = 0;
            entries = {{e.seq, 0, n, seqs_[e.seq].n_past}};
            for (int j = 0; j < n; ++j) {
                lb.token[j] = e.tokens[i + j];
            }
            decode_one(entries, lb);
        }
        return;
    }
    int row = 0;
    for (const flas_seq_tokens & e : batch) {
        entries.push_back({e.seq, row, (int) e.tokens.size(), seqs_[e.seq].n_past});
        for (llama_token t : e.tokens) {
            lb.token[row++] = t;
        }
    }
    decode_one(entries, lb);
}

// One llama_decode of the rows in `batch.token` laid out as `entries`.
void flas_runtime::decode_one(const std::vector<flas_seq_rows> & entries, llama_batch & batch) {
    int n_rows = 0;
    for (const flas_seq_rows & e : entries) {
        for (int j = 0; j < e.n; ++j) {
            const int r = e.row0 + j;
            batch.pos[r]       = e.p0 + j;
            batch.n_seq_id[r]  = 1;
            batch.seq_id[r][0] = e.seq;
            batch.logits[r]    = j == e.n - 1;
        }
        n_rows += e.n;
    }
    batch.n_tokens = n_rows;
    entries_ = entries;
    cursor_  = 0;
    error_.clear();
    failed_.seqs.clear();
    const int32_t ret = llama_decode(ctx_.get(), batch);
    llama_synchronize(ctx_.get());  // a device computes asynchronously: the step ends when its results are in
    entries_.clear();
    if (ret != 0) {
        throw std::runtime_error("llama_decode failed with status " + std::to_string(ret) +
                                 (error_.empty() ? "" : ": " + error_));
    }
    for (const flas_seq_rows & e : entries) {
        seqs_[e.seq].n_past    += e.n;
        seqs_[e.seq].epoch++;
        seqs_[e.seq].logits_row = e.row0 + e.n - 1;
    }
    if (!error_.empty()) {
        throw std::runtime_error("steering failed: " + error_);
    }
    if (!failed_.seqs.empty()) {
        std::vector<int> failed;
        failed.swap(failed_.seqs);
        throw flas_seq_failure(std::move(failed), failed_.why);
    }
    if (steering_->active() && cursor_ != n_rows) {
        throw std::runtime_error("the eval callback saw " + std::to_string(cursor_) + " rows of " + target_name_ +
                                 " for " + std::to_string(n_rows) + " tokens");
    }
}

std::vector<float> flas_runtime::logits(int seq) const {
    const flas_seq & s = seqs_.at(check_seq(seq));
    const float * l = s.logits_row >= 0 ? llama_get_logits_ith(ctx_.get(), s.logits_row) : nullptr;
    if (l == nullptr) {
        throw std::runtime_error("no logits for sequence " + std::to_string(seq) + ": decode a token first");
    }
    return std::vector<float>(l, l + n_vocab());
}

void flas_runtime::sampler_init(int seq, const flas_sampling_params & sp) {
    seqs_[check_seq(seq)].sampler.reset(flas_sampler_chain_init(sp, n_vocab(), n_ctx_seq_));
}

llama_token flas_runtime::sample(int seq) {
    flas_seq & s = seqs_[check_seq(seq)];
    if (!s.sampler) {
        throw std::runtime_error("sample: call sampler_init for sequence " + std::to_string(seq) + " first");
    }
    if (s.logits_row < 0) {
        throw std::runtime_error("sample: no logits for sequence " + std::to_string(seq) + ": decode a token first");
    }
    return llama_sampler_sample(s.sampler.get(), ctx_.get(), s.logits_row);
}

// ---------------------------------------------------------------------------------------------
// layer L's output in the eval callback, handed to the steering
// ---------------------------------------------------------------------------------------------

bool flas_runtime::app_eval(ggml_tensor * t, bool ask) {
    if (params_.cb_eval == nullptr || probing_) {
        return ask ? false : true;
    }
    if (ask) {
        const bool want = params_.cb_eval(t, true, params_.cb_eval_user_data);
        app_asked_ = want ? t : nullptr;
        return want;
    }
    return app_asked_ == t ? params_.cb_eval(t, false, params_.cb_eval_user_data) : true;
}

bool flas_runtime::wants(const ggml_tensor * t) const {
    if (probing_) {
        auto * self = const_cast<flas_runtime *>(this);
        if (strcmp(t->name, target_name_.c_str()) == 0 && t->buffer != nullptr) {
            self->layer_dev_ = ggml_backend_buft_get_device(ggml_backend_buffer_get_type(t->buffer));
        }
        // the final norm's weight, for an application's model (no file to read it from): the
        // multiplier of "result_norm" = rms_norm(x) * weight
        if (params_.model != nullptr && strcmp(t->name, "result_norm") == 0 && t->op == GGML_OP_MUL) {
            for (const ggml_tensor * w : {t->src[0], t->src[1]}) {
                if (w != nullptr && w->type == GGML_TYPE_F32 && ggml_nelements(w) == llama_model_n_embd(model_) &&
                    w->buffer != nullptr && ggml_backend_buffer_get_usage(w->buffer) == GGML_BACKEND_BUFFER_USAGE_WEIGHTS) {
                    self->output_norm_.resize(ggml_nelements(w));
                    ggml_backend_tensor_get(w, self->output_norm_.data(), 0, ggml_nbytes(w));
                }
            }
        }
        return false;
    }
    return !entries_.empty() && strcmp(t->name, target_name_.c_str()) == 0 && steering_->active();
}

void flas_runtime::on_layer_output(ggml_tensor * t) noexcept {
    try {
        const int H = steering_->flow_hparams().n_embd;
        if (t->type != GGML_TYPE_F32 || t->ne[0] != H || !ggml_is_contiguous(t)) {
            throw std::runtime_error(target_name_ + " is not a contiguous f32 [" + std::to_string(H) + ", n] tensor");
        }
        const int n = (int) t->ne[1];
        const int row0 = cursor_;
        cursor_ += n;
        steer_rows(t, row0, n);
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

// Rows row0 .. row0+n-1 of the batch are in t: each sequence's among them, to the steering.
void flas_runtime::steer_rows(ggml_tensor * t, int row0, int n) {
    std::vector<flas_seq_rows> parts;  // the entries' rows within this tensor (row0 relative to t)
    for (const flas_seq_rows & e : entries_) {
        const int a = std::max(e.row0, row0), b = std::min(e.row0 + e.n, row0 + n);
        if (a < b) {
            parts.push_back({e.seq, a - row0, b - a, e.p0 + (a - e.row0)});
        }
    }
    if (before_steer_) {
        for (const flas_seq_rows & part : parts) {
            before_steer_(part.seq);
        }
    }
    steering_->steer(t, parts, failed_);
}

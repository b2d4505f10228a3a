// Where the runtime's parts live: the offload devices llama.cpp is given, the device that
// computes layer L (and so the flow), and what each device holds.
#include "flas-rules.h"
#include "flas-runtime.h"

#include "flas-names.h"
#include "gguf.h"

#include <cstdio>
#include <stdexcept>

// The devices llama.cpp offloads to: the given list (null-terminated), or every accelerator.
static std::vector<ggml_backend_dev_t> offload_devices(const std::vector<ggml_backend_dev_t> & given) {
    if (given.empty()) {
        return flas_local_accelerators();
    }
    std::vector<ggml_backend_dev_t> out;
    std::copy_if(given.begin(), given.end(), std::back_inserter(out), [](ggml_backend_dev_t d) { return d != nullptr; });
    return out;
}

// llama.cpp's model parameters for `params`; devices and split are the storage they point into.
static llama_model_params base_model_params(const flas_runtime_params & params, std::vector<ggml_backend_dev_t> & devices,
                                            std::vector<float> & split) {
    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = params.n_gpu_layers;
    mparams.main_gpu     = params.main_gpu;
    // RPC devices first, then this machine's accelerators (llama.cpp's own order); nothing
    // is registered globally, so another model in this process is not given these servers.
    devices = flas_rpc_devices(params.rpc_servers);
    if (!devices.empty()) {
        for (ggml_backend_dev_t dev : flas_local_accelerators()) {
            devices.push_back(dev);
        }
        devices.push_back(nullptr);
        mparams.devices = devices.data();
    }
    if (!params.tensor_split.empty()) {
        const size_t max_dev = llama_max_devices();
        if (params.tensor_split.size() > max_dev) {
            throw std::invalid_argument("tensor_split has " + std::to_string(params.tensor_split.size()) +
                                        " entries; llama.cpp takes at most " + std::to_string(max_dev));
        }
        for (float f : params.tensor_split) {
            if (!(f >= 0.0f) || f > 1e30f) {
                throw std::invalid_argument("tensor_split entries must be finite and >= 0");
            }
        }
        split.assign(max_dev, 0.0f);
        std::copy(params.tensor_split.begin(), params.tensor_split.end(), split.begin());
        mparams.tensor_split = split.data();
    }
    if (params.main_gpu < 0 || (params.main_gpu > 0 && params.main_gpu >= (int) offload_devices(devices).size())) {
        throw std::invalid_argument("main_gpu " + std::to_string(params.main_gpu) + " is not an offload device index");
    }
    return mparams;
}

llama_model_params flas_runtime::model_params() { return base_model_params(params_, devices_, tensor_split_); }

// llama.cpp does not say which device computes a layer: decode one token and look at the
// buffer of layer L's output in the eval callback (the scheduler places it with its weights).
// An application's model is probed whatever its placement (and gives its final norm there).
ggml_backend_dev_t flas_runtime::probe_layer_device() {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (params_.n_gpu_layers == 0 && params_.model == nullptr) {
        return cpu;
    }
    llama_token tok = llama_vocab_bos(vocab_);
    if (tok < 0) {
        tok = 0;
    }
    llama_batch batch = llama_batch_get_one(&tok, 1);
    probing_   = true;
    layer_dev_ = nullptr;
    const int32_t ret = llama_decode(ctx_.get(), batch);
    probing_ = false;
    llama_memory_seq_rm(llama_get_memory(ctx_.get()), 0, -1, -1);
    if (ret != 0) {
        throw std::runtime_error("llama_decode failed with status " + std::to_string(ret) + " on a first token");
    }
    return layer_dev_ != nullptr ? layer_dev_ : cpu;
}

std::vector<flas_device_memory> flas_runtime::memory() const {
    std::vector<flas_device_memory> rows = flas_base_memory(ctx_.get());
    steering_->add_memory(rows);
    return rows;
}

// Every sequence steered with n_steps: its flow cache allocated and the compute buffer
// reserved for the largest pass, so that memory() shows the most steering will hold.
void flas_runtime::reserve_steering(int n_steps) {
    if (n_steps < 1 || n_steps > FLAS_MAX_STEPS) {
        throw std::invalid_argument("n_steps must be in 1.." + std::to_string(FLAS_MAX_STEPS));
    }
    for (int seq = 0; seq < (int) seqs_.size(); ++seq) {
        flas_seq & s = seqs_[seq];
        if (steering_->grow_cache(seq, n_steps)) {
            s.n_past = 0;  // what it held was computed with the old cache
            s.epoch++;
            llama_memory_seq_rm(llama_get_memory(ctx_.get()), seq, -1, -1);
        }
        steering_->reserve(seq, n_steps);
    }
}

// ---------------------------------------------------------------------------------------------
// the memory a placement would take, without allocating it
// ---------------------------------------------------------------------------------------------

std::vector<flas_device_memory> flas_estimate_buffers(const flas_runtime_params & params, int n_steps) {
    flas_check_params(params);
    if (params.set_llama_log) {
        flas_log_init(params.verbose);
    }
    flas_device_guard guard;
    std::vector<ggml_backend_dev_t> devices;
    std::vector<float> split;
    llama_model_params mparams = base_model_params(params, devices, split);
    mparams.no_alloc  = true;  // llama.cpp simulates its buffers
    mparams.load_mode = LLAMA_LOAD_MODE_NONE;
    llama_model_ptr model(llama_model_load_from_file(params.base_path.c_str(), mparams));
    if (!model) {
        throw std::invalid_argument("llama.cpp could not read the base model " + params.base_path);
    }
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx      = params.n_ctx;
    cparams.n_batch    = params.n_batch;
    cparams.n_ubatch   = params.n_batch;
    cparams.n_seq_max  = params.n_seq;
    cparams.kv_unified = true;
    if (params.exact) {
        cparams.type_k = GGML_TYPE_F32;
        cparams.type_v = GGML_TYPE_F32;
        cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    llama_context_ptr ctx(llama_init_from_model(model.get(), cparams));
    if (!ctx) {
        throw std::runtime_error("llama.cpp could not plan a context of n_ctx " + std::to_string(params.n_ctx));
    }
    std::vector<flas_device_memory> rows = flas_base_memory(ctx.get());

    // the flow goes with layer L: to the offload device when llama.cpp offloads layer L
    const flas_flow_hparams hp = flas_flow_read_hparams(params.flow_path);
    const int n_layer = llama_model_n_layer(model.get());
    const int ngl = params.n_gpu_layers < 0 ? n_layer + 1 : params.n_gpu_layers;
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (ngl > 0 && hp.layer >= n_layer - ngl) {
        const std::vector<ggml_backend_dev_t> offload = offload_devices(devices);
        if (offload.size() != 1) {
            throw std::invalid_argument("the memory estimate places the flow on one offload device, but there are " +
                                        std::to_string(offload.size()) + "; choose n_gpu_layers and tensor_split yourself");
        }
        dev = offload[0];
    }
    ggml_backend_buffer_type_t buft = ggml_backend_dev_buffer_type(dev);
    flas_device_memory & flow = flas_memory_row(rows, dev);

    ggml_context * meta = nullptr;
    gguf_init_params gp = { /*no_alloc =*/ true, /*ctx =*/ &meta };
    gguf_context * gctx = gguf_init_from_file(params.flow_path.c_str(), gp);
    if (gctx == nullptr) {
        throw std::invalid_argument("cannot read the flow GGUF " + params.flow_path);
    }
    gguf_free(gctx);
    ggml_context_ptr meta_owner(meta);
    flow.flow_weights = ggml_backend_alloc_ctx_tensors_from_buft_size(meta, buft);
    const int n_ctx_seq = (int) llama_n_ctx(ctx.get()) / params.n_seq;
    char cross_out_name[64];
    snprintf(cross_out_name, sizeof(cross_out_name), FLAS_TN_CROSS_OUT, 0);
    const ggml_tensor * cross_out = ggml_get_tensor(meta, cross_out_name);  // absent: no cross-attention
    flow.flow_caches = flas_concept_state_bytes(hp, buft, std::max(params.concept_cache, params.n_seq), params.n_seq,
                                                flas_state_type(params.exact),
                                                cross_out != nullptr ? ggml_nbytes(cross_out) : 0) +
                       (size_t) params.n_seq * flas_flow_cache_bytes(hp, buft, n_ctx_seq, n_steps,
                                                                    flas_state_type(params.exact));
    return rows;  // the flow's compute buffer is not estimated: see reserve_steering
}

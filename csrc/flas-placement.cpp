// Where the runtime's parts live: the offload devices llama.cpp is given, the device that
// computes layer L (and so the flow), and what each device holds.
#include "flas-runtime.h"

#include <stdexcept>

llama_model_params flas_runtime::model_params() {
    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = params_.n_gpu_layers;
    mparams.main_gpu     = params_.main_gpu;
    // RPC devices first, then this machine's accelerators (llama.cpp's own order); nothing
    // is registered globally, so another model in this process is not given these servers.
    devices_ = flas_rpc_devices(params_.rpc_servers);
    if (!devices_.empty()) {
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            const auto type = ggml_backend_dev_type(dev);
            if (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) {
                devices_.push_back(dev);
            }
        }
        devices_.push_back(nullptr);
        mparams.devices = devices_.data();
    }
    if (!params_.tensor_split.empty()) {
        const size_t max_dev = llama_max_devices();
        if (params_.tensor_split.size() > max_dev) {
            throw std::invalid_argument("tensor_split has " + std::to_string(params_.tensor_split.size()) +
                                        " entries; llama.cpp takes at most " + std::to_string(max_dev));
        }
        for (float f : params_.tensor_split) {
            if (!(f >= 0.0f) || f > 1e30f) {
                throw std::invalid_argument("tensor_split entries must be finite and >= 0");
            }
        }
        tensor_split_.assign(max_dev, 0.0f);
        std::copy(params_.tensor_split.begin(), params_.tensor_split.end(), tensor_split_.begin());
        mparams.tensor_split = tensor_split_.data();
    }
    const int n_offload_devices = devices_.empty() ? (int) ggml_backend_dev_count() : (int) devices_.size() - 1;
    if (params_.main_gpu < 0 || (params_.main_gpu > 0 && params_.main_gpu >= n_offload_devices)) {
        throw std::invalid_argument("main_gpu " + std::to_string(params_.main_gpu) + " is not an offload device index");
    }
    return mparams;
}

// llama.cpp does not say which device computes a layer: decode one token and look at the
// buffer of layer L's output in the eval callback (the scheduler places it with its weights).
ggml_backend_dev_t flas_runtime::probe_layer_device() {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (params_.n_gpu_layers == 0) {
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

std::string flas_runtime::flow_device() const { return ggml_backend_dev_name(ggml_backend_get_device(backend_.get())); }

std::vector<flas_device_memory> flas_runtime::memory() const {
    std::vector<flas_device_memory> rows = flas_base_memory(ctx_.get());
    flas_device_memory & flow = flas_memory_row(rows, ggml_backend_get_device(backend_.get()));
    flow.flow_weights = flow_.buf ? ggml_backend_buffer_get_size(flow_.buf.get()) : 0;
    flow.flow_caches  = concept_.buf ? ggml_backend_buffer_get_size(concept_.buf.get()) : 0;
    for (const flas_seq & s : seqs_) {
        flow.flow_caches += s.cache.buf ? ggml_backend_buffer_get_size(s.cache.buf.get()) : 0;
    }
    flow.flow_compute = allocr_ ? ggml_gallocr_get_buffer_size(allocr_.get(), 0) : 0;
    return rows;
}

#include "flas-info.h"
#include "flas-platform.h"

#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

#include <fstream>
#include <stdexcept>


const char * flas_device_type_name(int type) {
    switch ((enum ggml_backend_dev_type) type) {
        case GGML_BACKEND_DEVICE_TYPE_CPU:   return "cpu";
        case GGML_BACKEND_DEVICE_TYPE_GPU:   return "gpu";
        case GGML_BACKEND_DEVICE_TYPE_IGPU:  return "igpu";
        case GGML_BACKEND_DEVICE_TYPE_ACCEL: return "accel";
        default:                             return "unknown";
    }
}

flas_build_facts flas_build_facts_get() {
    flas_build_facts bi;
    bi.ggml_version = ggml_version();
    bi.ggml_commit  = ggml_commit();
    bi.system_info  = llama_print_system_info();
    for (size_t i = 0; i < ggml_backend_reg_count(); ++i) {
        bi.backends.emplace_back(ggml_backend_reg_name(ggml_backend_reg_get(i)));
    }
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        flas_device_facts d;
        d.name        = ggml_backend_dev_name(dev);
        d.description = ggml_backend_dev_description(dev);
        d.type        = flas_device_type_name(ggml_backend_dev_type(dev));
        ggml_backend_dev_memory(dev, &d.memory_free, &d.memory_total);
        bi.devices.push_back(d);
    }
    bi.libllama_path     = flas_shared_object_of(reinterpret_cast<const void *>(&llama_print_system_info));
    bi.libggml_path      = flas_shared_object_of(reinterpret_cast<const void *>(&ggml_backend_dev_count));
    bi.libggml_base_path = flas_shared_object_of(reinterpret_cast<const void *>(&ggml_version));
    return bi;
}

void flas_model_quantize(const std::string & path_in, const std::string & path_out, int ftype, int nthread) {
    if (!std::ifstream(path_in).good()) {
        throw std::invalid_argument("quantize: input GGUF not readable: " + path_in);
    }
    llama_model_quantize_params params = llama_model_quantize_default_params();
    params.ftype   = static_cast<enum llama_ftype>(ftype);
    params.nthread = nthread;
    if (llama_model_quantize(path_in.c_str(), path_out.c_str(), &params) != 0) {
        throw std::runtime_error("quantize: llama.cpp failed to quantize " + path_in + " to ftype " +
                                 std::to_string(ftype) + " (see the llama.cpp log above)");
    }
}

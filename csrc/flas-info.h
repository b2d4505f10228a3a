// Build information and model utilities that need llama.cpp but no flow.
#pragma once

#include <string>
#include <vector>

struct flas_device_facts {
    std::string name;         // ggml device name, e.g. "CPU", "CUDA0"
    std::string description;  // human-readable, e.g. the GPU model
    std::string type;         // "cpu", "gpu", "igpu" or "accel"
    size_t      memory_free;  // bytes, as reported by the backend (0 if unknown)
    size_t      memory_total;
};

struct flas_build_facts {
    std::string ggml_version;           // ggml_version(), e.g. "0.25.3"
    std::string ggml_commit;            // ggml_commit()
    std::string system_info;            // llama_print_system_info(): CPU features, backends
    std::vector<std::string> backends;  // registered ggml backends, e.g. {"CPU"} or {"CUDA", "CPU"}
    std::vector<flas_device_facts> devices;
    std::string libllama_path;          // the shared objects actually loaded in this process
    std::string libggml_path;
    std::string libggml_base_path;
};

flas_build_facts flas_build_facts_get();

// "cpu", "gpu", "igpu", "accel" or "unknown"
const char * flas_device_type_name(int ggml_backend_dev_type);

// Quantize a GGUF with llama.cpp's own quantizer (llama_model_quantize).
// ftype is a llama_ftype value; nthread <= 0 uses all cores.
// Throws std::invalid_argument for a missing input, std::runtime_error if llama.cpp fails.
void flas_model_quantize(const std::string & path_in, const std::string & path_out, int ftype, int nthread);

#include "flas-base-gguf.h"

#include "ggml-cpp.h"
#include "gguf.h"

#include <cmath>
#include <fstream>
#include <stdexcept>

std::vector<float> flas_base_gguf_read_output_norm(const std::string & path) {
    ggml_context * meta = nullptr;
    gguf_init_params gp = { /*no_alloc =*/ true, /*ctx =*/ &meta };
    gguf_context_ptr gctx(gguf_init_from_file(path.c_str(), gp));
    if (!gctx) {
        throw std::invalid_argument("llama.cpp could not load the base model " + path + " (not a readable GGUF file)");
    }
    ggml_context_ptr meta_owner(meta);
    // llama.cpp's converter never writes another type
    for (ggml_tensor * t = ggml_get_first_tensor(meta); t != nullptr; t = ggml_get_next_tensor(meta, t)) {
        if (ggml_n_dims(t) == 1 && t->type != GGML_TYPE_F32) {
            throw std::invalid_argument("base model " + path + ": vector '" + ggml_get_name(t) + "' is " +
                                        ggml_type_name(t->type) + ", but llama.cpp computes norms and biases with f32 "
                                        "vectors only; convert the model again (flas-convert base, or llama.cpp's "
                                        "convert_hf_to_gguf.py keep them f32)");
        }
    }

    const int64_t id = gguf_find_tensor(gctx.get(), "output_norm.weight");
    const ggml_tensor * t = id >= 0 ? ggml_get_tensor(meta, "output_norm.weight") : nullptr;
    if (t == nullptr || ggml_n_dims(t) != 1) {
        throw std::invalid_argument("base model " + path + " has no final norm (a vector output_norm.weight) "
                                    "for the concept encoder");
    }
    std::vector<float> weight(ggml_nelements(t));  // f32: checked above
    std::ifstream file(path, std::ios::binary);
    file.seekg(gguf_get_data_offset(gctx.get()) + gguf_get_tensor_offset(gctx.get(), id));
    file.read(reinterpret_cast<char *>(weight.data()), ggml_nbytes(t));
    if (!file) {
        throw std::invalid_argument("base model " + path + ": truncated output_norm.weight");
    }
    for (float w : weight) {
        if (!std::isfinite(w)) {
            throw std::invalid_argument("base model " + path + ": output_norm.weight holds a non-finite value (NaN or Inf)");
        }
    }
    return weight;
}

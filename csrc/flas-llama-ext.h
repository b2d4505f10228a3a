// llama.cpp's per-buffer-type memory accounting, from its staging header src/llama-ext.h,
// which llama-cpp-python does not install. libllama exports these (C++ linkage); the
// declarations below must match the pinned llama.cpp (llama-cpp-python 0.3.36, see
// CMakeLists.txt): a version bump must re-check them against src/llama-ext.h.
#pragma once

#include "llama.h"

#include <cstddef>
#include <map>

struct llama_memory_breakdown_data {
    size_t model   = 0;  // the model's weights
    size_t context = 0;  // the context's memory (KV cache)
    size_t compute = 0;  // compute buffers
};

using llama_memory_breakdown = std::map<ggml_backend_buffer_type_t, llama_memory_breakdown_data>;

LLAMA_API llama_memory_breakdown llama_get_memory_breakdown(const struct llama_context * ctx);

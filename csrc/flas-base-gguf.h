#pragma once

// What the runtime reads from the base model's GGUF itself (llama.cpp does not expose a model's
// tensors), in one pass over the file's header.

#include <string>
#include <vector>

// The final norm's weight, output_norm.weight as stored (Gemma: 1 + w), which the concept
// encoder ends with (FLAS_SPEC.md 2); checked finite. Refuses first a file llama.cpp would
// abort on: its CPU kernels multiply and add f32 vectors only (norm weights, biases).
std::vector<float> flas_base_gguf_read_output_norm(const std::string & path);

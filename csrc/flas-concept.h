// The concept encoder (FLAS_SPEC.md 2): a concept's tokens through the base model's layers 0
// and 1 on a side llama_context of the same model, the base's final norm, then each flow
// block's cross-attention keys and values written into one slot of the concept state.
//
// Ownership: borrows the llama_model, the flow and the backend (the runtime's, which outlive
// it); each encoding creates and frees its own side context, so nothing stays resident.
#pragma once

#include "flas-flow.h"
#include "flas-state.h"

#include "llama.h"

#include <vector>

class flas_concept_encoder {
  public:
    // cparams: the base context's settings (threads, KV types); output_norm: the base model's
    // final norm weight [H] as the flow's family stores it (1 + w for Gemma, w otherwise).
    flas_concept_encoder(llama_model * model, const flas_flow & flow, ggml_backend_t backend,
                         llama_context_params cparams, std::vector<float> output_norm);

    // The concept's encoding c = final_norm(layer1(layer0(tokens))) [K, H] row-major (FLAS_SPEC.md
    // 2), what the cross-attention reads; tokens: BOS first, at most concept_max_len.
    std::vector<float> rows(std::vector<llama_token> tokens);
    // Encodes tokens (as rows) into slot `slot` of state: each block's cross-attention keys and values.
    void encode(std::vector<llama_token> tokens, flas_concept_state & state, int slot);

    // the side context's callbacks
    bool on_node(ggml_tensor * t, bool ask) noexcept;
    bool captured() const { return captured_; }

  private:
    llama_model *        model_;
    const flas_flow &    flow_;
    ggml_backend_t       backend_;
    llama_context_params cparams_;
    std::vector<float>   output_norm_;
    std::vector<float>   rows_;           // captured l_out-1 rows of the concept, [K, H]
    bool                 captured_ = false;
};

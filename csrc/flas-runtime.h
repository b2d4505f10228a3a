// The steering runtime: a llama.cpp model and context whose eval callback replaces the output
// of decoder layer L by N Euler steps of the FLAS flow (FLAS_SPEC.md section 3).
//
// Ownership: the runtime creates and owns the llama_model, its llama_context(s), the flow
// weights, the concept state and the flow KV cache. Not thread-safe: one caller at a time.
// Positions are 0-based; a sequence is the one llama.cpp sequence 0.
#pragma once

#include "flas-flow.h"
#include "flas-state.h"

#include "ggml-alloc.h"
#include "ggml-cpp.h"
#include "llama-cpp.h"
#include "llama.h"

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

struct flas_runtime_params {
    std::string base_path;      // base model GGUF (llama.cpp gemma2)
    std::string flow_path;      // flow GGUF (flas-convert flow)
    int  n_ctx        = 4096;
    int  n_batch      = 512;    // tokens per llama_decode call (= n_ubatch, so rows stay in order)
    int  n_gpu_layers = 0;
    int  n_threads    = 0;      // 0: hardware threads
    bool exact        = false;  // f32 KV caches and no flash attention (parity with float32 references)
    bool verbose      = false;  // llama.cpp's informational log
};

// Replaces the flow (tests drive the runtime with an independent reference through it):
// rows_in/rows_out are [n_rows, H] row-major, for positions pos0 .. pos0+n_rows-1.
using flas_steer_hook = std::function<void(const float * rows_in, float * rows_out, int n_rows, int pos0)>;

struct flas_runtime {
    explicit flas_runtime(const flas_runtime_params & params);
    ~flas_runtime();
    flas_runtime(const flas_runtime &) = delete;
    flas_runtime & operator=(const flas_runtime &) = delete;

    // ---- vocabulary ----
    std::vector<llama_token> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    std::string token_to_piece(llama_token token) const;  // raw bytes (may split UTF-8 sequences)
    bool is_eog(llama_token token) const;
    // The model's chat template applied to (role, content) messages, plus the generation prompt.
    std::string apply_chat_template(const std::vector<std::pair<std::string, std::string>> & messages) const;

    // ---- steering (each of these empties the sequence: its caches no longer apply) ----
    // Encodes the concept through the base model (FLAS_SPEC.md 2); returns the token count
    // before truncation to concept_max_len.
    int  set_concept(const std::string & text);
    void set_steering(float flowtime, int n_steps);
    void set_steer_hook(flas_steer_hook hook);  // empty function: back to the ggml flow
    void set_trace(bool on);                    // record layer-L rows before/after steering

    // ---- the sequence ----
    void reset();                                      // empty llama.cpp's memory and the flow caches
    void decode(const std::vector<llama_token> & tokens);  // appends; computes the last token's logits
    void rewind(int n_keep);                           // keep positions 0 .. n_keep-1
    std::vector<float> logits() const;                 // of the last decoded token
    int n_past() const { return n_past_; }

    // ---- sampling: llama.cpp's sampler chain; temperature <= 0 is greedy ----
    void sampler_init(float temperature, int top_k, float top_p, uint32_t seed);
    llama_token sample();

    // ---- facts ----
    const flas_flow_hparams & flow_hparams() const { return flow_.hp; }
    int n_vocab() const;
    int n_embd() const { return flow_.hp.n_embd; }
    int n_ctx() const { return n_ctx_; }
    int concept_tokens() const { return concept_.n_tokens; }
    std::string flow_backend() const;
    const std::vector<float> & trace_unsteered() const { return trace_in_; }
    const std::vector<float> & trace_steered() const { return trace_out_; }

    // called by the eval callbacks
    bool wants(const ggml_tensor * t) const;
    void on_layer_output(ggml_tensor * t) noexcept;
    bool on_concept_node(ggml_tensor * t, bool ask) noexcept;
    bool concept_captured() const { return concept_captured_; }

  private:
    llama_context_params context_params(int n_ctx, int n_batch) const;
    void load_output_norm(const std::string & path);
    void check_compatible(const std::string & base_path, const std::string & flow_path) const;
    void init_concept_context();
    // the graph of one flow pass over n rows at p0, built in graph_meta_ (shared by the
    // worst-case reservation and every real pass, so the two cannot drift apart)
    struct pass_graph {
        ggml_context_ptr ctx;
        ggml_cgraph * gf;
        ggml_tensor * h0, * pos, * mask, * out;
    };
    pass_graph build_pass(int p0, int n, int n_steps, float dt);
    void reserve_compute();
    void run_flow(ggml_tensor * t, int p0, int n);
    bool steering_active() const;
    void compute_time_embeddings();

    flas_runtime_params params_;
    int n_ctx_     = 0;
    int n_threads_ = 0;
    llama_model_ptr   model_;
    llama_context_ptr ctx_;
    llama_context_ptr ctx_concept_;     // side context for concept encoding, created on first use
    llama_sampler_ptr sampler_;
    const llama_vocab * vocab_ = nullptr;

    ggml_backend_ptr   backend_;        // the flow's backend (that of layer L)
    flas_flow          flow_;
    flas_concept_state concept_;
    flas_flow_cache    cache_;
    ggml_gallocr_ptr   allocr_;         // compute buffer, reserved for the worst case
    std::vector<uint8_t> graph_meta_;   // no_alloc context memory for graph building
    std::vector<float> output_norm_;    // base model's final norm weight (1 + w), [H]

    float flowtime_ = 0.0f;
    int   n_steps_  = 0;
    flas_steer_hook hook_;
    bool  trace_ = false;
    std::vector<float> trace_in_, trace_out_;

    std::string target_name_;           // "l_out-<L>"
    int n_past_ = 0;
    int cursor_ = 0;                    // position of the next row the callback will see
    std::string error_;                 // first error inside a callback, raised after llama_decode

    std::vector<float> concept_rows_;   // captured l_out-1 rows of the concept, [K, H]
    bool concept_captured_ = false;
};

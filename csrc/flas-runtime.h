// The steering runtime: a llama.cpp model and context whose eval callback replaces the output
// of decoder layer L by N Euler steps of the FLAS flow (FLAS_SPEC.md section 3), for several
// sequences at once, each with its own concept, strength and caches.
//
// Two parts, as llama-server separates its own: flas_runtime is the llama.cpp host (model,
// context, vocabulary and prompts, decoding, logits and sampling per sequence, placement and
// memory; its eval callback finds layer L's output and hands each sequence's rows over), and
// flas_steering (flas-steering.h) does everything the flow does to them. The steering calls
// below are one-line forwards, so that the engine and the C API see one object.
//
// Ownership: the runtime creates and owns the llama_model, its llama_context and the steering
// (which owns the flow weights, the concept state and every sequence's flow KV cache, and,
// while a concept is encoded, a second context on the same model). Not thread-safe: one caller
// at a time (flas_engine is that caller when it runs). Positions are 0-based per sequence;
// sequences are llama.cpp's sequence ids 0 .. n_seq-1.
#pragma once

#include "flas-device.h"
#include "flas-flow.h"
#include "flas-log.h"
#include "flas-prompt.h"
#include "flas-seq.h"
#include "flas-steering.h"
#include "flas.h"  // struct flas_sampling_params

#include "ggml-cpp.h"
#include "llama-cpp.h"
#include "llama.h"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

struct flas_runtime_params {
    std::string base_path;      // base model GGUF (llama.cpp gemma2)
    std::string flow_path;      // flow GGUF (flas-convert flow)
    int  n_ctx        = 4096;   // llama.cpp's context, shared: each sequence holds n_ctx / n_seq tokens
    int  n_batch      = 512;    // tokens per llama_decode call (= n_ubatch, so rows stay in order)
    int  n_seq        = 1;      // sequences decoded together
    int  concept_cache = 16;    // encoded concepts kept (least recently used evicted)
    int  n_gpu_layers = 0;      // layers on the offload devices (llama.cpp's meaning; < 0: all)
    int  main_gpu     = 0;      // llama.cpp's main_gpu
    std::vector<float> tensor_split;        // llama.cpp's tensor_split (empty: by free memory)
    std::vector<std::string> rpc_servers;   // "host:port" of ggml RPC servers, offload devices first
    // An application's model to steer instead of loading base_path: borrowed, it must outlive
    // the runtime; its placement (devices, layers) is the application's.
    llama_model * model = nullptr;
    // The application's own eval callback, chained: it sees the tensors it asks for as before.
    ggml_backend_sched_eval_callback cb_eval = nullptr;
    void * cb_eval_user_data = nullptr;
    bool set_llama_log = true;  // route llama.cpp's log through flas-cpp's (false: leave the app's)
    int  n_threads    = 0;      // 0: one per physical core (flas_physical_cores)
    bool exact        = false;  // f32 KV caches and no flash attention (parity with float32 references)
    bool verbose      = false;  // llama.cpp's informational log
};

// The tokens one sequence appends in a decode call.
struct flas_seq_tokens {
    int seq = 0;
    std::vector<llama_token> tokens;
};

// What a runtime of `params` would hold per device, from llama.cpp's simulated buffers (no_alloc)
// and the flow's tensor sizes on the device of layer L, with every sequence steered with
// n_steps; nothing is allocated. The flow's compute buffer is not included (flow_compute 0).
std::vector<flas_device_memory> flas_estimate_buffers(const flas_runtime_params & params, int n_steps);

// Some sequences of a decode failed (their steered rows were not finite): their rows were left
// unsteered, the decode of the others completed normally.
struct flas_seq_failure : std::runtime_error {
    flas_seq_failure(std::vector<int> seqs_, const std::string & why) : std::runtime_error(why), seqs(std::move(seqs_)) {}
    std::vector<int> seqs;
};

struct flas_runtime {
    explicit flas_runtime(const flas_runtime_params & params);
    ~flas_runtime();
    flas_runtime(const flas_runtime &) = delete;
    flas_runtime & operator=(const flas_runtime &) = delete;

    // ---- vocabulary (thread-safe: llama.cpp's vocabulary is read-only) ----
    std::vector<llama_token> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    std::string token_to_piece(llama_token token) const;  // raw bytes (may split UTF-8 sequences)
    bool is_eog(llama_token token) const;
    // The prompt as the flow was trained on it, as tokens (flas-prompt.h): refused with
    // flas_context_length when it cannot fit one sequence.
    std::vector<llama_token> prompt_tokens(const std::vector<flas_turn> & turns, bool content_special) const {
        return prompt_->tokens(turns, content_special);
    }
    std::vector<llama_token> text_tokens(const std::string & text, bool parse_special) const {
        return prompt_->text_tokens(text, parse_special);
    }
    // The model's chat template applied to the turns, plus the generation prompt.
    std::string apply_chat_template(const std::vector<flas_turn> & turns) const { return prompt_->apply_template(turns); }

    // ---- steering of one sequence (empties it: its caches no longer apply), by flas_steering ----
    // concept "" or flowtime 0: unsteered. The concept is encoded through the base model
    // (FLAS_SPEC.md 2) unless the concept table holds it. Returns the concept's token count
    // before truncation to concept_max_len (0 without a concept).
    int set_steering(int seq, const std::string & concept, float flowtime, int n_steps) {
        return steering_->set_steering(check_seq(seq), concept, flowtime, n_steps);
    }
    // The sequence's steering from its next rows on, what it holds kept as computed (a running
    // request's change). With a flow that has self-attention, whose later rows read the earlier
    // ones' Euler steps, only a steered sequence may change, and not its n_steps; unsteered it
    // then keeps its concept at T = 0. std::invalid_argument (nothing changed) otherwise.
    int change_steering(int seq, const std::string & concept, float flowtime, int n_steps) {
        return steering_->change_steering(check_seq(seq), concept, flowtime, n_steps);
    }
    // The sequence's strength from its next rows on, its concept and steps as they are (set_steering
    // gave it the concept when T > 0): what it holds stays, computed at the flowtimes it had.
    void set_flowtime(int seq, float flowtime) { steering_->set_flowtime(check_seq(seq), flowtime); }
    // The sequence steers again with the concept it holds: it may not be evicted until release.
    void pin(int seq) { steering_->pin(check_seq(seq)); }
    // Encodes a concept into the concept table ahead of the requests that will steer with it
    // (they then find it encoded); may evict an idle sequence's concept. Returns its token count.
    int prepare_concept(const std::string & concept) { return steering_->prepare_concept(concept); }
    // The concept's encoding [K, n_embd] (FLAS_SPEC.md 2) as steering computes it; the table is untouched.
    std::vector<float> concept_rows(const std::string & concept) { return steering_->concept_rows(concept); }
    // The sequence is idle: its concept may be evicted for another (which empties the sequence).
    void release(int seq) { steering_->release(check_seq(seq)); }
    // Whether the sequence is steered as given (and so holds rows computed under it).
    bool holds_steering(int seq, const std::string & concept, float flowtime, int n_steps) const {
        return steering_->holds_steering(check_seq(seq), concept, flowtime, n_steps);
    }
    // every sequence; empty function: back to the ggml flow
    void set_steer_hook(flas_row_hook hook) { steering_->set_steer_hook(std::move(hook)); }
    // Called inside llama_decode, in the eval callback, for each sequence whose layer-L rows are
    // about to be steered: the last moment their settings may change for this very step (the
    // scheduler applies a running request's new flowtime there). It may call set_flowtime.
    void set_before_steer(std::function<void(int seq)> fn) { before_steer_ = std::move(fn); }
    // record its layer-L rows before/after steering
    void set_trace(int seq, bool on) { steering_->set_trace(check_seq(seq), on); }
    // measure how far the flow moves its last row in each decode (||h' - h|| / ||h||)
    void set_telemetry(int seq, bool on) { steering_->set_telemetry(check_seq(seq), on); }
    // that of its last decode, then 0 (0: no decode steered it)
    float take_displacement(int seq) { return steering_->take_displacement(check_seq(seq)); }

    // ---- sequences ----
    void reset(int seq);                                   // empty its llama.cpp memory and flow caches
    void rewind(int seq, int n_keep);                      // keep positions 0 .. n_keep-1
    // Appends tokens to their sequences (distinct) in one llama_decode and computes the logits
    // of each entry's last token. More than n_batch tokens only for a single entry (split).
    void decode(const std::vector<flas_seq_tokens> & batch);
    std::vector<float> logits(int seq) const;              // of its last decoded token
    int n_past(int seq) const { return seqs_.at(check_seq(seq)).n_past; }
    uint64_t epoch(int seq) const { return seqs_.at(check_seq(seq)).epoch; }

    // ---- sampling: llama.cpp's sampler chain per sequence; temperature <= 0 is greedy ----
    void sampler_init(int seq, const flas_sampling_params & sampling);
    llama_token sample(int seq);

    // ---- facts ----
    const flas_flow_hparams & flow_hparams() const { return steering_->flow_hparams(); }
    int n_vocab() const;
    int n_ctx() const { return n_ctx_; }             // llama.cpp's whole context
    int n_ctx_seq() const { return n_ctx_seq_; }     // positions one sequence may hold
    int n_seq() const { return (int) seqs_.size(); }
    int n_batch() const { return params_.n_batch; }
    flas_concept_stats stats() const { return steering_->stats(); }
    std::string flow_backend() const { return steering_->backend_name(); }
    std::string flow_device() const { return steering_->device_name(); }  // the device computing layer L and the flow
    const std::vector<std::string> & rpc_servers() const { return params_.rpc_servers; }
    // Bytes per device: the base model's buffers (llama.cpp's accounting) and the flow's.
    std::vector<flas_device_memory> memory() const;
    // Allocates what steering every sequence with n_steps holds (flow caches, compute buffer);
    // sequences whose cache grows are emptied.
    void reserve_steering(int n_steps);
    const std::vector<float> & trace_unsteered(int seq) const { return steering_->trace_in(check_seq(seq)); }
    const std::vector<float> & trace_steered(int seq) const { return steering_->trace_out(check_seq(seq)); }

    // called by the eval callbacks
    bool wants(const ggml_tensor * t) const;
    bool app_eval(ggml_tensor * t, bool ask);  // the application's chained callback
    void on_layer_output(ggml_tensor * t) noexcept;

  private:
    int  check_seq(int seq) const;
    llama_context_params context_params(int n_ctx, int n_batch, int n_seq) const;
    llama_model_params model_params();           // fills devices_ and tensor_split_
    ggml_backend_dev_t probe_layer_device();
    void check_compatible(const flas_flow_hparams & hp, const std::string & base_path, const std::string & flow_path) const;
    void decode_one(const std::vector<flas_seq_rows> & entries, llama_batch & batch);
    void steer_rows(ggml_tensor * t, int row0, int n);

    flas_runtime_params params_;
    int n_ctx_     = 0;
    int n_ctx_seq_ = 0;
    int n_threads_ = 0;
    llama_model_ptr   owned_model_;     // when the runtime loaded it
    llama_model *     model_ = nullptr; // owned_model_, or the application's
    llama_context_ptr ctx_;
    const llama_vocab * vocab_ = nullptr;
    std::unique_ptr<flas_prompt> prompt_;

    // after the flow is loaded on layer L's device and the final norm is read; freed before the context
    std::unique_ptr<flas_steering> steering_;
    std::vector<flas_seq> seqs_;
    std::vector<float> output_norm_;    // the base model's final norm weight, [H], until the steering takes it

    std::function<void(int seq)> before_steer_;
    std::string target_name_;           // "l_out-<L>"
    std::vector<flas_seq_rows> entries_;  // the llama_decode under way
    int cursor_ = 0;                    // batch row of the next row the callback will see
    std::string error_;                 // first error inside a callback, raised after llama_decode
    flas_pass_failures failed_;         // sequences whose steered rows were not finite in this decode
    bool probing_ = false;              // the callback looks for layer L's device (and the final norm)
    const ggml_tensor * app_asked_ = nullptr;  // the last node the application's callback wanted
    ggml_backend_dev_t layer_dev_ = nullptr;
    std::vector<ggml_backend_dev_t> devices_;  // the offload devices given to llama.cpp, null-terminated
    std::vector<float> tensor_split_;          // llama_max_devices() entries

};

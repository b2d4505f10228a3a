// The flow steering beside the llama.cpp host (flas_runtime): given the rows of decoder layer
// L's output, it replaces them by N Euler steps of the FLAS flow (FLAS_SPEC.md section 3), for
// several sequences at once, each with its own concept, strength and caches.
//
// Ownership: the steering owns the flow's backend (that of the device computing layer L, chosen
// by the host) and the flow weights on it, the concept state, the concept table and encoder,
// every sequence's steering (flow caches, trace) and the flow's compute buffer. It borrows the
// host's llama_model (the encoder runs concepts through it). It knows no llama_context: when a
// sequence's rows no longer apply (its steering changed, its concept was evicted) it asks the
// host to empty it through the host's reset. Not thread-safe: its host's caller is its caller.
// Sequences are the host's ids 0 .. n_seq-1, checked by the host.
#pragma once

#include "flas-concept.h"
#include "flas-device.h"
#include "flas-flow.h"
#include "flas-seq.h"
#include "flas-state.h"

#include "ggml-alloc.h"
#include "ggml-cpp.h"
#include "llama.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

// Rows of one flow pass at most: a prompt chunk of n_batch rows is steered in passes of this
// many, which bounds the compute buffer (attention scores grow with rows x positions) at a
// negligible cost in prefill speed.
#define FLAS_MAX_PASS_ROWS 64

// Replaces the flow (tests drive the runtime with an independent reference through it):
// rows_in/rows_out are [n_rows, H] row-major, for positions pos0 .. pos0+n_rows-1 of one sequence.
using flas_row_hook = std::function<void(const float * rows_in, float * rows_out, int n_rows, int pos0)>;

struct flas_concept_stats {
    int64_t concepts_encoded = 0;  // concept encodings run (cache misses)
    int64_t concept_hits     = 0;  // steerings that found their concept encoded
    int     concepts_cached  = 0;
};

// The rows of one sequence in a tensor of layer L's output: rows row0 .. row0+n-1 at
// positions p0 .. p0+n-1.
struct flas_seq_rows {
    int seq, row0, n, p0;
};

// Sequences whose steered rows were not finite in a decode: their rows were put back unsteered.
struct flas_pass_failures {
    std::vector<int> seqs;
    std::string why;
};

struct flas_steering_params {
    int  n_seq         = 1;
    int  n_ctx_seq     = 0;     // positions one sequence may hold: the flow caches' length
    int  n_batch       = 512;   // rows of layer L's output in one llama_decode at most
    int  concept_cache = 16;    // encoded concepts kept (least recently used evicted)
    bool exact         = false; // f32 flow state (flas_state_type)
};

class flas_steering {
  public:
    // backend and flow: the flow loaded on the device of layer L and checked against the model
    // by the host; encoder_cparams: the base context's settings for the concept encoder's side
    // contexts; output_norm: the base model's final norm weight [H]; reset: the host's reset of a
    // sequence (llama.cpp memory, positions and trace), called when its rows no longer apply.
    flas_steering(ggml_backend_ptr backend, flas_flow flow, const flas_steering_params & params, llama_model * model,
                  llama_context_params encoder_cparams, std::vector<float> output_norm,
                  std::function<void(int seq)> reset);
    ~flas_steering();
    flas_steering(const flas_steering &) = delete;
    flas_steering & operator=(const flas_steering &) = delete;

    // ---- steering of one sequence (empties it: its caches no longer apply) ----
    // flas_runtime's methods of the same names say what they do.
    int  set_steering(int seq, const std::string & concept, float flowtime, int n_steps);
    int  change_steering(int seq, const std::string & concept, float flowtime, int n_steps);
    void set_flowtime(int seq, float flowtime);
    void pin(int seq);
    int  prepare_concept(const std::string & concept);
    std::vector<float> concept_rows(const std::string & concept);
    void release(int seq);
    bool holds_steering(int seq, const std::string & concept, float flowtime, int n_steps) const;
    void set_steer_hook(flas_row_hook hook);
    void set_trace(int seq, bool on);
    void clear_trace(int seq);  // the host emptied the sequence: its recorded rows are gone
    void set_telemetry(int seq, bool on);
    float take_displacement(int seq);

    // ---- reservation: grow_cache, then (after the host emptied a grown one) reserve ----
    // Allocates the sequence's flow cache for n_steps if it holds fewer; whether it grew (what
    // the sequence held was computed with the old cache).
    bool grow_cache(int seq, int n_steps);
    // Reserves the compute buffer for the largest pass of the sequence steered with n_steps.
    void reserve(int seq, int n_steps);

    // ---- in the host's eval callback ----
    // Whether any row needs the steering: a hook, a trace or a steered sequence.
    bool active() const;
    // t: layer L's output [H, n] of one llama_decode; parts: each sequence's rows in it. Trace,
    // hook or flow for each; rows of unsteered sequences are left untouched, bit for bit.
    // Sequences whose steered rows were not finite are added to failed.
    void steer(ggml_tensor * t, const std::vector<flas_seq_rows> & parts, flas_pass_failures & failed);

    // ---- facts ----
    const flas_flow_hparams & flow_hparams() const { return flow_.hp; }
    flas_concept_stats stats() const;
    std::string backend_name() const;
    std::string device_name() const;               // the ggml device computing layer L and the flow
    void add_memory(std::vector<flas_device_memory> & rows) const;  // the flow's bytes, on its device's row
    const std::vector<float> & trace_in(int seq) const { return seqs_.at(seq).trace_in; }
    const std::vector<float> & trace_out(int seq) const { return seqs_.at(seq).trace_out; }

  private:
    int  n_seq() const { return (int) seqs_.size(); }
    std::vector<llama_token> concept_tokens(const std::string & text, int & n_total) const;
    int  acquire_concept(const std::string & text, int & n_total);  // -> slot
    void compute_time_embeddings(int seq);
    void compute_folded_values(int seq);

    // flas-pass.cpp
    struct flow_pass;
    // a real pass, or the largest one of a concept: the longest unfolded, or the longest folded
    enum class pass_shape { real, worst_unfolded, worst_folded };
    flow_pass build_flow_pass(const std::vector<flas_seq_rows> & steered, int n_all, pass_shape shape);
    void reserve_flow(int seq);
    void run_flow(ggml_tensor * t, const std::vector<flas_seq_rows> & steered, flas_pass_failures & failed);

    flas_steering_params params_;
    const llama_vocab *  vocab_;         // the host model's, to tokenize concepts
    std::function<void(int)> reset_;     // the host's reset of a sequence

    ggml_backend_ptr   backend_;        // the flow's backend (that of layer L)
    flas_flow          flow_;
    flas_concept_state concept_;
    flas_concept_table concepts_;
    std::unique_ptr<flas_concept_encoder> encoder_;  // borrows flow_ and backend_
    std::vector<flas_seq_steering> seqs_;
    ggml_gallocr_ptr   allocr_;         // compute buffer, reserved for the largest pass
    std::vector<uint8_t> graph_meta_;   // no_alloc context memory for graph building
    flas_row_hook hook_;
};

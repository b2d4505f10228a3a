// The request board: what callers and the engine's worker share, and nothing else (as
// llama-server's server_queue/server_response sit apart from server_context). Callers post
// requests and wait for their news; the worker takes queued requests and posts tokens and ends.
// Every field lives under one mutex, and no method holds it while a model computes.
//
// A request stays on the board from its post until its end has been handed over (or, traced,
// until release): its tokens, end and trace are kept here, and only here.
#pragma once

#include "flas-runtime.h"  // llama_token, flas_concept_stats
#include "flas-steer.h"
#include "flas.h"          // enum flas_finish, enum flas_status, enum flas_trace_kind

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

struct flas_request {
    std::vector<llama_token> prompt;  // BOS and chat template included
    flas_steer steer;
    int      max_tokens  = 128;
    flas_sampling_params sampling = flas_sampling_default_params();
    bool     trace       = false;     // from an empty sequence, record every layer-L row before and
                                      // after steering and the prompt's logits; end-of-generation ignored
    bool     telemetry   = false;     // measure each generated token's displacement
    int      logprobs    = -1;        // -1: none; k >= 0: each token's log-probability and k alternatives
};

// An unknown request id, or one whose end was already reported (FLAS_ERR_NOT_FOUND).
struct flas_not_found : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// How a request ended, once it has.
struct flas_end {
    flas_finish finish = FLAS_FINISH_NONE;
    flas_status status = FLAS_OK;     // when finish is FLAS_FINISH_ERROR: which error (flas.h), and
    std::string error;                // what it was
    int    n_prompt = 0;
    int    n_cached = 0;              // prompt tokens its sequence already held (prefix reuse)
    double prompt_seconds = 0.0;      // from admission to its first token
    double seconds        = 0.0;      // from admission to the end
};

// What a request produced since the caller last asked, and how it ended.
struct flas_update {
    std::vector<flas_token_data> tokens;  // generated, in order; the end-of-generation token is not one of them
    bool     done = false;            // end is set: the request has ended and handed over every token
    flas_end end;
};

struct flas_engine_stats {
    int     n_active  = 0;            // sequences decoding
    int     n_queued  = 0;            // requests waiting for a sequence
    int64_t n_decoded = 0;            // tokens through llama_decode
    int64_t n_steps   = 0;            // llama_decode calls
    flas_concept_stats concepts;      // the runtime's concept table, as of the last admission or exclusive call
};

using flas_clock = std::chrono::steady_clock;

// One request on the board. req is set at post and then only read (but for a change of the
// steering of a request still queued); the rest is the board's.
struct flas_ticket {
    uint64_t     id = 0;
    flas_request req;
    std::unique_ptr<flas_steer> change;  // posted by steer(), not yet taken by the worker
    uint64_t n_changes = 0;           // changes posted, taken by the worker, and settled by it
    uint64_t n_taken   = 0;
    uint64_t n_settled = 0;
    int      change_at = -1;          // the last settled change: the first generated token it steered; -1: refused
    flas_status change_status = FLAS_OK;  // refused: why
    std::string change_error;
    std::vector<flas_token_data> tokens;  // delivered, not yet handed over
    bool     ended     = false;       // end is set
    flas_end end;
    std::vector<float> trace_in, trace_out, prompt_logits;  // traced requests
    bool     cancelled = false;
    bool     queued    = true;
    bool     reported  = false;       // its end was handed over; kept only for trace()
};

class flas_board {
  public:
    explicit flas_board(int n_ctx_seq) : n_ctx_seq_(n_ctx_seq) {}

    // ---- callers ----
    // Queues checked requests together; a prompt longer than a sequence holds ends at once with
    // FLAS_ERR_CONTEXT_LENGTH. A lost device: flas_device_lost, nothing queued.
    std::vector<uint64_t> post(std::vector<flas_request> reqs);
    // Waits up to timeout_ms for news and hands over up to max_tokens tokens; done comes with the
    // last of them. The id is then gone, except a traced request's, kept for trace() until release().
    flas_update wait(uint64_t id, int timeout_ms, size_t max_tokens);
    uint64_t wait_any(const std::vector<uint64_t> & ids, int timeout_ms);  // one with news, or 0
    // Replaces a request's steering from its next decoded token on and waits until the worker
    // did (at most a step and a concept encoding): returns the index of the first generated token
    // it steers (0 for a request still queued). flas_not_found: unknown, or it ended first;
    // std::invalid_argument / std::runtime_error: the worker refused it (the request goes on as it
    // was, or, after a runtime error, ended with it).
    int steer(uint64_t id, flas_steer steer);
    void cancel(uint64_t id);         // unknown ids ignored; a queued request ends here
    void release(uint64_t id);        // cancels and forgets it
    std::vector<float> trace(uint64_t id, flas_trace_kind kind) const;
    flas_engine_stats stats() const;
    std::string lost() const;         // empty, or why the engine stopped for good
    void throw_if_lost() const;

    // ---- run_exclusive's callers: announced, the worker lets them in before its next step ----
    void exclusive_enter();
    void exclusive_leave();
    void set_concepts(const flas_concept_stats & concepts);

    // ---- the worker ----
    // Blocks until there is work and no exclusive caller waits; false: stop (or a lost device).
    bool wait_for_work();
    // Up to n_free queued requests, now running.
    std::vector<std::shared_ptr<flas_ticket>> take(int n_free);
    bool cancelled(const flas_ticket & t) const;
    // The change posted for a running request since the last take, if any; with `only` given,
    // only a change `only` accepts (it is left on the board otherwise).
    std::unique_ptr<flas_steer> take_change(flas_ticket & t,
                                            const std::function<bool(const flas_steer &)> & only = nullptr);
    // The change taken last: in force from generated token at, or refused (at < 0) with status and error.
    void settle_change(flas_ticket & t, int at, flas_status status, const std::string & error);
    void set_cached(flas_ticket & t, int n_cached);
    void set_prompt_logits(flas_ticket & t, std::vector<float> logits);
    void deliver(flas_ticket & t, flas_token_data token, double prompt_seconds);  // prompt_seconds: of a first token
    // t ended (ends after a loss are dropped: the loss is what its caller reads).
    void finish(flas_ticket & t, flas_end end, std::vector<float> trace_in, std::vector<float> trace_out);
    void count_step(int n_decoded);
    void worker_done();

    // ---- the engine ----
    void lose(const std::string & why);  // ends every request with FLAS_ERR_DEVICE_LOST, from any thread
    void stop();                         // the worker returns from wait_for_work
    // Waits until the worker returned or a device was lost; true when the worker returned.
    bool wait_worker_or_loss();
    void cancel_all();                   // the engine is gone: every request ends, cancelled

  private:
    uint64_t enqueue(flas_request req);  // with mutex_ held
    std::shared_ptr<flas_ticket> find_live(uint64_t id) const;  // with mutex_ held
    static bool has_news(const flas_ticket & t);
    void end(flas_ticket & t, flas_finish finish, flas_status status, const std::string & error);  // with mutex_ held

    const int n_ctx_seq_;
    mutable std::mutex mutex_;
    std::condition_variable work_cv_;  // the worker: new requests, cancellations, stop
    std::condition_variable news_cv_;  // the waiters: tokens or ends
    std::map<uint64_t, std::shared_ptr<flas_ticket>> tickets_;
    std::deque<std::shared_ptr<flas_ticket>> queue_;
    uint64_t next_id_ = 1;
    bool stop_ = false;
    bool worker_done_ = false;
    int  n_active_ = 0;
    int  n_exclusive_waiting_ = 0;
    flas_engine_stats stats_;
    std::string lost_;
};

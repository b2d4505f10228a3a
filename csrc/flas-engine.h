// The batch scheduler: requests (prompt, steering, sampling) are queued, given a free
// sequence of the runtime, and decoded together, one llama_decode per step, on a worker
// thread of the engine's own. Continuous batching: a finished sequence takes the next
// request at once; prompts are fed in chunks that share each step's n_batch with the
// decoding sequences. Any thread may submit, wait, cancel; the worker is the runtime's only
// caller while the engine lives (other callers go through run_exclusive).
//
// Ownership: the engine either borrows a runtime, which must outlive it, or creates and owns
// one (loaded on its worker thread); the destructor cancels what is left and joins the worker.
#pragma once

#include "flas-runtime.h"
#include "flas.h"  // enum flas_finish, enum flas_status: how a request ended, as the C API says it

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <climits>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

struct flas_request {
    std::vector<llama_token> prompt;  // BOS and chat template included
    std::string concept;              // empty: unsteered
    float    flowtime    = 0.0f;      // 0: unsteered
    int      n_steps     = 1;
    int      max_tokens  = 128;
    flas_sampling_params sampling = flas_sampling_default_params();
    bool     trace       = false;     // from an empty sequence, record every layer-L row before and
                                      // after steering and the prompt's logits; end-of-generation ignored
};

// An unknown request id, or one whose end was already reported (FLAS_ERR_NOT_FOUND).
struct flas_not_found : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// What a request produced since the caller last asked, and how it ended.
struct flas_update {
    std::vector<llama_token> tokens;  // generated, in order; the end-of-generation token is not one of them
    bool        done   = false;
    flas_finish finish = FLAS_FINISH_NONE;  // once done, how (flas.h)
    flas_status status = FLAS_OK;     // when finish is FLAS_FINISH_ERROR: which error (flas.h), and
    std::string error;                // what it was
    int    n_prompt = 0;
    int    n_cached = 0;              // prompt tokens its sequence already held (prefix reuse)
    double prompt_seconds = 0.0;      // from admission to its first token
    double seconds        = 0.0;      // from admission to the end
    std::vector<float> trace_in, trace_out, prompt_logits;  // traced requests, once done
};

struct flas_engine_stats {
    int     n_active  = 0;            // sequences decoding
    int     n_queued  = 0;            // requests waiting for a sequence
    int64_t n_decoded = 0;            // tokens through llama_decode
    int64_t n_steps   = 0;            // llama_decode calls
    flas_concept_stats concepts;      // the runtime's concept table, as of the last admission or exclusive call
};

class flas_engine {
  public:
    explicit flas_engine(flas_runtime & rt);
    // Loads the runtime on the worker thread and owns it; load errors are rethrown here.
    explicit flas_engine(const flas_runtime_params & params);
    ~flas_engine();
    flas_engine(const flas_engine &) = delete;
    flas_engine & operator=(const flas_engine &) = delete;

    // Queues a request; returns its handle. Bad fields: std::invalid_argument, nothing queued.
    // A prompt longer than a sequence holds is accepted and ends at once with an error.
    uint64_t submit(flas_request req);
    // Queues requests all at once (they start in the same step when sequences are free);
    // every request is checked before any is queued: std::invalid_argument naming its index.
    std::vector<uint64_t> submit_many(std::vector<flas_request> reqs);
    // Waits up to timeout_ms for news of the request and hands over up to max_tokens of its new
    // tokens (the rest wait for the next call). done comes with the last of them; the id is then
    // gone, except for a traced request, whose rows stay for trace() until release().
    // flas_not_found: an unknown id, or one whose end was already handed over.
    flas_update wait(uint64_t id, int timeout_ms, size_t max_tokens = SIZE_MAX);
    // A finished traced request's record (flas_not_found unless wait() handed over its end).
    std::vector<float> trace(uint64_t id, flas_trace_kind kind) const;
    // Waits up to timeout_ms until one of the requests has news; returns it, or 0.
    uint64_t wait_any(const std::vector<uint64_t> & ids, int timeout_ms);
    // Ends the request; its sequence is free within one decode step. Unknown handles are ignored.
    void cancel(uint64_t id);
    // Cancels the request and forgets its handle and what it kept (its owner will not wait for it).
    void release(uint64_t id);
    flas_engine_stats stats() const;
    // Runs fn on the runtime between two decode steps, on the calling thread (not the worker's:
    // std::invalid_argument). A sequence fn changed is not reused for a prefix afterwards, and
    // a request decoding in it ends with an error.
    void run_exclusive(const std::function<void()> & fn);
    // Empty, or why the engine stopped for good: an RPC server it uses stopped answering. Its
    // requests end with that error, new ones are refused, and the destructor abandons the
    // worker (blocked on the lost server) and the runtime instead of waiting for them.
    std::string lost() const;
    const flas_runtime & runtime() const { return *rt_; }
    flas_runtime & runtime() { return *rt_; }

  private:
    struct job;
    struct slot {
        std::vector<llama_token> tokens;  // what the sequence holds
        bool trusted = false;             // tokens and runtime agree (false after errors, run_exclusive)
        uint64_t last_used = 0;
        std::shared_ptr<job> running;     // the request decoding in it
    };

    void run();
    void watch_devices();
    void on_device_lost(const std::string & why);
    void throw_if_lost() const;  // with mutex_ held
    void check(const flas_request & req) const;
    uint64_t enqueue(flas_request req);  // with mutex_ held
    void drop_cancelled();
    void admit(const std::shared_ptr<job> & j);
    void step();
    // j by value: it may be a slot's own pointer. An error (FLAS_FINISH_ERROR) says its status and message.
    void finish(std::shared_ptr<job> j, flas_finish reason, flas_status status = FLAS_OK, const std::string & error = "");
    void deliver(job & j, llama_token token);
    bool reusable(int seq, const flas_request & req) const;
    int  choose_slot(const flas_request & req) const;
    bool has_news(const job & j) const;
    std::shared_ptr<job> find_live(uint64_t id) const;  // with mutex_ held

    std::unique_ptr<flas_runtime> owned_;  // when the engine loaded it
    flas_runtime * rt_ = nullptr;
    std::vector<slot> slots_;             // one per runtime sequence; worker only
    uint64_t tick_ = 0;

    mutable std::mutex mutex_;            // guards jobs_, queue_, stop_, stats_ and each job's outbox
    std::condition_variable work_cv_;     // the worker: new requests, cancellations, stop
    std::condition_variable news_cv_;     // the waiters: tokens or ends
    std::map<uint64_t, std::shared_ptr<job>> jobs_;
    std::deque<std::shared_ptr<job>> queue_;
    uint64_t next_id_ = 1;
    bool stop_ = false;
    int  n_active_ = 0;
    int  n_exclusive_waiting_ = 0;        // callers of run_exclusive waiting for the step lock: the
                                          // worker lets them in before its next step
    flas_engine_stats stats_;

    std::string lost_;                    // guarded by mutex_
    bool worker_done_ = false;            // guarded by mutex_: run() returned
    std::unique_ptr<flas_device_watch> watch_;

    std::timed_mutex step_mutex_;         // held by the worker during a step
    std::thread worker_;
};

using flas_clock = std::chrono::steady_clock;

// A request and its progress: the worker's fields (flas-scheduler.cpp), the outbox the waiters read.
struct flas_engine::job {
    uint64_t     id = 0;
    flas_request req;
    // worker only
    int    seq      = -1;
    size_t n_fed    = 0;      // prompt tokens in the sequence
    int    n_out    = 0;      // tokens generated
    llama_token pending = -1; // sampled, to be decoded next step
    bool   sampled_once = false;
    flas_clock::time_point t_start;
    // guarded by the engine's mutex
    flas_update outbox;       // what the next wait() returns
    bool cancelled = false;
    bool queued    = true;
    bool reported  = false;   // wait() handed over its end; kept only for trace()
};

// The engine: requests (prompt, steering, sampling) are posted on a board, given a free
// sequence of the runtime by the scheduler, and decoded together, one llama_decode per step,
// on a worker thread of the engine's own. Continuous batching: a finished sequence takes the
// next request at once; prompts are fed in chunks that share each step's n_batch with the
// decoding sequences. Any thread may submit, wait, cancel; the worker is the runtime's only
// caller while the engine lives (other callers go through run_exclusive).
//
// Ownership: the engine owns the board (flas-board.h: what callers and the worker share), the
// scheduler (flas-scheduler.h: the worker's side) and the worker thread; it either borrows a
// runtime, which must outlive it, or creates and owns one (loaded on its worker thread). The
// destructor cancels what is left and joins the worker.
#pragma once

#include "flas-board.h"
#include "flas-runtime.h"
#include "flas-scheduler.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

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
    // The board's (flas-board.h): news of a request, up to max_tokens tokens at a time; the
    // record of a finished traced request; one request with news; cancel; release.
    flas_update wait(uint64_t id, int timeout_ms, size_t max_tokens = SIZE_MAX) { return board_->wait(id, timeout_ms, max_tokens); }
    std::vector<float> trace(uint64_t id, flas_trace_kind kind) const { return board_->trace(id, kind); }
    uint64_t wait_any(const std::vector<uint64_t> & ids, int timeout_ms) { return board_->wait_any(ids, timeout_ms); }
    // Replaces a running request's steering from its next decoded token on, tokens already
    // generated kept; its schedule counts from there. Waits until it is in force (one decode
    // step, plus the concept's encoding when the table lacks it: between two steps, on the
    // worker) and returns the first generated token it steers. std::invalid_argument: bad
    // settings, or ones this sequence cannot take (flas_runtime::change_steering); the request
    // goes on unchanged. flas_not_found: unknown, or it ended first.
    int steer(uint64_t id, flas_steer steer);
    void cancel(uint64_t id) { board_->cancel(id); }
    void release(uint64_t id) { board_->release(id); }
    flas_engine_stats stats() const { return board_->stats(); }
    // Runs fn on the runtime between two decode steps, on the calling thread (not the worker's:
    // std::invalid_argument). A sequence fn changed is not reused for a prefix afterwards, and
    // a request decoding in it ends with an error.
    void run_exclusive(const std::function<void()> & fn);
    // Empty, or why the engine stopped for good: an RPC server it uses stopped answering. Its
    // requests end with that error, new ones are refused, and the destructor abandons the
    // worker (blocked on the lost server) and the runtime instead of waiting for them.
    std::string lost() const { return board_->lost(); }
    const flas_runtime & runtime() const { return *rt_; }
    flas_runtime & runtime() { return *rt_; }

  private:
    void start();  // the board and the scheduler, once the runtime is there
    void run();
    void watch_devices();
    void check(const flas_request & req) const;

    std::unique_ptr<flas_runtime> owned_;  // when the engine loaded it
    flas_runtime * rt_ = nullptr;
    std::unique_ptr<flas_board> board_;
    std::unique_ptr<flas_scheduler> scheduler_;
    std::unique_ptr<flas_device_watch> watch_;
    std::timed_mutex step_mutex_;          // held by the worker during a step, and by run_exclusive
    std::thread worker_;
};

#include "flas-engine.h"

#include "flas-rules.h"

#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>

flas_engine::flas_engine(flas_runtime & rt) : rt_(&rt) {
    start();
    watch_devices();
    worker_ = std::thread([this] { run(); });
}

// The worker loads the model itself, so that every ggml compute of the model, loading included,
// starts from this one thread: with OpenMP each thread that starts parallel regions gets a team
// of its own, and only one team then competes for the cores.
flas_engine::flas_engine(const flas_runtime_params & params) {
    std::promise<void> loaded;
    std::future<void> ready = loaded.get_future();
    worker_ = std::thread([this, &params, &loaded] {
        try {
            owned_ = std::make_unique<flas_runtime>(params);
            rt_ = owned_.get();
            start();
            loaded.set_value();
        } catch (...) {
            loaded.set_exception(std::current_exception());
            return;
        }
        run();
    });
    try {
        ready.get();
    } catch (...) {
        worker_.join();
        throw;
    }
    watch_devices();
}

void flas_engine::start() {
    board_ = std::make_unique<flas_board>(rt_->n_ctx_seq());
    scheduler_ = std::make_unique<flas_scheduler>(*rt_, *board_);
}

// A lost RPC server is reported on the RPC client's thread: the board settles every request
// there, since the worker may be blocked for good on a reply that will never come.
void flas_engine::watch_devices() {
    if (!rt_->rpc_servers().empty()) {
        watch_ = std::make_unique<flas_device_watch>(rt_->rpc_servers(),
                                                     [this](const std::string & why) { board_->lose(why); });
    }
}

void flas_engine::run() {
    struct done_flag {
        flas_board & board;
        ~done_flag() { board.worker_done(); }
    } done{*board_};
    flas_device_guard guard;  // a failed RPC connection on this thread: an error, not an abort
    while (board_->wait_for_work()) {
        std::lock_guard<std::timed_mutex> step_lock(step_mutex_);
        scheduler_->step();
    }
}

flas_engine::~flas_engine() {
    board_->stop();
    if (!board_->wait_worker_or_loss()) {  // blocked on a lost RPC server: abandon it with what it uses
        watch_.reset();
        worker_.detach();
        (void) owned_.release();
        (void) scheduler_.release();
        (void) board_.release();
        return;
    }
    worker_.join();
    // Freeing device buffers talks to the RPC servers: if one is gone, the frees never return.
    // Free on a thread of its own and abandon it (and the memory) when the loss is reported.
    if (owned_ && watch_) {
        auto freed = std::make_shared<std::atomic<bool>>(false);
        std::thread deleter([rt = std::move(owned_), freed]() mutable {
            rt.reset();
            freed->store(true);
        });
        for (;;) {
            if (freed->load()) {
                deleter.join();
                break;
            }
            if (!board_->lost().empty()) {
                deleter.detach();
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }
    watch_.reset();
    board_->cancel_all();
}

void flas_engine::check(const flas_request & req) const {
    if (req.prompt.empty()) {
        throw std::invalid_argument("prompt: no tokens");
    }
    const int n_vocab = rt_->n_vocab();
    for (llama_token t : req.prompt) {
        if (t < 0 || t >= n_vocab) {
            throw std::invalid_argument("prompt: token id " + std::to_string(t) + " outside the vocabulary");
        }
    }
    flas_request_check(req.steer, req.max_tokens, req.logprobs, req.sampling);
}

int flas_engine::steer(uint64_t id, flas_steer steer) {
    flas_steer_check(steer);
    board_->throw_if_lost();
    return board_->steer(id, std::move(steer));
}

uint64_t flas_engine::submit(flas_request req) {
    check(req);
    std::vector<flas_request> one;
    one.push_back(std::move(req));
    return board_->post(std::move(one))[0];
}

std::vector<uint64_t> flas_engine::submit_many(std::vector<flas_request> reqs) {
    for (size_t i = 0; i < reqs.size(); ++i) {
        try {
            check(reqs[i]);
        } catch (const std::invalid_argument & e) {
            throw std::invalid_argument("request " + std::to_string(i) + ": " + e.what());
        }
    }
    return board_->post(std::move(reqs));
}

void flas_engine::run_exclusive(const std::function<void()> & fn) {
    if (std::this_thread::get_id() == worker_.get_id()) {  // a steer hook or an eval callback
        throw std::invalid_argument("this call waits for the decode step to end, and cannot be made from inside it "
                                    "(a steer hook or an eval callback): make it from another thread");
    }
    // Announced first: between two steps the worker waits for the announced callers instead of
    // taking the step lock straight back (a mutex is not fair, and a long request would otherwise
    // keep them out until it ends).
    struct announced {
        flas_board & board;
        explicit announced(flas_board & b) : board(b) { board.exclusive_enter(); }
        ~announced() { board.exclusive_leave(); }
    };
    std::unique_lock<std::timed_mutex> step(step_mutex_, std::defer_lock);
    {
        announced waiting(*board_);
        while (!step.try_lock_for(std::chrono::milliseconds(20))) {  // the worker may be gone for good
            board_->throw_if_lost();
        }
    }
    board_->throw_if_lost();
    flas_device_guard guard;
    // afterwards (also when fn throws), for each sequence fn changed: its tokens are no longer
    // known, and a request decoding in it cannot go on
    struct after {
        flas_scheduler & scheduler;
        std::vector<uint64_t> before;
        ~after() {
            try {
                scheduler.after_exclusive(before);
            } catch (...) {  // a destructor: nothing may escape
            }
        }
    } check_after{*scheduler_, scheduler_->epochs()};
    fn();
}

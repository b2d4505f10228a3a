#include "flas-engine.h"

#include "flas-rules.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <future>
#include <stdexcept>

flas_engine::flas_engine(flas_runtime & rt) : rt_(&rt), slots_(rt.n_seq()) {
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
            slots_.resize(rt_->n_seq());
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

void flas_engine::watch_devices() {
    if (!rt_->rpc_servers().empty()) {
        watch_ = std::make_unique<flas_device_watch>(rt_->rpc_servers(), [this](const std::string & why) { on_device_lost(why); });
    }
}

// Called on the RPC client's thread: the worker may be blocked for good on a reply that will
// never come, so everything a waiter needs is settled here.
void flas_engine::on_device_lost(const std::string & why) {
    std::lock_guard<std::mutex> lk(mutex_);
    if (!lost_.empty()) {
        return;
    }
    lost_ = why;
    for (auto & kv : jobs_) {
        flas_update & u = kv.second->outbox;
        if (!u.done) {
            u.done = true;
            u.finish = FLAS_FINISH_ERROR;
            u.status = FLAS_ERR_DEVICE_LOST;
            u.error = why;
        }
    }
    queue_.clear();
    news_cv_.notify_all();
    work_cv_.notify_all();
}

std::string flas_engine::lost() const {
    std::lock_guard<std::mutex> lk(mutex_);
    return lost_;
}

void flas_engine::throw_if_lost() const {
    if (!lost_.empty()) {
        throw flas_device_lost(lost_);
    }
}

flas_engine::~flas_engine() {
    {
        std::unique_lock<std::mutex> lk(mutex_);
        stop_ = true;
        work_cv_.notify_all();
        news_cv_.wait(lk, [&] { return worker_done_ || !lost_.empty(); });
        if (!worker_done_) {  // blocked on a lost RPC server: abandon it with what it uses
            lk.unlock();
            watch_.reset();
            worker_.detach();
            (void) owned_.release();
            return;
        }
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
            if (!lost().empty()) {
                deleter.detach();
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }
    watch_.reset();
    std::lock_guard<std::mutex> lk(mutex_);
    for (auto & kv : jobs_) {
        kv.second->outbox.done = true;
        kv.second->outbox.finish = FLAS_FINISH_CANCELLED;
    }
    news_cv_.notify_all();
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
    flas_request_check(!req.concept.empty(), req.flowtime, req.n_steps, req.max_tokens, req.sampling);
}

uint64_t flas_engine::submit(flas_request req) {
    check(req);
    std::lock_guard<std::mutex> lk(mutex_);
    throw_if_lost();
    const uint64_t id = enqueue(std::move(req));
    work_cv_.notify_one();
    return id;
}

std::vector<uint64_t> flas_engine::submit_many(std::vector<flas_request> reqs) {
    for (size_t i = 0; i < reqs.size(); ++i) {
        try {
            check(reqs[i]);
        } catch (const std::invalid_argument & e) {
            throw std::invalid_argument("request " + std::to_string(i) + ": " + e.what());
        }
    }
    std::vector<uint64_t> ids;
    std::lock_guard<std::mutex> lk(mutex_);
    throw_if_lost();
    for (flas_request & r : reqs) {
        ids.push_back(enqueue(std::move(r)));
    }
    work_cv_.notify_one();
    return ids;
}

// A prompt longer than a sequence holds ends here, with an error, without stopping the others.
uint64_t flas_engine::enqueue(flas_request req) {
    auto j = std::make_shared<job>();
    j->req = std::move(req);
    j->outbox.n_prompt = (int) j->req.prompt.size();
    j->id = next_id_++;
    jobs_[j->id] = j;
    if ((int) j->req.prompt.size() >= rt_->n_ctx_seq()) {
        j->queued = false;
        j->outbox.done = true;
        j->outbox.finish = FLAS_FINISH_ERROR;
        j->outbox.status = FLAS_ERR_CONTEXT_LENGTH;
        j->outbox.error = "the prompt is " + std::to_string(j->req.prompt.size()) + " tokens but a sequence holds " +
                          std::to_string(rt_->n_ctx_seq()) + " (n_ctx / n_seq); shorten it or raise n_ctx";
        news_cv_.notify_all();
        return j->id;
    }
    queue_.push_back(j);
    stats_.n_queued = (int) queue_.size();
    return j->id;
}

bool flas_engine::has_news(const job & j) const {
    return !j.reported && (j.outbox.done || !j.outbox.tokens.empty());
}

std::shared_ptr<flas_engine::job> flas_engine::find_live(uint64_t id) const {
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second->reported) {
        throw flas_not_found("unknown request " + std::to_string(id) + " (never submitted, released, or its end already handed over)");
    }
    return it->second;
}

flas_update flas_engine::wait(uint64_t id, int timeout_ms, size_t max_tokens) {
    std::unique_lock<std::mutex> lk(mutex_);
    std::shared_ptr<job> j = find_live(id);
    news_cv_.wait_for(lk, std::chrono::milliseconds(std::max(0, timeout_ms)), [&] { return has_news(*j); });
    flas_update & box = j->outbox;
    flas_update out;
    const size_t n = std::min(max_tokens, box.tokens.size());
    out.tokens.assign(box.tokens.begin(), box.tokens.begin() + (std::ptrdiff_t) n);
    box.tokens.erase(box.tokens.begin(), box.tokens.begin() + (std::ptrdiff_t) n);
    if (box.done && box.tokens.empty()) {  // the end comes with the last token
        out.done           = true;
        out.finish         = box.finish;
        out.status         = box.status;
        out.error          = box.error;
        out.n_prompt       = box.n_prompt;
        out.n_cached       = box.n_cached;
        out.prompt_seconds = box.prompt_seconds;
        out.seconds        = box.seconds;
        j->reported = true;
        if (!j->req.trace) {
            jobs_.erase(id);
        }
    }
    return out;
}

std::vector<float> flas_engine::trace(uint64_t id, flas_trace_kind kind) const {
    std::lock_guard<std::mutex> lk(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end() || !it->second->reported || !it->second->req.trace) {
        throw flas_not_found("request " + std::to_string(id) +
                             " is not a finished traced request (submit it with trace = true and poll it to its end)");
    }
    const flas_update & u = it->second->outbox;
    switch (kind) {
        case FLAS_TRACE_UNSTEERED: return u.trace_in;
        case FLAS_TRACE_STEERED:   return u.trace_out;
        case FLAS_TRACE_LOGITS:    return u.prompt_logits;
    }
    throw std::invalid_argument("unknown trace kind " + std::to_string((int) kind));
}

uint64_t flas_engine::wait_any(const std::vector<uint64_t> & ids, int timeout_ms) {
    std::unique_lock<std::mutex> lk(mutex_);
    uint64_t found = 0;
    news_cv_.wait_for(lk, std::chrono::milliseconds(std::max(0, timeout_ms)), [&] {
        for (uint64_t id : ids) {
            auto it = jobs_.find(id);
            if (it != jobs_.end() && has_news(*it->second)) {
                found = id;
                return true;
            }
        }
        return false;
    });
    return found;
}

void flas_engine::cancel(uint64_t id) {
    std::lock_guard<std::mutex> lk(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second->outbox.done) {
        return;
    }
    job & j = *it->second;
    j.cancelled = true;
    if (j.queued) {  // never started: end it here
        queue_.erase(std::find(queue_.begin(), queue_.end(), it->second));
        stats_.n_queued = (int) queue_.size();
        j.queued = false;
        j.outbox.done = true;
        j.outbox.finish = FLAS_FINISH_CANCELLED;
        news_cv_.notify_all();
    }
    work_cv_.notify_one();
}

void flas_engine::release(uint64_t id) {
    cancel(id);
    std::lock_guard<std::mutex> lk(mutex_);
    jobs_.erase(id);  // the worker keeps its own reference until the request ends
}

flas_engine_stats flas_engine::stats() const {
    std::lock_guard<std::mutex> lk(mutex_);
    return stats_;
}

void flas_engine::run_exclusive(const std::function<void()> & fn) {
    if (std::this_thread::get_id() == worker_.get_id()) {  // a steer hook or an eval callback
        throw std::invalid_argument("this call waits for the decode step to end, and cannot be made from inside it "
                                    "(a steer hook or an eval callback): make it from another thread");
    }
    // Announced first: between two steps the worker waits for the announced callers instead of
    // taking the step lock straight back (a mutex is not fair, and a long request would otherwise
    // keep them out until it ends).
    struct waiting {
        flas_engine & e;
        waiting(flas_engine & e) : e(e) {
            std::lock_guard<std::mutex> lk(e.mutex_);
            e.n_exclusive_waiting_++;
        }
        ~waiting() {
            std::lock_guard<std::mutex> lk(e.mutex_);
            e.n_exclusive_waiting_--;
            e.work_cv_.notify_all();
        }
    };
    std::unique_lock<std::timed_mutex> step(step_mutex_, std::defer_lock);
    {
        waiting announced(*this);
        while (!step.try_lock_for(std::chrono::milliseconds(20))) {  // the worker may be gone for good
            std::lock_guard<std::mutex> lk(mutex_);
            throw_if_lost();
        }
    }
    {
        std::lock_guard<std::mutex> lk(mutex_);
        throw_if_lost();
    }
    flas_device_guard guard;
    std::vector<uint64_t> epochs;
    for (size_t seq = 0; seq < slots_.size(); ++seq) {
        epochs.push_back(rt_->epoch((int) seq));
    }
    // afterwards (also when fn throws), for each sequence fn changed: its tokens are no longer
    // known, and a request decoding in it cannot go on
    struct after {
        flas_engine & e;
        const std::vector<uint64_t> & epochs;
        ~after() {
            try {
                for (size_t seq = 0; seq < e.slots_.size(); ++seq) {
                    if (e.rt_->epoch((int) seq) == epochs[seq]) {
                        continue;
                    }
                    e.slots_[seq].trusted = false;
                    if (e.slots_[seq].running) {
                        e.finish(e.slots_[seq].running, FLAS_FINISH_ERROR, FLAS_ERR_RUNTIME,
                                 "its sequence was changed by a call made between two decode steps (flas_exclusive, "
                                 "a steer hook or a memory reservation) while it ran");
                    }
                }
                const flas_concept_stats concepts = e.rt_->stats();  // fn may have encoded concepts
                std::lock_guard<std::mutex> lk(e.mutex_);
                e.stats_.concepts = concepts;
            } catch (...) {  // a destructor: nothing may escape
            }
        }
    } check_after{*this, epochs};
    fn();
}

#include "flas-board.h"

#include "flas-device.h"  // flas_device_lost

#include <algorithm>

// ---------------------------------------------------------------------------------------------
// callers
// ---------------------------------------------------------------------------------------------

std::vector<uint64_t> flas_board::post(std::vector<flas_request> reqs) {
    std::vector<uint64_t> ids;
    std::lock_guard<std::mutex> lk(mutex_);
    if (!lost_.empty()) {
        throw flas_device_lost(lost_);
    }
    for (flas_request & r : reqs) {
        ids.push_back(enqueue(std::move(r)));
    }
    work_cv_.notify_one();
    return ids;
}

// A prompt longer than a sequence holds ends here, with an error, without stopping the others.
uint64_t flas_board::enqueue(flas_request req) {
    auto t = std::make_shared<flas_ticket>();
    t->req = std::move(req);
    t->end.n_prompt = (int) t->req.prompt.size();
    t->id = next_id_++;
    tickets_[t->id] = t;
    if ((int) t->req.prompt.size() >= n_ctx_seq_) {
        t->queued = false;
        end(*t, FLAS_FINISH_ERROR, FLAS_ERR_CONTEXT_LENGTH,
            "the prompt is " + std::to_string(t->req.prompt.size()) + " tokens but a sequence holds " +
                std::to_string(n_ctx_seq_) + " (n_ctx / n_seq); shorten it or raise n_ctx");
        return t->id;
    }
    queue_.push_back(t);
    stats_.n_queued = (int) queue_.size();
    return t->id;
}

bool flas_board::has_news(const flas_ticket & t) {
    return !t.reported && (t.ended || !t.tokens.empty());
}

std::shared_ptr<flas_ticket> flas_board::find_live(uint64_t id) const {
    auto it = tickets_.find(id);
    if (it == tickets_.end() || it->second->reported) {
        throw flas_not_found("unknown request " + std::to_string(id) +
                             " (never submitted, released, or its end already handed over)");
    }
    return it->second;
}

flas_update flas_board::wait(uint64_t id, int timeout_ms, size_t max_tokens) {
    std::unique_lock<std::mutex> lk(mutex_);
    std::shared_ptr<flas_ticket> t = find_live(id);
    news_cv_.wait_for(lk, std::chrono::milliseconds(std::max(0, timeout_ms)), [&] { return has_news(*t); });
    flas_update out;
    const size_t n = std::min(max_tokens, t->tokens.size());
    out.tokens.assign(t->tokens.begin(), t->tokens.begin() + (std::ptrdiff_t) n);
    t->tokens.erase(t->tokens.begin(), t->tokens.begin() + (std::ptrdiff_t) n);
    if (t->ended && t->tokens.empty()) {  // the end comes with the last token
        out.done = true;
        out.end = t->end;
        t->reported = true;
        if (!t->req.trace) {
            tickets_.erase(id);
        }
    }
    return out;
}

uint64_t flas_board::wait_any(const std::vector<uint64_t> & ids, int timeout_ms) {
    std::unique_lock<std::mutex> lk(mutex_);
    uint64_t found = 0;
    news_cv_.wait_for(lk, std::chrono::milliseconds(std::max(0, timeout_ms)), [&] {
        for (uint64_t id : ids) {
            auto it = tickets_.find(id);
            if (it != tickets_.end() && has_news(*it->second)) {
                found = id;
                return true;
            }
        }
        return false;
    });
    return found;
}

int flas_board::steer(uint64_t id, flas_steer steer) {
    std::unique_lock<std::mutex> lk(mutex_);
    std::shared_ptr<flas_ticket> t = find_live(id);
    const std::string which = "request " + std::to_string(id);
    if (t->ended || t->cancelled) {
        throw flas_not_found(which + " has ended; its steering can no longer change");
    }
    if (t->queued) {  // the worker has not read it yet
        t->req.steer = std::move(steer);
        return 0;
    }
    t->change = std::make_unique<flas_steer>(std::move(steer));  // replaces one not yet taken
    const uint64_t mine = ++t->n_changes;
    news_cv_.wait(lk, [&] { return t->n_settled >= mine || t->ended; });
    if (t->n_settled < mine) {
        throw flas_not_found(which + " ended before the change took effect (its last token was already decoding)");
    }
    if (t->change_at < 0) {
        if (t->change_status == FLAS_ERR_INVALID_ARGUMENT) {
            throw std::invalid_argument(t->change_error);
        }
        throw std::runtime_error(t->change_error);
    }
    return t->change_at;
}

void flas_board::cancel(uint64_t id) {
    std::lock_guard<std::mutex> lk(mutex_);
    auto it = tickets_.find(id);
    if (it == tickets_.end() || it->second->ended) {
        return;
    }
    flas_ticket & t = *it->second;
    t.cancelled = true;
    if (t.queued) {  // never started: end it here
        queue_.erase(std::find(queue_.begin(), queue_.end(), it->second));
        stats_.n_queued = (int) queue_.size();
        t.queued = false;
        end(t, FLAS_FINISH_CANCELLED, FLAS_OK, "");
    }
    work_cv_.notify_one();
}

void flas_board::release(uint64_t id) {
    cancel(id);
    std::lock_guard<std::mutex> lk(mutex_);
    tickets_.erase(id);  // the worker keeps its own reference until the request ends
}

std::vector<float> flas_board::trace(uint64_t id, flas_trace_kind kind) const {
    std::lock_guard<std::mutex> lk(mutex_);
    auto it = tickets_.find(id);
    if (it == tickets_.end() || !it->second->reported || !it->second->req.trace) {
        throw flas_not_found("request " + std::to_string(id) +
                             " is not a finished traced request (submit it with trace = true and poll it to its end)");
    }
    const flas_ticket & t = *it->second;
    switch (kind) {
        case FLAS_TRACE_UNSTEERED: return t.trace_in;
        case FLAS_TRACE_STEERED:   return t.trace_out;
        case FLAS_TRACE_LOGITS:    return t.prompt_logits;
    }
    throw std::invalid_argument("unknown trace kind " + std::to_string((int) kind));
}

flas_engine_stats flas_board::stats() const {
    std::lock_guard<std::mutex> lk(mutex_);
    return stats_;
}

std::string flas_board::lost() const {
    std::lock_guard<std::mutex> lk(mutex_);
    return lost_;
}

void flas_board::throw_if_lost() const {
    std::lock_guard<std::mutex> lk(mutex_);
    if (!lost_.empty()) {
        throw flas_device_lost(lost_);
    }
}

void flas_board::exclusive_enter() {
    std::lock_guard<std::mutex> lk(mutex_);
    n_exclusive_waiting_++;
}

void flas_board::exclusive_leave() {
    std::lock_guard<std::mutex> lk(mutex_);
    n_exclusive_waiting_--;
    work_cv_.notify_all();
}

void flas_board::set_concepts(const flas_concept_stats & concepts) {
    std::lock_guard<std::mutex> lk(mutex_);
    stats_.concepts = concepts;
}

// ---------------------------------------------------------------------------------------------
// the worker
// ---------------------------------------------------------------------------------------------

bool flas_board::wait_for_work() {
    std::unique_lock<std::mutex> lk(mutex_);
    work_cv_.wait(lk, [&] { return stop_ || (n_exclusive_waiting_ == 0 && (n_active_ > 0 || !queue_.empty())); });
    return !stop_ && lost_.empty();
}

std::vector<std::shared_ptr<flas_ticket>> flas_board::take(int n_free) {
    std::vector<std::shared_ptr<flas_ticket>> taken;
    std::lock_guard<std::mutex> lk(mutex_);
    while (n_free-- > 0 && !queue_.empty()) {
        taken.push_back(queue_.front());
        taken.back()->queued = false;
        queue_.pop_front();
    }
    n_active_ += (int) taken.size();
    stats_.n_queued = (int) queue_.size();
    stats_.n_active = n_active_;
    return taken;
}

bool flas_board::cancelled(const flas_ticket & t) const {
    std::lock_guard<std::mutex> lk(mutex_);
    return t.cancelled;
}

std::unique_ptr<flas_steer> flas_board::take_change(flas_ticket & t,
                                                    const std::function<bool(const flas_steer &)> & only) {
    std::lock_guard<std::mutex> lk(mutex_);
    if (!t.change || (only && !only(*t.change))) {
        return nullptr;
    }
    t.n_taken = t.n_changes;
    return std::move(t.change);
}

void flas_board::settle_change(flas_ticket & t, int at, flas_status status, const std::string & error) {
    std::lock_guard<std::mutex> lk(mutex_);
    t.n_settled = t.n_taken;
    t.change_at = at;
    t.change_status = status;
    t.change_error = error;
    news_cv_.notify_all();
}

void flas_board::set_cached(flas_ticket & t, int n_cached) {
    std::lock_guard<std::mutex> lk(mutex_);
    t.end.n_cached = n_cached;
}

void flas_board::set_prompt_logits(flas_ticket & t, std::vector<float> logits) {
    std::lock_guard<std::mutex> lk(mutex_);
    t.prompt_logits = std::move(logits);
}

void flas_board::deliver(flas_ticket & t, flas_token_data token, double prompt_seconds) {
    std::lock_guard<std::mutex> lk(mutex_);
    if (!lost_.empty()) {
        return;
    }
    if (prompt_seconds >= 0.0) {
        t.end.prompt_seconds = prompt_seconds;
    }
    t.tokens.push_back(token);
    news_cv_.notify_all();
}

void flas_board::finish(flas_ticket & t, flas_end e, std::vector<float> trace_in, std::vector<float> trace_out) {
    std::lock_guard<std::mutex> lk(mutex_);
    n_active_--;
    stats_.n_active = n_active_;
    if (!lost_.empty()) {
        return;  // it already ended with the loss
    }
    e.n_prompt = t.end.n_prompt;
    e.n_cached = t.end.n_cached;
    if (e.prompt_seconds < 0.0) {  // it made tokens: the time to its first one, as delivered
        e.prompt_seconds = t.end.prompt_seconds;
    }
    t.end = std::move(e);
    t.ended = true;
    t.trace_in = std::move(trace_in);
    t.trace_out = std::move(trace_out);
    news_cv_.notify_all();
}

void flas_board::count_step(int n_decoded) {
    std::lock_guard<std::mutex> lk(mutex_);
    stats_.n_steps++;
    stats_.n_decoded += n_decoded;
}

void flas_board::worker_done() {
    std::lock_guard<std::mutex> lk(mutex_);
    worker_done_ = true;
    news_cv_.notify_all();
}

// ---------------------------------------------------------------------------------------------
// the engine
// ---------------------------------------------------------------------------------------------

void flas_board::end(flas_ticket & t, flas_finish finish, flas_status status, const std::string & error) {
    t.ended = true;
    t.end.finish = finish;
    t.end.status = status;
    t.end.error = error;
    news_cv_.notify_all();
}

// Called on the RPC client's thread: the worker may be blocked for good on a reply that will
// never come, so everything a waiter needs is settled here.
void flas_board::lose(const std::string & why) {
    std::lock_guard<std::mutex> lk(mutex_);
    if (!lost_.empty()) {
        return;
    }
    lost_ = why;
    for (auto & kv : tickets_) {
        if (!kv.second->ended) {
            end(*kv.second, FLAS_FINISH_ERROR, FLAS_ERR_DEVICE_LOST, why);
        }
    }
    queue_.clear();
    work_cv_.notify_all();
}

void flas_board::stop() {
    std::lock_guard<std::mutex> lk(mutex_);
    stop_ = true;
    work_cv_.notify_all();
}

bool flas_board::wait_worker_or_loss() {
    std::unique_lock<std::mutex> lk(mutex_);
    news_cv_.wait(lk, [&] { return worker_done_ || !lost_.empty(); });
    return worker_done_;
}

void flas_board::cancel_all() {
    std::lock_guard<std::mutex> lk(mutex_);
    for (auto & kv : tickets_) {
        if (!kv.second->ended) {
            end(*kv.second, FLAS_FINISH_CANCELLED, FLAS_OK, "");
        }
    }
}

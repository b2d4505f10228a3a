#include "flas-engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <future>
#include <stdexcept>

using flas_clock = std::chrono::steady_clock;

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
};

static double seconds_since(flas_clock::time_point t) {
    return std::chrono::duration<double>(flas_clock::now() - t).count();
}

// How many leading prompt tokens a sequence already holds; the last prompt token is always
// decoded again, for its logits.
static size_t common_prefix(const std::vector<llama_token> & held, const std::vector<llama_token> & prompt) {
    const size_t limit = std::min(held.size(), prompt.size() - 1);
    size_t keep = 0;
    while (keep < limit && held[keep] == prompt[keep]) {
        ++keep;
    }
    return keep;
}

static bool unsteered(const flas_request & r) { return r.concept.empty() || r.flowtime == 0.0f; }

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
            u.finish = "error";
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
        kv.second->outbox.finish = "cancelled";
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
    if (!std::isfinite(req.flowtime) || req.flowtime < 0.0f) {
        throw std::invalid_argument("flowtime must be a finite number >= 0, got " + std::to_string(req.flowtime));
    }
    if (req.n_steps < 1 || req.n_steps > FLAS_MAX_STEPS) {
        throw std::invalid_argument("n_steps must be in 1.." + std::to_string(FLAS_MAX_STEPS) + ", got " +
                                    std::to_string(req.n_steps));
    }
    if (req.max_tokens < 1) {
        throw std::invalid_argument("max_tokens must be >= 1, got " + std::to_string(req.max_tokens));
    }
    if (!(req.temperature >= 0.0f) || !(req.top_p > 0.0f && req.top_p <= 1.0f) || req.top_k < 0) {
        throw std::invalid_argument("temperature must be >= 0, top_p in (0, 1] and top_k >= 0");
    }
    if (!(req.min_p >= 0.0f && req.min_p <= 1.0f) || !(req.repeat_penalty > 0.0f && std::isfinite(req.repeat_penalty)) ||
        req.repeat_last_n < -1) {
        throw std::invalid_argument("min_p must be in [0, 1], repeat_penalty a finite number > 0 (1: off) and "
                                    "repeat_last_n >= -1 (-1: the whole context)");
    }
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
        j->outbox.finish = "error";
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
    return j.outbox.done || !j.outbox.tokens.empty();
}

flas_update flas_engine::wait(uint64_t id, int timeout_ms) {
    std::unique_lock<std::mutex> lk(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) {
        throw std::invalid_argument("unknown request handle " + std::to_string(id) + " (finished or never submitted)");
    }
    std::shared_ptr<job> j = it->second;
    news_cv_.wait_for(lk, std::chrono::milliseconds(std::max(0, timeout_ms)), [&] { return has_news(*j); });
    flas_update out;
    if (j->outbox.done) {
        out = std::move(j->outbox);
        jobs_.erase(id);
    } else {
        std::swap(out.tokens, j->outbox.tokens);
    }
    return out;
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
        j.outbox.finish = "cancelled";
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
                        e.finish(e.slots_[seq].running, "error",
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

// ---------------------------------------------------------------------------------------------
// the worker
// ---------------------------------------------------------------------------------------------

void flas_engine::run() {
    struct done_flag {
        flas_engine & e;
        ~done_flag() {
            std::lock_guard<std::mutex> lk(e.mutex_);
            e.worker_done_ = true;
            e.news_cv_.notify_all();
        }
    } done{*this};
    flas_device_guard guard;  // a failed RPC connection on this thread: an error, not an abort
    for (;;) {
        {
            std::unique_lock<std::mutex> lk(mutex_);
            work_cv_.wait(lk, [&] { return stop_ || (n_exclusive_waiting_ == 0 && (n_active_ > 0 || !queue_.empty())); });
            if (stop_ || !lost_.empty()) {
                return;
            }
        }
        std::lock_guard<std::timed_mutex> step_lock(step_mutex_);
        drop_cancelled();  // first: their sequences take waiting requests in this very step
        std::vector<std::shared_ptr<job>> admitted;
        {
            std::lock_guard<std::mutex> lk(mutex_);
            int n_free = (int) slots_.size() - n_active_;
            while (n_free-- > 0 && !queue_.empty()) {
                admitted.push_back(queue_.front());
                admitted.back()->queued = false;
                queue_.pop_front();
            }
            n_active_ += (int) admitted.size();
            stats_.n_queued = (int) queue_.size();
            stats_.n_active = n_active_;
        }
        for (const auto & j : admitted) {
            admit(j);
        }
        if (!admitted.empty()) {  // the runtime is the worker's: others read its figures here
            const flas_concept_stats concepts = rt_->stats();
            std::lock_guard<std::mutex> lk(mutex_);
            stats_.concepts = concepts;
        }
        step();
    }
}

void flas_engine::drop_cancelled() {
    for (slot & s : slots_) {
        if (s.running) {
            bool cancelled;
            {
                std::lock_guard<std::mutex> lk(mutex_);
                cancelled = s.running->cancelled;
            }
            if (cancelled) {
                finish(s.running, "cancelled");
            }
        }
    }
}

// Whether sequence seq holds rows computed under the request's steering.
bool flas_engine::reusable(int seq, const flas_request & req) const {
    return slots_[seq].trusted && rt_->holds_steering(seq, req.concept, req.flowtime, req.n_steps);
}

// A free sequence that already holds the longest prefix of the prompt under the same steering;
// otherwise the one unused for longest (keeping recent ones for reuse).
int flas_engine::choose_slot(const flas_request & req) const {
    int best = -1;
    size_t best_keep = 0;
    for (int i = 0; i < (int) slots_.size(); ++i) {
        const slot & s = slots_[i];
        if (s.running) {
            continue;
        }
        const size_t keep = !req.trace && reusable(i, req) ? common_prefix(s.tokens, req.prompt) : 0;
        if (best < 0 || keep > best_keep || (keep == best_keep && s.last_used < slots_[best].last_used)) {
            best = i;
            best_keep = keep;
        }
    }
    return best;
}

void flas_engine::admit(const std::shared_ptr<job> & j) {
    const flas_request & r = j->req;
    j->t_start = flas_clock::now();
    const int seq = choose_slot(r);
    slot & s = slots_[seq];
    s.running = j;
    j->seq = seq;
    try {
        size_t keep = 0;
        if (!reusable(seq, r)) {
            s.trusted = false;  // until the runtime holds the new steering
            rt_->set_steering(seq, unsteered(r) ? "" : r.concept, unsteered(r) ? 0.0f : r.flowtime, r.n_steps);
            s.tokens.clear();
            s.trusted = true;
        } else if (r.trace) {  // every row is recorded: from an empty sequence
            rt_->reset(seq);
            s.tokens.clear();
        } else {
            keep = common_prefix(s.tokens, r.prompt);
            rt_->rewind(seq, (int) keep);
            s.tokens.resize(keep);
        }
        rt_->set_trace(seq, r.trace);
        flas_sampling sp;
        sp.temperature    = r.temperature;
        sp.top_k          = r.top_k;
        sp.top_p          = r.top_p;
        sp.min_p          = r.min_p;
        sp.repeat_penalty = r.repeat_penalty;
        sp.repeat_last_n  = r.repeat_last_n;
        sp.seed           = r.seed;
        rt_->sampler_init(seq, sp);
        j->n_fed = keep;
        std::lock_guard<std::mutex> lk(mutex_);
        j->outbox.n_cached = (int) keep;
    } catch (const std::exception & e) {
        s.trusted = false;
        finish(j, "error", e.what());
    }
}

// One llama_decode: a token for every sequence that is generating, then prompt chunks of
// the sequences being filled, up to n_batch tokens; then a token sampled for each sequence
// whose prompt is complete.
void flas_engine::step() {
    std::vector<flas_seq_tokens> batch;
    std::vector<std::shared_ptr<job>> in_batch;
    int budget = rt_->n_batch();
    for (slot & s : slots_) {
        if (s.running && s.running->pending >= 0 && budget > 0) {
            batch.push_back({s.running->seq, {s.running->pending}});
            in_batch.push_back(s.running);
            budget--;
        }
    }
    for (slot & s : slots_) {
        job * j = s.running.get();
        if (j && j->pending < 0 && j->n_fed < j->req.prompt.size() && budget > 0) {
            const size_t take = std::min<size_t>(budget, j->req.prompt.size() - j->n_fed);
            batch.push_back({j->seq, std::vector<llama_token>(j->req.prompt.begin() + j->n_fed,
                                                              j->req.prompt.begin() + j->n_fed + take)});
            in_batch.push_back(s.running);
            budget -= (int) take;
        }
    }
    if (batch.empty()) {
        return;
    }
    std::vector<int> failed;  // sequences whose steering failed; the others decoded normally
    std::string why;
    try {
        rt_->decode(batch);
    } catch (const flas_seq_failure & e) {
        failed = e.seqs;
        why = e.what();
    } catch (const std::exception & e) {
        for (const auto & j : in_batch) {  // their sequences are in an unknown state
            slots_[j->seq].trusted = false;
            finish(j, "error", e.what());
        }
        return;
    }
    {
        std::lock_guard<std::mutex> lk(mutex_);
        stats_.n_steps++;
        stats_.n_decoded += rt_->n_batch() - budget;
    }
    for (size_t i = 0; i < batch.size(); ++i) {
        const std::shared_ptr<job> j = in_batch[i];
        slot & s = slots_[j->seq];
        if (std::find(failed.begin(), failed.end(), j->seq) != failed.end()) {
            s.trusted = false;
            finish(j, "error", why);
            continue;
        }
        s.tokens.insert(s.tokens.end(), batch[i].tokens.begin(), batch[i].tokens.end());
        if (j->pending >= 0) {
            j->pending = -1;
        } else {
            j->n_fed += batch[i].tokens.size();
            if (j->n_fed < j->req.prompt.size()) {
                continue;  // more of the prompt next step
            }
        }
        try {
            if (j->req.trace && !j->sampled_once) {
                std::vector<float> logits = rt_->logits(j->seq);
                std::lock_guard<std::mutex> lk(mutex_);
                j->outbox.prompt_logits = std::move(logits);
            }
            const llama_token tok = rt_->sample(j->seq);
            j->sampled_once = true;
            if (!j->req.trace && rt_->is_eog(tok)) {
                finish(j, "eog");
                continue;
            }
            deliver(*j, tok);
            if (++j->n_out >= j->req.max_tokens) {
                finish(j, "max_tokens");
            } else if (rt_->n_past(j->seq) >= rt_->n_ctx_seq()) {
                finish(j, "context");
            } else {
                j->pending = tok;
            }
        } catch (const std::exception & e) {
            s.trusted = false;
            finish(j, "error", e.what());
        }
    }
}

void flas_engine::deliver(job & j, llama_token token) {
    std::lock_guard<std::mutex> lk(mutex_);
    if (!lost_.empty()) {
        return;
    }
    if (j.outbox.tokens.empty() && j.n_out == 0) {
        j.outbox.prompt_seconds = seconds_since(j.t_start);
    }
    j.outbox.tokens.push_back(token);
    news_cv_.notify_all();
}

void flas_engine::finish(std::shared_ptr<job> j, const std::string & reason, const std::string & error) {
    slot & s = slots_[j->seq];
    std::vector<float> trace_in, trace_out;
    if (j->req.trace) {
        try {
            trace_in  = rt_->trace_unsteered(j->seq);
            trace_out = rt_->trace_steered(j->seq);
            rt_->set_trace(j->seq, false);
        } catch (const std::exception &) {
        }
    }
    s.running.reset();
    s.last_used = ++tick_;
    rt_->release(j->seq);
    std::lock_guard<std::mutex> lk(mutex_);
    n_active_--;
    stats_.n_active = n_active_;
    if (!lost_.empty()) {
        return;  // its outbox already holds the loss
    }
    j->outbox.done = true;
    j->outbox.finish = reason;
    j->outbox.error = error;
    j->outbox.seconds = seconds_since(j->t_start);
    if (j->n_out == 0) {
        j->outbox.prompt_seconds = j->outbox.seconds;
    }
    j->outbox.trace_in = std::move(trace_in);
    j->outbox.trace_out = std::move(trace_out);
    news_cv_.notify_all();
}

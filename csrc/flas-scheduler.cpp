// The engine's worker: admission of queued requests into sequences, prompt-prefix reuse,
// continuous batching (one llama_decode per step over every busy sequence), delivery.

#include "flas-engine.h"

#include <algorithm>
#include <stdexcept>

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
                finish(s.running, FLAS_FINISH_CANCELLED);
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
        rt_->sampler_init(seq, r.sampling);
        j->n_fed = keep;
        std::lock_guard<std::mutex> lk(mutex_);
        j->outbox.n_cached = (int) keep;
    } catch (const std::exception & e) {
        s.trusted = false;
        finish(j, FLAS_FINISH_ERROR, FLAS_ERR_RUNTIME, e.what());
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
            finish(j, FLAS_FINISH_ERROR, FLAS_ERR_RUNTIME, e.what());
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
            finish(j, FLAS_FINISH_ERROR, FLAS_ERR_RUNTIME, why);
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
                finish(j, FLAS_FINISH_EOG);
                continue;
            }
            deliver(*j, tok);
            if (++j->n_out >= j->req.max_tokens) {
                finish(j, FLAS_FINISH_MAX_TOKENS);
            } else if (rt_->n_past(j->seq) >= rt_->n_ctx_seq()) {
                finish(j, FLAS_FINISH_CONTEXT);
            } else {
                j->pending = tok;
            }
        } catch (const std::exception & e) {
            s.trusted = false;
            finish(j, FLAS_FINISH_ERROR, FLAS_ERR_RUNTIME, e.what());
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

void flas_engine::finish(std::shared_ptr<job> j, flas_finish reason, flas_status status, const std::string & error) {
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
    j->outbox.status = status;
    j->outbox.error = error;
    j->outbox.seconds = seconds_since(j->t_start);
    if (j->n_out == 0) {
        j->outbox.prompt_seconds = j->outbox.seconds;
    }
    j->outbox.trace_in = std::move(trace_in);
    j->outbox.trace_out = std::move(trace_out);
    news_cv_.notify_all();
}

#include "flas-scheduler.h"

#include <algorithm>
#include <cmath>
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

flas_scheduler::flas_scheduler(flas_runtime & rt, flas_board & board) : rt_(rt), board_(board), slots_(rt.n_seq()) {
    rt_.set_before_steer([this](int seq) { retime_now(seq); });
}

void flas_scheduler::step() {
    drop_cancelled();  // first: their sequences take waiting requests in this very step
    int n_free = 0;
    for (const slot & s : slots_) {
        n_free += s.run ? 0 : 1;
    }
    const std::vector<std::shared_ptr<flas_ticket>> taken = board_.take(n_free);
    for (const auto & t : taken) {
        admit(t);
    }
    bool changed = false;
    for (size_t seq = 0; seq < slots_.size(); ++seq) {
        changed = (slots_[seq].run && restyle((int) seq)) || changed;
    }
    if (!taken.empty() || changed) {  // the runtime is the worker's: others read its figures here
        board_.set_concepts(rt_.stats());
    }
    decode();
}

std::vector<uint64_t> flas_scheduler::epochs() const {
    std::vector<uint64_t> out;
    for (size_t seq = 0; seq < slots_.size(); ++seq) {
        out.push_back(rt_.epoch((int) seq));
    }
    return out;
}

void flas_scheduler::after_exclusive(const std::vector<uint64_t> & before) {
    for (size_t seq = 0; seq < slots_.size(); ++seq) {
        if (rt_.epoch((int) seq) == before[seq]) {
            continue;
        }
        slots_[seq].trusted = false;
        if (slots_[seq].run) {
            finish((int) seq, FLAS_FINISH_ERROR, FLAS_ERR_RUNTIME,
                   "its sequence was changed by a call made between two decode steps (flas_exclusive, a steer hook "
                   "or a memory reservation) while it ran");
        }
    }
    board_.set_concepts(rt_.stats());  // the call may have encoded concepts
}

void flas_scheduler::drop_cancelled() {
    for (size_t seq = 0; seq < slots_.size(); ++seq) {
        if (slots_[seq].run && board_.cancelled(*slots_[seq].run->ticket)) {
            finish((int) seq, FLAS_FINISH_CANCELLED);
        }
    }
}

// Whether sequence seq holds rows computed under the request's steering (its prompt's: the
// flowtime at token 0), with the concept it will need (a schedule rising from 0 needs one that an
// unsteered sequence does not hold).
bool flas_scheduler::reusable(int seq, const flas_request & req) const {
    const flas_steer & st = req.steer;
    const float t0 = st.flowtime.at(0);
    return slots_[seq].trusted && (t0 > 0.0f || st.unsteered()) && rt_.holds_steering(seq, st.concept, t0, st.n_steps);
}

// A free sequence that already holds the longest prefix of the prompt under the same steering;
// otherwise the one unused for longest (keeping recent ones for reuse).
int flas_scheduler::choose_slot(const flas_request & req) const {
    int best = -1;
    size_t best_keep = 0;
    for (int i = 0; i < (int) slots_.size(); ++i) {
        const slot & s = slots_[i];
        if (s.run) {
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

void flas_scheduler::admit(std::shared_ptr<flas_ticket> t) {
    const flas_request & r = t->req;
    const int seq = choose_slot(r);
    slot & s = slots_[seq];
    s.run = std::make_unique<running>();
    s.run->ticket = std::move(t);
    s.run->steer = r.steer;
    s.run->t_start = flas_clock::now();
    try {
        size_t keep = 0;
        if (!reusable(seq, r)) {
            const flas_steer & st = r.steer;
            s.trusted = false;  // until the runtime holds the new steering
            rt_.set_steering(seq, st.unsteered() ? "" : st.concept, st.unsteered() ? 0.0f : st.flowtime.max(), st.n_steps);
            rt_.set_flowtime(seq, st.unsteered() ? 0.0f : st.flowtime.at(0));  // the prompt's rows
            s.tokens.clear();
            s.trusted = true;
        } else if (r.trace) {  // every row is recorded: from an empty sequence
            rt_.reset(seq);
            s.tokens.clear();
        } else {
            keep = common_prefix(s.tokens, r.prompt);
            rt_.rewind(seq, (int) keep);
            s.tokens.resize(keep);
        }
        rt_.pin(seq);  // a reused sequence's concept too: no other admission may evict it while it runs
        rt_.set_trace(seq, r.trace);
        rt_.set_telemetry(seq, r.telemetry);
        rt_.sampler_init(seq, r.sampling);
        s.run->n_fed = keep;
        board_.set_cached(*s.run->ticket, (int) keep);
    } catch (const std::exception & e) {
        s.trusted = false;
        finish(seq, FLAS_FINISH_ERROR, FLAS_ERR_RUNTIME, e.what());
    }
}

// One llama_decode: a token for every sequence that is generating, then prompt chunks of
// the sequences being filled, up to n_batch tokens; then a token sampled for each sequence
// whose prompt is complete.
void flas_scheduler::decode() {
    std::vector<flas_seq_tokens> batch;
    int budget = rt_.n_batch();
    for (size_t seq = 0; seq < slots_.size(); ++seq) {
        const running * r = slots_[seq].run.get();
        if (r && r->pending >= 0 && budget > 0) {
            if (!retime((int) seq)) {
                continue;
            }
            batch.push_back({(int) seq, {r->pending}});
            budget--;
        }
    }
    for (size_t seq = 0; seq < slots_.size(); ++seq) {
        const running * r = slots_[seq].run.get();
        if (r == nullptr) {
            continue;
        }
        const std::vector<llama_token> & prompt = r->ticket->req.prompt;
        if (r->pending < 0 && r->n_fed < prompt.size() && budget > 0) {
            const size_t take = std::min<size_t>(budget, prompt.size() - r->n_fed);
            batch.push_back({(int) seq, std::vector<llama_token>(prompt.begin() + r->n_fed, prompt.begin() + r->n_fed + take)});
            budget -= (int) take;
        }
    }
    if (batch.empty()) {
        return;
    }
    std::vector<int> failed;  // sequences whose steering failed; the others decoded normally
    std::string why;
    try {
        rt_.decode(batch);
    } catch (const flas_seq_failure & e) {
        failed = e.seqs;
        why = e.what();
    } catch (const std::exception & e) {
        for (const flas_seq_tokens & entry : batch) {  // their sequences are in an unknown state
            slots_[entry.seq].trusted = false;
            finish(entry.seq, FLAS_FINISH_ERROR, FLAS_ERR_RUNTIME, e.what());
        }
        return;
    }
    board_.count_step(rt_.n_batch() - budget);
    for (const flas_seq_tokens & entry : batch) {
        const int seq = entry.seq;
        slot & s = slots_[seq];
        running & r = *s.run;
        const flas_request & req = r.ticket->req;
        if (std::find(failed.begin(), failed.end(), seq) != failed.end()) {
            s.trusted = false;
            finish(seq, FLAS_FINISH_ERROR, FLAS_ERR_RUNTIME, why);
            continue;
        }
        s.tokens.insert(s.tokens.end(), entry.tokens.begin(), entry.tokens.end());
        if (r.pending >= 0) {
            r.pending = -1;
        } else {
            r.n_fed += entry.tokens.size();
            if (r.n_fed < req.prompt.size()) {
                continue;  // more of the prompt next step
            }
        }
        try {
            if (req.trace && !r.sampled_once) {
                board_.set_prompt_logits(*r.ticket, rt_.logits(seq));
            }
            const llama_token tok = rt_.sample(seq);
            r.sampled_once = true;
            if (!req.trace && rt_.is_eog(tok)) {
                finish(seq, FLAS_FINISH_EOG);
                continue;
            }
            board_.deliver(*r.ticket, token_data(seq, tok), r.n_out == 0 ? seconds_since(r.t_start) : -1.0);
            if (++r.n_out >= req.max_tokens) {
                finish(seq, FLAS_FINISH_MAX_TOKENS);
            } else if (rt_.n_past(seq) >= rt_.n_ctx_seq()) {
                finish(seq, FLAS_FINISH_CONTEXT);
            } else {
                r.pending = tok;
            }
        } catch (const std::exception & e) {
            s.trusted = false;
            finish(seq, FLAS_FINISH_ERROR, FLAS_ERR_RUNTIME, e.what());
        }
    }
}

// What token tok, just sampled, was decoded with: the strength of its pass (set before the decode
// by restyle or retime) and, measured on request, how far the flow moved that pass's last row.
flas_token_data flas_scheduler::token_data(int seq, llama_token tok) {
    const running & r = *slots_[seq].run;
    flas_token_data d{};
    d.token = tok;
    d.flowtime = r.steer.unsteered() ? 0.0f : r.steer.flowtime.at(r.n_out - r.origin);
    d.displacement = r.ticket->req.telemetry ? rt_.take_displacement(seq) : NAN;
    d.logprob = NAN;
    d.n_top = 0;
    const int k = r.ticket->req.logprobs;
    if (k >= 0) {  // log-softmax of the raw logits, as llama-cpp-python's logprobs
        const std::vector<float> logits = rt_.logits(seq);
        const float top = *std::max_element(logits.begin(), logits.end());
        double sum = 0.0;
        for (float l : logits) {
            sum += std::exp((double) l - top);
        }
        const float norm = top + (float) std::log(sum);
        d.logprob = logits[tok] - norm;
        std::vector<int32_t> ids(logits.size());
        for (size_t i = 0; i < ids.size(); ++i) {
            ids[i] = (int32_t) i;
        }
        d.n_top = std::min<int>(k, (int) ids.size());
        std::partial_sort(ids.begin(), ids.begin() + d.n_top, ids.end(), [&](int32_t a, int32_t b) {
            return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
        });
        for (int i = 0; i < d.n_top; ++i) {
            d.top_token[i] = ids[i];
            d.top_logprob[i] = logits[ids[i]] - norm;
        }
    }
    return d;
}

// A change of the request's steering posted since the last step: in force from the rows decoded
// next, i.e. for the next generated token (a schedule counted from there). A change the runtime
// refuses as invalid leaves the request as it was; a failure ends it. Whether one was taken.
bool flas_scheduler::restyle(int seq) {
    slot & s = slots_[seq];
    running & r = *s.run;
    const std::unique_ptr<flas_steer> next = board_.take_change(*r.ticket);
    if (!next) {
        return false;
    }
    const bool off = next->unsteered();
    try {
        try {  // refused before anything changed
            rt_.change_steering(seq, off ? "" : next->concept, off ? 0.0f : next->flowtime.max(), next->n_steps);
        } catch (const std::invalid_argument & e) {
            board_.settle_change(*r.ticket, -1, FLAS_ERR_INVALID_ARGUMENT, e.what());
            return true;
        }
        adopt(seq, *next);
    } catch (const std::exception & e) {
        s.trusted = false;
        board_.settle_change(*r.ticket, -1, FLAS_ERR_RUNTIME, e.what());
        finish(seq, FLAS_FINISH_ERROR, FLAS_ERR_RUNTIME, std::string("changing its steering: ") + e.what());
    }
    return true;
}

// Inside the step, just before layer L's rows of the sequence are steered: a change posted since
// the step began that only sets a new strength (same concept and steps, steered before and after)
// takes effect for this very step's token, without waiting for the next step. Changes that
// encode a concept or change more wait for the step's end (restyle): encoding runs the base
// model, which is decoding now.
void flas_scheduler::retime_now(int seq) {
    if (!slots_[seq].run) {
        return;
    }
    slot & s = slots_[seq];
    running & r = *s.run;
    const std::unique_ptr<flas_steer> next = board_.take_change(*r.ticket, [&](const flas_steer & c) {
        return !c.unsteered() && !r.steer.unsteered() && c.concept == r.steer.concept && c.n_steps == r.steer.n_steps;
    });
    if (!next) {
        return;
    }
    adopt(seq, *next);  // a failure fails the whole step, as any in the callback
}

// The change's strength from the token this step samples (its schedule counted from there), the
// change settled. The sequence then holds rows of two steerings: no later request's prefix.
void flas_scheduler::adopt(int seq, const flas_steer & next) {
    slot & s = slots_[seq];
    running & r = *s.run;
    s.trusted = false;
    rt_.set_flowtime(seq, next.unsteered() ? 0.0f : next.flowtime.at(0));
    r.steer = next;
    r.origin = r.n_out;
    board_.settle_change(*r.ticket, r.n_out, FLAS_OK, "");
}

// Before a generated token's row is decoded: the strength its schedule gives the token that row
// samples. The sequence then holds rows of several strengths, which no later request's prefix
// reuse may take for its own. False: it failed and ended.
bool flas_scheduler::retime(int seq) {
    slot & s = slots_[seq];
    const running & r = *s.run;
    if (r.steer.unsteered() || r.steer.flowtime.is_constant()) {
        return true;
    }
    try {
        s.trusted = false;
        rt_.set_flowtime(seq, r.steer.flowtime.at(r.n_out - r.origin));
        return true;
    } catch (const std::exception & e) {
        finish(seq, FLAS_FINISH_ERROR, FLAS_ERR_RUNTIME, e.what());
        return false;
    }
}

void flas_scheduler::finish(int seq, flas_finish reason, flas_status status, const std::string & error) {
    slot & s = slots_[seq];
    const std::unique_ptr<running> r = std::move(s.run);
    std::vector<float> trace_in, trace_out;
    if (r->ticket->req.trace) {
        try {
            trace_in  = rt_.trace_unsteered(seq);
            trace_out = rt_.trace_steered(seq);
            rt_.set_trace(seq, false);
        } catch (const std::exception &) {
        }
    }
    s.last_used = ++tick_;
    rt_.release(seq);
    flas_end e;
    e.finish = reason;
    e.status = status;
    e.error = error;
    e.seconds = seconds_since(r->t_start);
    e.prompt_seconds = r->n_out == 0 ? e.seconds : -1.0;  // -1: the board keeps its first token's
    board_.finish(*r->ticket, std::move(e), std::move(trace_in), std::move(trace_out));
}

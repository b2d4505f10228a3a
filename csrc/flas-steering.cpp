// The flow steering (flas-steering.h): the concept table (lookup, eviction, encoding on a
// miss), each sequence's steering (its concept, its time embeddings for (T, N), its folded
// values, its flow caches), the steer hook and traces, and the rows of layer L handed over by
// the host's eval callback, split into flow passes (flas-pass.cpp).
#include "flas-steering.h"

#include "flas-graph.h"
#include "flas-prompt.h"
#include "flas-rules.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

// ---------------------------------------------------------------------------------------------
// construction
// ---------------------------------------------------------------------------------------------

flas_steering::flas_steering(ggml_backend_ptr backend, flas_flow flow, const flas_steering_params & params,
                             llama_model * model, llama_context_params encoder_cparams, std::vector<float> output_norm,
                             std::function<void(int seq)> reset)
    : params_(params), vocab_(llama_model_get_vocab(model)), reset_(std::move(reset)), backend_(std::move(backend)),
      flow_(std::move(flow)) {
    encoder_ = std::make_unique<flas_concept_encoder>(model, flow_, backend_.get(), encoder_cparams, std::move(output_norm));
    concepts_.bound = params.concept_cache;
    concepts_.slots.resize(std::max(params.concept_cache, params.n_seq));
    flas_concept_state_init(concept_, flow_, backend_.get(), (int) concepts_.slots.size(), params.n_seq,
                            flas_state_type(params.exact));
    seqs_.resize(params.n_seq);
    allocr_.reset(ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend_.get())));
}

flas_steering::~flas_steering() = default;

// ---------------------------------------------------------------------------------------------
// the concept table
// ---------------------------------------------------------------------------------------------

// The tokens a concept is encoded from: BOS first, the first concept_max_len, as trained.
// n_total: its whole token count.
std::vector<llama_token> flas_steering::concept_tokens(const std::string & text, int & n_total) const {
    std::vector<llama_token> tokens = flas_tokenize(vocab_, text, /*add_special =*/ true, /*parse_special =*/ true);
    n_total = (int) tokens.size();
    if (text.find_first_not_of(" \t\r\n") == std::string::npos || tokens.empty()) {
        throw std::invalid_argument("the concept is empty; describe it in words, e.g. \"Talk like a pirate\"");
    }
    tokens.resize(std::min(n_total, flow_.hp.concept_max_len));
    return tokens;
}

// The slot holding `text`, encoding it into the least recently used free slot on a miss.
// The caller becomes one of its users.
int flas_steering::acquire_concept(const std::string & text, int & n_total) {
    std::vector<llama_token> tokens = concept_tokens(text, n_total);
    int slot = concepts_.find(text);
    if (slot >= 0) {
        concepts_.n_hits++;
    } else {
        slot = concepts_.victim();
        if (slot < 0) {  // cannot happen: there are at least n_seq slots
            throw std::runtime_error("every concept slot is in use");
        }
        flas_concept_entry & entry = concepts_.slots[slot];
        for (int seq = 0; seq < n_seq(); ++seq) {  // idle sequences steered by the evicted concept
            if (seqs_[seq].slot == slot) {
                seqs_[seq].slot = -1;
                reset_(seq);
            }
        }
        entry.text.clear();  // until it holds the new concept
        const int K = (int) tokens.size();
        encoder_->encode(std::move(tokens), concept_, slot);
        entry.text = text;
        entry.n_tokens = K;
        entry.encoding = (uint64_t) ++concepts_.n_encoded;
    }
    concepts_.slots[slot].n_users++;
    concepts_.touch(slot);
    return slot;
}

std::vector<float> flas_steering::concept_rows(const std::string & concept) {
    int n_total = 0;
    return encoder_->rows(concept_tokens(concept, n_total));
}

int flas_steering::prepare_concept(const std::string & concept) {
    int n_total = 0;
    const int slot = acquire_concept(concept, n_total);
    concepts_.slots[slot].n_users--;  // encoded, not pinned: no sequence uses it yet
    return n_total;
}

// ---------------------------------------------------------------------------------------------
// steering of a sequence
// ---------------------------------------------------------------------------------------------

int flas_steering::set_steering(int seq, const std::string & concept, float flowtime, int n_steps) {
    flas_seq_steering & s = seqs_[seq];
    flas_steering_check(!concept.empty(), flowtime, n_steps);
    release(seq);  // first: with n_seq slots, every other one may be in use
    s.slot = -1;
    s.flowtime = 0.0f;
    reset_(seq);  // its rows were computed under the old steering
    int n_total = 0;
    if (!concept.empty() && flowtime > 0.0f) {  // T = 0 is the unsteered model: no concept needed
        s.slot = acquire_concept(concept, n_total);
        s.pinned = true;
    }
    s.flowtime = flowtime;
    s.n_steps  = n_steps;
    if (s.steered()) {
        if (grow_cache(seq, n_steps)) {
            reserve_flow(seq);
        }
        compute_time_embeddings(seq);
        compute_folded_values(seq);
    }
    return n_total;
}

int flas_steering::change_steering(int seq, const std::string & concept, float flowtime, int n_steps) {
    flas_seq_steering & s = seqs_[seq];
    flas_steering_check(!concept.empty(), flowtime, n_steps);
    const bool steer = !concept.empty() && flowtime > 0.0f;
    int n_total = 0;
    if (steer) {
        concept_tokens(concept, n_total);  // an empty concept is refused before anything changes
    }
    if (flow_.hp.has_self_attn && !s.steered() && steer) {
        throw std::invalid_argument("this flow's self-attention reads every earlier row of the sequence through the flow, "
                                    "and this request's were not (it started unsteered): give it its concept from the "
                                    "start (a flowtime schedule may begin at 0) to steer it later");
    }
    if (flow_.hp.has_self_attn && s.steered() && n_steps != s.n_steps) {
        throw std::invalid_argument("this flow's self-attention keeps each of the " + std::to_string(s.n_steps) +
                                    " Euler steps of the rows already decoded: n_steps cannot change while the "
                                    "request runs (concept and flowtime can)");
    }
    if (!steer && (!flow_.hp.has_self_attn || !s.steered())) {  // unsteered from here: rows untouched
        release(seq);
        s.slot = -1;
        s.flowtime = 0.0f;
        s.n_steps = n_steps;
        return 0;
    }
    if (!steer) {  // with self-attention the rows still go through the flow, at T = 0, for later rows to read
        set_flowtime(seq, 0.0f);
        return 0;
    }
    if (!s.steered() || concepts_.slots[s.slot].text != concept) {
        release(seq);
        s.slot = -1;  // not this sequence's any more: an eviction in acquire_concept must not empty it
        s.slot = acquire_concept(concept, n_total);
        s.pinned = true;
    }
    s.flowtime = flowtime;
    s.n_steps  = n_steps;
    if (grow_cache(seq, n_steps)) {  // only without self-attention: its cache holds nothing the rows read
        reserve_flow(seq);
    }
    compute_time_embeddings(seq);
    compute_folded_values(seq);
    return n_total;
}

void flas_steering::set_flowtime(int seq, float flowtime) {
    flas_seq_steering & s = seqs_[seq];
    if (flowtime == s.flowtime) {
        return;
    }
    flas_steering_check(s.slot >= 0, flowtime, s.n_steps);
    s.flowtime = flowtime;
    if (s.steered()) {
        compute_time_embeddings(seq);
    }
}

void flas_steering::pin(int seq) {
    flas_seq_steering & s = seqs_[seq];
    if (!s.pinned && s.slot >= 0) {
        concepts_.slots[s.slot].n_users++;
        concepts_.touch(s.slot);
        s.pinned = true;
    }
}

// The sequence's concept values folded through cross_out (concept state uo), for a concept short
// enough to fold: copied from a sequence that holds them already, else computed. values_encoding
// says which concept encoding they belong to; a pass folds only when it matches.
void flas_steering::compute_folded_values(int seq) {
    const flas_flow_hparams & hp = flow_.hp;
    flas_seq_steering & s = seqs_[seq];
    const flas_concept_entry & entry = concepts_.slots[s.slot];
    if (s.values_encoding == entry.encoding || entry.n_tokens > concept_.fold_keys) {
        return;
    }
    s.values_encoding = 0;
    int source = -1;
    for (int other = 0; other < n_seq() && source < 0; ++other) {
        source = other != seq && seqs_[other].values_encoding == entry.encoding ? other : -1;
    }
    const size_t n_nodes = (size_t) 16 * hp.n_block + 8;
    ggml_context_ptr ctx = flas_graph_context(n_nodes);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx.get(), n_nodes, false);
    ggml_tensor * eye = nullptr;
    if (source < 0) {
        eye = ggml_new_tensor_4d(ctx.get(), GGML_TYPE_F32, 1, hp.n_head, 1, hp.n_head);
        ggml_set_input(eye);
    }
    for (int b = 0; b < hp.n_block; ++b) {
        if (source >= 0) {
            ggml_tensor * uo = concept_.uo[b];
            ggml_build_forward_expand(gf, ggml_cpy(ctx.get(), ggml_view_1d(ctx.get(), uo, uo->ne[0], source * uo->nb[1]),
                                                   ggml_view_1d(ctx.get(), uo, uo->ne[0], seq * uo->nb[1])));
        } else {
            flas_build_folded_values(ctx.get(), gf, flow_, concept_, b, s.slot, entry.n_tokens, seq, eye);
        }
    }
    flas_compute_once(backend_.get(), gf, [&] {
        if (eye != nullptr) {  // a graph of copies has no input
            std::vector<float> identity((size_t) hp.n_head * hp.n_head, 0.0f);
            for (int h = 0; h < hp.n_head; ++h) {
                identity[(size_t) h * hp.n_head + h] = 1.0f;
            }
            ggml_backend_tensor_set(eye, identity.data(), 0, ggml_nbytes(eye));
        }
    });
    s.values_encoding = entry.encoding;
}

// Columns seq*MAX .. seq*MAX+N-1 of the concept state's time_emb: time_embed(k * T / N) (FLAS_SPEC.md 4).
void flas_steering::compute_time_embeddings(int seq) {
    const flas_flow_hparams & hp = flow_.hp;
    const flas_seq_steering & sq = seqs_[seq];
    const int F = hp.time_freq_dim, half = F / 2, N = sq.n_steps;
    const float dt = sq.flowtime / N;
    std::vector<float> sinusoids((size_t) F * N);
    for (int k = 0; k < N; ++k) {
        const float t = k * dt;
        for (int j = 0; j < half; ++j) {
            const float freq = expf((float) -std::log(10000.0) * (float) j / (float) half);
            sinusoids[(size_t) k * F + j]        = sinf(t * freq);  // sin first
            sinusoids[(size_t) k * F + half + j] = cosf(t * freq);
        }
    }
    ggml_context_ptr ctx = flas_graph_context(32);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx.get(), 32, false);
    ggml_tensor * s = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, F, N);
    ggml_set_input(s);
    ggml_tensor * emb = flas_build_time_embedding(ctx.get(), flow_, s);
    ggml_tensor * dst = ggml_view_2d(ctx.get(), concept_.time_emb, hp.n_embd, N, concept_.time_emb->nb[1],
                                     (size_t) seq * FLAS_MAX_STEPS * concept_.time_emb->nb[1]);
    ggml_build_forward_expand(gf, ggml_cpy(ctx.get(), emb, dst));
    flas_compute_once(backend_.get(), gf, [&] { ggml_backend_tensor_set(s, sinusoids.data(), 0, ggml_nbytes(s)); });
}

void flas_steering::release(int seq) {
    flas_seq_steering & s = seqs_[seq];
    if (s.pinned && s.slot >= 0) {
        concepts_.slots[s.slot].n_users--;
    }
    s.pinned = false;
}

bool flas_steering::holds_steering(int seq, const std::string & concept, float flowtime, int n_steps) const {
    const flas_seq_steering & s = seqs_.at(seq);
    if (concept.empty() || flowtime == 0.0f) {
        return !s.steered();
    }
    return s.steered() && concepts_.slots[s.slot].text == concept && s.flowtime == flowtime && s.n_steps == n_steps;
}

void flas_steering::set_steer_hook(flas_row_hook hook) {
    hook_ = std::move(hook);
    for (int seq = 0; seq < n_seq(); ++seq) {
        reset_(seq);
    }
}

void flas_steering::set_telemetry(int seq, bool on) {
    seqs_[seq].telemetry = on;
    seqs_[seq].displacement = 0.0f;
}

float flas_steering::take_displacement(int seq) {
    const float d = seqs_[seq].displacement;
    seqs_[seq].displacement = 0.0f;
    return d;
}

void flas_steering::set_trace(int seq, bool on) {
    seqs_[seq].trace = on;
    clear_trace(seq);
}

void flas_steering::clear_trace(int seq) {
    flas_seq_steering & s = seqs_[seq];
    s.trace_in.clear();
    s.trace_out.clear();
}

// ---------------------------------------------------------------------------------------------
// facts
// ---------------------------------------------------------------------------------------------

flas_concept_stats flas_steering::stats() const {
    flas_concept_stats st;
    st.concepts_encoded = concepts_.n_encoded;
    st.concept_hits = concepts_.n_hits;
    st.concepts_cached = concepts_.n_cached();
    return st;
}

std::string flas_steering::backend_name() const { return ggml_backend_name(backend_.get()); }

std::string flas_steering::device_name() const { return ggml_backend_dev_name(ggml_backend_get_device(backend_.get())); }

void flas_steering::add_memory(std::vector<flas_device_memory> & rows) const {
    flas_device_memory & flow = flas_memory_row(rows, ggml_backend_get_device(backend_.get()));
    flow.flow_weights = flow_.buf ? ggml_backend_buffer_get_size(flow_.buf.get()) : 0;
    flow.flow_caches  = concept_.buf ? ggml_backend_buffer_get_size(concept_.buf.get()) : 0;
    for (const flas_seq_steering & s : seqs_) {
        flow.flow_caches += s.cache.buf ? ggml_backend_buffer_get_size(s.cache.buf.get()) : 0;
    }
    flow.flow_compute = allocr_ ? ggml_gallocr_get_buffer_size(allocr_.get(), 0) : 0;
}

// ---------------------------------------------------------------------------------------------
// reservation
// ---------------------------------------------------------------------------------------------

bool flas_steering::grow_cache(int seq, int n_steps) {
    flas_seq_steering & s = seqs_[seq];
    if (s.cache.n_steps >= n_steps) {
        return false;
    }
    flas_flow_cache_init(s.cache, flow_, backend_.get(), params_.n_ctx_seq, n_steps, flas_state_type(params_.exact));
    return true;
}

// As if the sequence were steered with n_steps, whatever it is steered with now.
void flas_steering::reserve(int seq, int n_steps) {
    flas_seq_steering & s = seqs_[seq];
    const int held = s.n_steps;
    s.n_steps = n_steps;
    try {
        reserve_flow(seq);
    } catch (...) {
        s.n_steps = held;
        throw;
    }
    s.n_steps = held;
}

// ---------------------------------------------------------------------------------------------
// the rows of layer L, in the host's eval callback
// ---------------------------------------------------------------------------------------------

bool flas_steering::active() const {
    if (hook_) {
        return true;
    }
    for (const flas_seq_steering & s : seqs_) {
        if (s.trace || s.steered()) {
            return true;
        }
    }
    return false;
}

void flas_steering::steer(ggml_tensor * t, const std::vector<flas_seq_rows> & parts, flas_pass_failures & failed) {
    const int H = flow_.hp.n_embd;
    const size_t row_bytes = (size_t) H * sizeof(float);
    auto record = [&](bool after) {
        for (const flas_seq_rows & part : parts) {
            flas_seq_steering & s = seqs_[part.seq];
            if (s.trace) {
                std::vector<float> & dst = after ? s.trace_out : s.trace_in;
                const size_t off = dst.size();
                dst.resize(off + (size_t) part.n * H);
                ggml_backend_tensor_get(t, dst.data() + off, part.row0 * row_bytes, part.n * row_bytes);
            }
        }
    };
    record(false);
    // telemetry: each measured sequence's last row (the one whose logits sample its next token), before
    std::vector<std::pair<const flas_seq_rows *, std::vector<float>>> measured;
    for (const flas_seq_rows & part : parts) {
        if (seqs_[part.seq].telemetry) {
            measured.emplace_back(&part, std::vector<float>(H));
            ggml_backend_tensor_get(t, measured.back().second.data(), (part.row0 + part.n - 1) * row_bytes, row_bytes);
        }
    }
    if (hook_) {
        for (const flas_seq_rows & part : parts) {
            std::vector<float> in((size_t) part.n * H), out((size_t) part.n * H);
            ggml_backend_tensor_get(t, in.data(), part.row0 * row_bytes, part.n * row_bytes);
            hook_(in.data(), out.data(), part.n, part.p0);
            ggml_backend_tensor_set(t, out.data(), part.row0 * row_bytes, part.n * row_bytes);
        }
    } else {
        std::vector<flas_seq_rows> steered;
        for (const flas_seq_rows & part : parts) {
            if (seqs_[part.seq].steered()) {  // no concept: the rows stay untouched
                if (part.p0 + part.n > params_.n_ctx_seq) {
                    throw std::runtime_error("position " + std::to_string(part.p0 + part.n) + " beyond the flow cache");
                }
                steered.push_back(part);
            }
        }
        // passes of at most FLAS_MAX_PASS_ROWS rows, in order: a sequence's later rows see the
        // cache entries of its earlier ones, as across ubatches
        std::vector<flas_seq_rows> pass;
        int n_pass = 0;
        for (const flas_seq_rows & part : steered) {
            for (int off = 0; off < part.n;) {
                const int take = std::min(part.n - off, FLAS_MAX_PASS_ROWS - n_pass);
                pass.push_back({part.seq, part.row0 + off, take, part.p0 + off});
                n_pass += take;
                off += take;
                if (n_pass == FLAS_MAX_PASS_ROWS) {
                    run_flow(t, pass, failed);
                    pass.clear();
                    n_pass = 0;
                }
            }
        }
        if (!pass.empty()) {
            run_flow(t, pass, failed);
        }
    }
    record(true);
    std::vector<float> after(H);
    for (const auto & [part, before] : measured) {
        ggml_backend_tensor_get(t, after.data(), (part->row0 + part->n - 1) * row_bytes, row_bytes);
        double moved = 0.0, norm = 0.0;
        for (int i = 0; i < H; ++i) {
            moved += ((double) after[i] - before[i]) * ((double) after[i] - before[i]);
            norm += (double) before[i] * before[i];
        }
        seqs_[part->seq].displacement = norm > 0.0 ? (float) std::sqrt(moved / norm) : 0.0f;
    }
}

// The steering of a sequence: its concept, from the table of encoded concepts (encoded on a
// miss), its time embeddings for (T, N) and its flow caches; and the concept table itself.
#include "flas-graph.h"
#include "flas-rules.h"
#include "flas-runtime.h"

#include <sstream>

#include <cmath>
#include <stdexcept>

// ---------------------------------------------------------------------------------------------
// the concept table
// ---------------------------------------------------------------------------------------------

int flas_concept_table::find(const std::string & text) const {
    for (size_t i = 0; i < slots.size(); ++i) {
        if (!slots[i].text.empty() && slots[i].text == text) {
            return (int) i;
        }
    }
    return -1;
}

int flas_concept_table::n_cached() const {
    int n = 0;
    for (const flas_concept_entry & e : slots) {
        n += e.text.empty() ? 0 : 1;
    }
    return n;
}

// Below the bound: a free slot. At the bound: the least recently used concept nobody steers
// with, else (all in use) a free slot beyond the bound.
int flas_concept_table::victim() const {
    int free_slot = -1, lru = -1;
    for (size_t i = 0; i < slots.size(); ++i) {
        if (slots[i].text.empty()) {
            free_slot = free_slot < 0 ? (int) i : free_slot;
        } else if (slots[i].n_users == 0 && (lru < 0 || slots[i].last_use < slots[lru].last_use)) {
            lru = (int) i;
        }
    }
    if (n_cached() < bound && free_slot >= 0) {
        return free_slot;
    }
    return lru >= 0 ? lru : free_slot;
}

// The slot holding `text`, encoding it into the least recently used free slot on a miss.
// The caller becomes one of its users.
int flas_runtime::acquire_concept(const std::string & text, int & n_total) {
    std::vector<llama_token> tokens = tokenize(text, /*add_special =*/ true, /*parse_special =*/ true);
    n_total = (int) tokens.size();
    if (text.find_first_not_of(" \t\r\n") == std::string::npos || tokens.empty()) {
        throw std::invalid_argument("the concept is empty; describe it in words, e.g. \"Talk like a pirate\"");
    }
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
                reset(seq);
            }
        }
        entry.text.clear();  // until it holds the new concept
        const int K = std::min(n_total, flow_.hp.concept_max_len);  // as trained: the first concept_max_len tokens
        tokens.resize(K);
        encoder_->encode(std::move(tokens), concept_, slot);
        entry.text = text;
        entry.n_tokens = K;
        entry.encoding = (uint64_t) ++concepts_.n_encoded;
    }
    concepts_.slots[slot].n_users++;
    concepts_.touch(slot);
    return slot;
}

int flas_runtime::prepare_concept(const std::string & concept) {
    int n_total = 0;
    const int slot = acquire_concept(concept, n_total);
    concepts_.slots[slot].n_users--;  // encoded, not pinned: no sequence uses it yet
    return n_total;
}

// ---------------------------------------------------------------------------------------------
// steering of a sequence
// ---------------------------------------------------------------------------------------------

int flas_runtime::set_steering(int seq, const std::string & concept, float flowtime, int n_steps) {
    flas_seq & s = seqs_[check_seq(seq)];
    flas_steering_check(!concept.empty(), flowtime, n_steps);
    release(seq);  // first: with n_seq slots, every other one may be in use
    s.slot = -1;
    s.flowtime = 0.0f;
    reset(seq);  // its rows were computed under the old steering
    int n_total = 0;
    if (!concept.empty() && flowtime > 0.0f) {  // T = 0 is the unsteered model: no concept needed
        s.slot = acquire_concept(concept, n_total);
        s.pinned = true;
    }
    s.flowtime = flowtime;
    s.n_steps  = n_steps;
    if (s.steered()) {
        if (s.cache.n_steps < n_steps) {
            flas_flow_cache_init(s.cache, flow_, backend_.get(), n_ctx_seq_, n_steps,
                                 flas_state_type(params_.exact));
            reserve_flow(seq);
        }
        compute_time_embeddings(seq);
        compute_folded_values(seq);
    }
    return n_total;
}

// The sequence's concept values folded through cross_out (concept state uo), for a concept short
// enough to fold: copied from a sequence that holds them already, else computed. values_encoding
// says which concept encoding they belong to; a pass folds only when it matches.
void flas_runtime::compute_folded_values(int seq) {
    const flas_flow_hparams & hp = flow_.hp;
    flas_seq & s = seqs_[seq];
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
void flas_runtime::compute_time_embeddings(int seq) {
    const flas_flow_hparams & hp = flow_.hp;
    const flas_seq & sq = seqs_[seq];
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

void flas_runtime::release(int seq) {
    flas_seq & s = seqs_[check_seq(seq)];
    if (s.pinned && s.slot >= 0) {
        concepts_.slots[s.slot].n_users--;
    }
    s.pinned = false;
}

bool flas_runtime::holds_steering(int seq, const std::string & concept, float flowtime, int n_steps) const {
    const flas_seq & s = seqs_.at(check_seq(seq));
    if (concept.empty() || flowtime == 0.0f) {
        return !s.steered();
    }
    return s.steered() && concepts_.slots[s.slot].text == concept && s.flowtime == flowtime && s.n_steps == n_steps;
}

void flas_runtime::set_steer_hook(flas_row_hook hook) {
    hook_ = std::move(hook);
    for (int seq = 0; seq < n_seq(); ++seq) {
        reset(seq);
    }
}

void flas_runtime::set_trace(int seq, bool on) {
    flas_seq & s = seqs_[check_seq(seq)];
    s.trace = on;
    s.trace_in.clear();
    s.trace_out.clear();
}

flas_concept_stats flas_runtime::stats() const {
    flas_concept_stats st;
    st.concepts_encoded = concepts_.n_encoded;
    st.concept_hits = concepts_.n_hits;
    st.concepts_cached = concepts_.n_cached();
    return st;
}

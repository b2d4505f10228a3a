// The sequence table: what the runtime keeps per llama.cpp sequence id, and the bounded
// cache of encoded concepts that sequences share by text.
#pragma once

#include "flas-state.h"

#include "llama-cpp.h"

#include <cstdint>
#include <string>
#include <vector>

// One llama.cpp sequence: its steering, its flow caches and positions, its sampler.
struct flas_seq {
    int   slot     = -1;     // concept cache slot; -1: no concept
    bool  pinned   = false;  // its concept may not be evicted (set_steering until release)
    float flowtime = 0.0f;
    int   n_steps  = 0;
    int   n_past   = 0;      // positions 0 .. n_past-1 are in llama.cpp's and the flow's caches
    uint64_t epoch = 0;      // counts the changes of what it holds (decodes, rewinds, resets)
    int   logits_row = -1;   // batch row of its last token in the last llama_decode; -1: none
    flas_flow_cache   cache; // self-attention K/V of its n_steps Euler steps, n_ctx_seq positions
    uint64_t values_encoding = 0;    // the concept encoding its folded values (concept state uo)
                                     // belong to; 0: none
    llama_sampler_ptr sampler;
    bool  trace = false;     // record its layer-L rows before/after steering
    std::vector<float> trace_in, trace_out;

    bool steered() const { return slot >= 0 && flowtime > 0.0f; }
};

// Encoded concepts by text, at most `bound` of them, least recently used evicted first. A
// concept pinned by a sequence is never evicted: with more sequences than the bound, more
// concepts may be held while they are in use, so the table has max(bound, n_seq) slots. An
// idle sequence does not pin its concept; when it is evicted, the sequence is emptied.
struct flas_concept_entry {
    std::string text;        // empty: free
    int      n_tokens = 0;   // K after truncation
    int      n_users  = 0;   // sequences pinning it
    uint64_t encoding = 0;   // which encoding it holds (the table's n_encoded after it)
    uint64_t last_use = 0;
};

struct flas_concept_table {
    std::vector<flas_concept_entry> slots;
    int      bound = 16;
    uint64_t clock = 0;
    int64_t  n_encoded = 0;  // concept encodings run so far (a cache miss each)
    int64_t  n_hits    = 0;

    int find(const std::string & text) const;
    int victim() const;      // the slot for a new concept; -1 if none
    int n_cached() const;
    void touch(int slot) { slots[slot].last_use = ++clock; }
};

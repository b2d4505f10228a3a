// The sequence table, in two halves with one owner each: what the llama.cpp host keeps per
// sequence id (flas_runtime: positions, logits, sampler) and what the steering keeps
// (flas_steering: concept, strength, flow caches, trace); and the bounded cache of encoded
// concepts that sequences share by text.
#pragma once

#include "flas-state.h"

#include "llama-cpp.h"

#include <cstdint>
#include <string>
#include <vector>

// One llama.cpp sequence on the host: its positions and its sampler.
struct flas_seq {
    int   n_past   = 0;      // positions 0 .. n_past-1 are in llama.cpp's and the flow's caches
    uint64_t epoch = 0;      // counts the changes of what it holds (decodes, rewinds, resets)
    int   logits_row = -1;   // batch row of its last token in the last llama_decode; -1: none
    llama_sampler_ptr sampler;
};

// One sequence's steering: its concept and strength, its flow caches, its trace.
struct flas_seq_steering {
    int   slot     = -1;     // concept cache slot; -1: no concept
    bool  pinned   = false;  // its concept may not be evicted (set_steering until release)
    float flowtime = 0.0f;
    int   n_steps  = 0;
    flas_flow_cache   cache; // self-attention K/V of its n_steps Euler steps, n_ctx_seq positions
    uint64_t values_encoding = 0;    // the concept encoding its folded values (concept state uo)
                                     // belong to; 0: none
    bool  trace = false;     // record its layer-L rows before/after steering
    std::vector<float> trace_in, trace_out;
    bool  telemetry = false; // measure the displacement of its last row in each decode
    float displacement = 0.0f;  // of the last decode that steered it; 0 when none did

    // With a concept its rows go through the flow, even at T = 0 (a schedule starting there): dt = 0
    // leaves them as they are and fills the flow's caches that its later, steered rows attend to.
    // set_steering gives a sequence a concept only for T > 0.
    bool steered() const { return slot >= 0; }
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

// A plain table with its few lookups defined here, so that each .cpp defines one type.
struct flas_concept_table {
    std::vector<flas_concept_entry> slots;
    int      bound = 16;
    uint64_t clock = 0;
    int64_t  n_encoded = 0;  // concept encodings run so far (a cache miss each)
    int64_t  n_hits    = 0;

    int find(const std::string & text) const {
        for (size_t i = 0; i < slots.size(); ++i) {
            if (!slots[i].text.empty() && slots[i].text == text) {
                return (int) i;
            }
        }
        return -1;
    }

    int n_cached() const {
        int n = 0;
        for (const flas_concept_entry & e : slots) {
            n += e.text.empty() ? 0 : 1;
        }
        return n;
    }

    // The slot for a new concept; -1 if none. Below the bound: a free slot. At the bound: the
    // least recently used concept nobody steers with, else (all in use) a free slot beyond the bound.
    int victim() const {
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

    void touch(int slot) { slots[slot].last_use = ++clock; }
};

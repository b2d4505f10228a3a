#include "flas-sampling.h"

#include "llama.h"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

// A float as a person writes it: 2.5, not 2.500000.
static std::string number(float v) {
    std::ostringstream s;
    s << v;
    return s.str();
}

struct flas_sampling_params flas_sampling_default_params(void) {
    struct flas_sampling_params s;
    s.temperature    = 0.0f;
    s.top_k          = 0;
    s.top_p          = 1.0f;
    s.typical_p      = 1.0f;
    s.min_p          = 0.0f;
    s.repeat_penalty = 1.0f;
    s.repeat_last_n  = 64;
    s.seed           = 0;
    return s;
}

void flas_sampling_check(const flas_sampling_params & s) {
    if (!std::isfinite(s.temperature) || s.temperature < 0.0f) {
        throw std::invalid_argument("temperature must be a finite number >= 0 (0: greedy), got " + number(s.temperature));
    }
    if (s.top_k < 0) {
        throw std::invalid_argument("top_k must be >= 0 (0: off), got " + std::to_string(s.top_k));
    }
    if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) {
        throw std::invalid_argument("top_p must be in (0, 1] (1: off), got " + number(s.top_p));
    }
    if (!(s.typical_p > 0.0f && s.typical_p <= 1.0f)) {
        throw std::invalid_argument("typical_p must be in (0, 1] (1: off), got " + number(s.typical_p));
    }
    if (!(s.min_p >= 0.0f && s.min_p <= 1.0f)) {
        throw std::invalid_argument("min_p must be in [0, 1] (0: off), got " + number(s.min_p));
    }
    if (!std::isfinite(s.repeat_penalty) || s.repeat_penalty <= 0.0f) {
        throw std::invalid_argument("repeat_penalty must be a finite number > 0 (1: off), got " + number(s.repeat_penalty));
    }
    if (s.repeat_last_n < -1) {
        throw std::invalid_argument("repeat_last_n must be >= -1 (-1: the whole context), got " +
                                    std::to_string(s.repeat_last_n));
    }
}

// llama-cpp-python's order: penalties, then greedy, or top-k, typical, top-p, min-p, temperature
// and a seeded draw; a sampler at its "off" value is left out of the chain.
llama_sampler * flas_sampler_chain_init(const flas_sampling_params & sp, int n_vocab, int n_ctx_seq) {
    llama_sampler_chain_params cp = llama_sampler_chain_default_params();
    cp.no_perf = true;
    llama_sampler * chain = llama_sampler_chain_init(cp);
    if (sp.repeat_penalty != 1.0f && sp.repeat_last_n != 0) {
        const int last_n = sp.repeat_last_n < 0 ? n_ctx_seq : sp.repeat_last_n;
        llama_sampler_chain_add(chain, llama_sampler_init_penalties(n_vocab, last_n, sp.repeat_penalty, 0.0f, 0.0f));
    }
    if (sp.temperature <= 0.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_greedy());
        return chain;
    }
    if (sp.top_k > 0) {
        llama_sampler_chain_add(chain, llama_sampler_init_top_k(sp.top_k));
    }
    if (sp.typical_p < 1.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_typical(sp.typical_p, 1));
    }
    if (sp.top_p < 1.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_top_p(sp.top_p, 1));
    }
    if (sp.min_p > 0.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_min_p(sp.min_p, 1));
    }
    llama_sampler_chain_add(chain, llama_sampler_init_temp(sp.temperature));
    llama_sampler_chain_add(chain, llama_sampler_init_dist(sp.seed));
    return chain;
}

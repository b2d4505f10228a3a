#include "flas-rules.h"

#include "flas-runtime.h"
#include "flas-sampling.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

// A float as a person writes it: 2.5, not 2.500000.
static std::string number(float v) {
    std::ostringstream s;
    s << v;
    return s.str();
}

static void require_file(const std::string & path, const char * what) {
    if (!std::ifstream(path).good()) {
        throw std::invalid_argument(std::string(what) + " not found or unreadable: " + path);
    }
}

void flas_check_params(const flas_runtime_params & params) {
    const int max_seq = (int) llama_max_parallel_sequences();
    if (params.n_seq < 1 || params.n_seq > max_seq) {
        throw std::invalid_argument("n_seq must be in 1.." + std::to_string(max_seq) + ", got " +
                                    std::to_string(params.n_seq));
    }
    if (params.n_ctx / params.n_seq < 16) {
        throw std::invalid_argument("n_ctx " + std::to_string(params.n_ctx) + " leaves " +
                                    std::to_string(params.n_ctx / params.n_seq) + " tokens to each of " +
                                    std::to_string(params.n_seq) + " sequences; each needs at least 16: raise n_ctx to >= " +
                                    std::to_string(16 * params.n_seq));
    }
    if (params.n_batch < 1) {
        throw std::invalid_argument("n_batch must be >= 1, got " + std::to_string(params.n_batch));
    }
    if (params.concept_cache < 1) {
        throw std::invalid_argument("concept_cache must be >= 1, got " + std::to_string(params.concept_cache));
    }
    if (params.n_threads < 0) {
        throw std::invalid_argument("n_threads must be >= 0 (0: one per physical core), got " + std::to_string(params.n_threads));
    }
    if (params.model == nullptr) {
        require_file(params.base_path, "base model GGUF");
    }
    require_file(params.flow_path, "flow GGUF");
}

void flas_steering_check(bool has_concept, float flowtime, int n_steps) {
    if (!std::isfinite(flowtime) || flowtime < 0.0f) {
        throw std::invalid_argument("flowtime must be a finite number >= 0 (0: no steering, 2: the paper's strength), "
                                    "got " + number(flowtime));
    }
    if (n_steps < 1 || n_steps > FLAS_MAX_STEPS) {
        throw std::invalid_argument("n_steps must be in 1.." + std::to_string(FLAS_MAX_STEPS) +
                                    " (the flow's default is usually 3), got " + std::to_string(n_steps));
    }
    if (flowtime > 0.0f && !has_concept) {
        throw std::invalid_argument("steering (flowtime > 0) needs a concept, e.g. \"Talk like a pirate\"; use "
                                    "flowtime 0 for the unsteered model");
    }
}

void flas_steer_check(const flas_steer & steer) {
    for (const flas_breakpoint & p : steer.flowtime.points) {
        flas_steering_check(!steer.concept.empty(), p.flowtime, steer.n_steps);
    }
}

void flas_request_check(const flas_steer & steer, int max_tokens, int logprobs, const flas_sampling_params & s) {
    flas_steer_check(steer);
    if (logprobs < -1 || logprobs > FLAS_MAX_TOP_LOGPROBS) {
        throw std::invalid_argument("logprobs must be in -1.." + std::to_string(FLAS_MAX_TOP_LOGPROBS) +
                                    " (-1: none; k: each token's log-probability and its k most likely alternatives), got " +
                                    std::to_string(logprobs));
    }
    if (max_tokens < 1) {
        throw std::invalid_argument("max_tokens must be >= 1, got " + std::to_string(max_tokens));
    }
    flas_sampling_check(s);
}

// The rules a model's settings and a request's steering must meet, each said once with its
// message (the sampling's are beside its struct, in flas-sampling.h): the engine, the C API's
// checks (flas_check_steering, flas_check_request), flas_seq_set_steering and, through them,
// Python and the server apply these and no others.
#pragma once

#include "flas.h"  // struct flas_sampling_params
#include "flas-schedule.h"
#include "flas-steer.h"

struct flas_runtime_params;

// std::invalid_argument naming the first bad parameter (sizes, missing files).
void flas_check_params(const flas_runtime_params & params);
// flowtime finite and >= 0, n_steps in 1..FLAS_MAX_STEPS, a concept when flowtime > 0.
void flas_steering_check(bool has_concept, float flowtime, int n_steps);
// A request's steering: each flowtime of its schedule as one flowtime.
void flas_steer_check(const flas_steer & steer);
// A request's settings apart from its prompt (which needs a model): its steering, max_tokens >= 1,
// logprobs in -1..FLAS_MAX_TOP_LOGPROBS and its sampling.
void flas_request_check(const flas_steer & steer, int max_tokens, int logprobs, const flas_sampling_params & s);

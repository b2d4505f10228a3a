// struct flas_sampling_params (flas.h) in one place: its defaults, its range rules and the
// llama.cpp sampler chain it configures. A new sampling field is its line in flas.h, its default,
// rule and sampler here, and its line in the bindings' records, nothing else.
#pragma once

#include "flas.h"  // struct flas_sampling_params

struct llama_sampler;

// std::invalid_argument naming the first field out of its range (flas.h states each range).
void flas_sampling_check(const flas_sampling_params & sampling);
// A new llama.cpp sampler chain for these settings (the caller owns it: llama_sampler_free), for
// a sequence of n_ctx_seq tokens over a vocabulary of n_vocab.
llama_sampler * flas_sampler_chain_init(const flas_sampling_params & sampling, int n_vocab, int n_ctx_seq);

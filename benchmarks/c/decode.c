/* Decode speed through the C API: one steered greedy request, tokens per second from the first
 * token to the last (as FlasModel's Generation.tokens_per_second).
 * Usage: decode BASE.gguf FLOW.gguf CONCEPT PROMPT N_TOKENS N_STEPS THREADS */
#define _POSIX_C_SOURCE 199309L
#include "flas.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

int main(int argc, char ** argv) {
    if (argc < 8) {
        return 2;
    }
    struct flas_model_params mp = flas_model_default_params();
    mp.base_path = argv[1];
    mp.flow_path = argv[2];
    mp.n_ctx = 2048;
    mp.n_threads = atoi(argv[7]);
    flas_model * model = NULL;
    if (flas_model_load(&mp, &model) != FLAS_OK) {
        fprintf(stderr, "%s\n", flas_last_error());
        return 1;
    }
    int32_t prompt[1024];
    struct flas_request_params rp = flas_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = flas_prompt_tokens(model, argv[4], prompt, 1024);
    rp.concept = argv[3];
    rp.max_tokens = atoi(argv[5]);
    rp.n_steps = atoi(argv[6]);
    rp.temperature = 0.0f;
    uint64_t id = 0;
    if (rp.n_prompt <= 0 || flas_submit(model, &rp, &id) != FLAS_OK) {
        fprintf(stderr, "%s\n", flas_last_error());
        return 1;
    }
    struct flas_result res = {FLAS_FINISH_NONE, FLAS_OK, 0, 0, 0.0, 0.0};
    int n_tokens = 0;
    double first = 0.0, last = 0.0;
    while (res.finish == FLAS_FINISH_NONE) {
        int32_t tokens[8];
        const int32_t n = flas_poll(model, id, 1000, tokens, 8, &res);
        if (n < 0) {
            return 1;
        }
        if (n > 0) {
            last = now();
            if (n_tokens == 0) {
                first = last;
            }
            n_tokens += n;
        }
    }
    printf("tokens %d tps %.4f\n", n_tokens, n_tokens > 1 ? (n_tokens - 1) / (last - first) : 0.0);
    flas_model_free(model);
    return 0;
}

/* Steered generation from C: load a base model and a flow, steer toward a concept, stream.
 *
 *   cc simple.c -I$(python -c 'import flas_cpp; print(flas_cpp.get_include())') \
 *      $(python -c 'import flas_cpp; print(flas_cpp.get_library())') -o simple
 *   ./simple base.gguf flow.gguf "Talk like a pirate" "Tell me about your day." [max_tokens] [--ids]
 */
#include "flas.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char * what) {
    fprintf(stderr, "%s: %s\n", what, flas_last_error());
    return 1;
}

int main(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s BASE.gguf FLOW.gguf CONCEPT PROMPT [MAX_TOKENS] [--ids]\n", argv[0]);
        return 2;
    }
    const int max_tokens = argc > 5 ? atoi(argv[5]) : 64;
    const int print_ids  = argc > 6 && strcmp(argv[6], "--ids") == 0;

    struct flas_model_params mp = flas_model_default_params();
    mp.base_path = argv[1];
    mp.flow_path = argv[2];
    mp.n_ctx     = 1024;
    flas_model * model = NULL;
    if (flas_model_load(&mp, &model) != FLAS_OK) {
        return fail("load");
    }

    int32_t prompt[512];
    const int32_t n_prompt = flas_prompt_tokens(model, argv[4], prompt, 512);
    if (n_prompt < 0 || n_prompt > 512) {
        flas_model_free(model);
        return fail("prompt");
    }

    struct flas_request_params rp = flas_request_default_params();
    rp.prompt      = prompt;
    rp.n_prompt    = n_prompt;
    rp.concept     = argv[3];
    rp.flowtime    = 2.0f;
    rp.max_tokens  = max_tokens;
    rp.sampling.temperature = 0.0f;  /* greedy */
    uint64_t id = 0;
    if (flas_submit(model, &rp, &id) != FLAS_OK) {
        flas_model_free(model);
        return fail("submit");
    }

    struct flas_result res = {FLAS_FINISH_NONE, FLAS_OK, 0, 0, 0.0, 0.0};
    while (res.finish == FLAS_FINISH_NONE) {
        int32_t tokens[64];
        const int32_t n = flas_poll(model, id, 1000, tokens, 64, &res);
        if (n < 0) {
            flas_model_free(model);
            return fail("poll");
        }
        for (int32_t i = 0; i < n; ++i) {
            char piece[256];
            const int32_t len = flas_token_to_piece(model, tokens[i], piece, sizeof(piece));
            if (print_ids) {
                printf("%d\n", tokens[i]);
            } else if (len > 0 && len <= (int32_t) sizeof(piece)) {
                fwrite(piece, 1, (size_t) len, stdout);
            }
        }
        fflush(stdout);
    }
    if (!print_ids) {
        printf("\n");
    }
    flas_model_free(model);
    return res.finish == FLAS_FINISH_ERROR ? fail("generation") : 0;
}

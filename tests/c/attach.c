/* An application that owns its llama_model and its own eval callback, and adds steering with
 * flas_model_attach. Prints the steered greedy tokens, then how often its callback saw
 * "result_norm" computed. Usage: attach BASE.gguf FLOW.gguf CONCEPT PROMPT N_TOKENS */
#include "flas.h"
#include "ggml.h"
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int seen_result_norm = 0;

static bool app_callback(struct ggml_tensor * t, bool ask, void * user_data) {
    (void) user_data;
    const int mine = strcmp(t->name, "result_norm") == 0;
    if (ask) {
        return mine;
    }
    seen_result_norm += mine;
    return true;
}

int main(int argc, char ** argv) {
    if (argc < 6) {
        return 2;
    }
    llama_backend_init();
    struct llama_model * app_model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (app_model == NULL) {
        return 1;
    }
    struct flas_model_params mp = flas_model_default_params();
    mp.flow_path = argv[2];
    mp.n_ctx = 1024;
    mp.cb_eval = app_callback;
    flas_model * model = NULL;
    if (flas_model_attach(app_model, &mp, &model) != FLAS_OK) {
        fprintf(stderr, "attach: %s\n", flas_last_error());
        return 1;
    }
    int32_t prompt[256];
    const int32_t n_prompt = flas_prompt_tokens(model, argv[4], prompt, 256);
    struct flas_request_params rp = flas_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = n_prompt;
    rp.concept = argv[3];
    rp.flowtime = 2.0f;
    rp.max_tokens = atoi(argv[5]);
    rp.sampling.temperature = 0.0f;
    uint64_t id = 0;
    if (n_prompt <= 0 || flas_submit(model, &rp, &id) != FLAS_OK) {
        fprintf(stderr, "submit: %s\n", flas_last_error());
        return 1;
    }
    struct flas_result res = {FLAS_FINISH_NONE, FLAS_OK, 0, 0, 0.0, 0.0};
    while (res.finish == FLAS_FINISH_NONE) {
        int32_t tokens[16];
        const int32_t n = flas_poll(model, id, 1000, tokens, 16, &res);
        for (int32_t i = 0; i < n; ++i) {
            printf("%d\n", tokens[i]);
        }
        if (n < 0) {
            return 1;
        }
    }
    flas_model_free(model);
    llama_model_free(app_model);  /* still the application's */
    printf("result_norm %d\n", seen_result_norm);
    return 0;
}

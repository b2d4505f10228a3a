/* The C API's error paths and defaults, without model files (run by CTest). */
#include "flas.h"

#include <stdio.h>
#include <string.h>

static int failures = 0;
static int logged = 0;

static void count_log(int level, const char * text, void * user_data) {
    (void) level;
    (void) text;
    *(int *) user_data += 1;
}

#define CHECK(cond, what)                                              \
    do {                                                               \
        if (!(cond)) {                                                 \
            fprintf(stderr, "FAIL %s (last error: %s)\n", what, flas_last_error()); \
            ++failures;                                                \
        }                                                              \
    } while (0)

int main(void) {
    struct flas_model_params mp = flas_model_default_params();
    CHECK(mp.n_ctx > 0 && mp.n_batch > 0 && mp.n_seq == 1 && mp.base_path == NULL && mp.cb_eval == NULL, "defaults");
    struct flas_request_params rp = flas_request_default_params();
    CHECK(rp.flowtime == 2.0f && rp.n_steps == 0 && rp.max_tokens > 0 && rp.sampling.top_p == 1.0f, "request defaults");
    CHECK(strstr(flas_system_info(), "CPU") != NULL, "system info names the CPU");

    flas_log_set(count_log, &logged);
    flas_model * model = (flas_model *) &mp;  /* must be reset to NULL on failure */
    CHECK(flas_model_load(NULL, &model) == FLAS_ERR_INVALID_ARGUMENT && model == NULL, "NULL params");
    CHECK(strstr(flas_last_error(), "must not be NULL") != NULL, "NULL params message");
    CHECK(flas_model_load(&mp, &model) == FLAS_ERR_INVALID_ARGUMENT, "no paths");
    CHECK(strstr(flas_last_error(), "required") != NULL, "no paths message");
    mp.base_path = "/nonexistent/base.gguf";
    mp.flow_path = "/nonexistent/flow.gguf";
    CHECK(flas_model_load(&mp, &model) == FLAS_ERR_INVALID_ARGUMENT && model == NULL, "missing files");
    CHECK(strstr(flas_last_error(), "not found") != NULL, "missing files message");
    CHECK(flas_model_attach(NULL, &mp, &model) == FLAS_ERR_INVALID_ARGUMENT, "attach NULL model");

    /* a file llama.cpp cannot read: an error code, and llama.cpp's complaint through our callback */
    FILE * bad = fopen("smoke-not-a-gguf.gguf", "wb");
    CHECK(bad != NULL, "temporary file");
    if (bad != NULL) {
        fputs("not a gguf file", bad);
        fclose(bad);
        mp.base_path = mp.flow_path = "smoke-not-a-gguf.gguf";
        CHECK(flas_model_load(&mp, &model) == FLAS_ERR_INVALID_ARGUMENT && model == NULL, "unreadable base");
        CHECK(strstr(flas_last_error(), "could not load the base model") != NULL, "unreadable base message");
        CHECK(logged > 0, "llama.cpp's error went to the log callback");
        remove("smoke-not-a-gguf.gguf");
    }

    struct flas_result res;
    int32_t tokens[4];
    uint64_t id = 0;
    CHECK(flas_poll(NULL, 1, 0, tokens, 4, &res) == FLAS_ERR_INVALID_ARGUMENT && res.finish == FLAS_FINISH_NONE, "poll NULL");
    CHECK(flas_submit(NULL, &rp, &id) == FLAS_ERR_INVALID_ARGUMENT, "submit NULL");
    CHECK(flas_prompt_tokens(NULL, "x", tokens, 4) == FLAS_ERR_INVALID_ARGUMENT, "prompt NULL");
    CHECK(flas_cancel(NULL, 1) == FLAS_ERR_INVALID_ARGUMENT, "cancel NULL");
    CHECK(flas_model_memory(NULL, NULL, 0) == FLAS_ERR_INVALID_ARGUMENT, "memory NULL");
    CHECK(flas_model_n_vocab(NULL) == 0 && strcmp(flas_model_family(NULL), "") == 0, "facts of NULL");
    CHECK(flas_model_flow_info(NULL) == NULL && flas_model_n_embd(NULL) == 0, "flow info of NULL");
    CHECK(flas_default_threads() >= 1, "a thread default");
    const struct flas_build_info * bi = flas_build_info();
    CHECK(bi != NULL && strstr(bi->backends, "CPU") != NULL && bi->n_devices >= 1, "build info");
    CHECK(flas_estimate_memory(NULL, 1, NULL, 0) == FLAS_ERR_INVALID_ARGUMENT, "estimate NULL params");
    CHECK(flas_submit_many(NULL, &rp, 1, &id) == FLAS_ERR_INVALID_ARGUMENT, "submit_many NULL");
    CHECK(flas_trace(NULL, 1, FLAS_TRACE_STEERED, NULL, 0) == FLAS_ERR_INVALID_ARGUMENT, "trace NULL");
    CHECK(flas_exclusive(NULL, NULL, NULL) == FLAS_ERR_INVALID_ARGUMENT, "exclusive NULL");
    CHECK(flas_seq_reset(NULL, 0) == FLAS_ERR_INVALID_ARGUMENT, "seq NULL");
    CHECK(flas_set_steer_hook(NULL, NULL, NULL) == FLAS_ERR_INVALID_ARGUMENT, "hook NULL");
    CHECK(flas_quantize("/nonexistent/in.gguf", "/tmp/out.gguf", 15, 1) == FLAS_ERR_INVALID_ARGUMENT, "quantize missing");
    CHECK(!flas_endpoint_reachable("not an endpoint", 10), "endpoint probe");
    flas_model_free(NULL);
    flas_log_set(NULL, NULL);
    printf("%s\n", failures == 0 ? "ok" : "FAILED");
    return failures == 0 ? 0 : 1;
}

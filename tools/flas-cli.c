/* flas-cli: steered generation from the command line, through the C API only (no Python).
 *
 *   flas-cli -m base.gguf -f flow.gguf -c "Talk like a pirate" -p "Tell me about your day."
 *            [-t 2.0 | -t 0:0.5,32:2] [-n 3] [--compare] [-ngl N] [--rpc host:port[,host:port]]
 *            [--temp 0.7] [--seed 0] [--n-predict 128] [--n-ctx 4096] [--threads N]
 */
#include "flas.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BREAKPOINTS 64

struct options {
    const char * base, * flow, * concept, * prompt, * rpc;
    float flowtime, temperature;
    struct flas_breakpoint schedule[MAX_BREAKPOINTS];  /* -t TOKEN:T,...; n_schedule 0: flowtime */
    int n_schedule;
    int n_steps, n_gpu_layers, n_predict, n_ctx, threads, compare;
    unsigned seed;
};

static void usage(FILE * out) {
    fprintf(out,
            "usage: flas-cli -m BASE.gguf -f FLOW.gguf -p PROMPT [-c CONCEPT] [-t T] [-n N] [--compare]\n"
            "                [-ngl N] [--rpc HOST:PORT[,HOST:PORT]] [--temp X] [--seed S] [--n-predict K]\n"
            "                [--n-ctx C] [--threads N]\n"
            "  -m, --model        base model GGUF\n"
            "  -f, --flow         flow GGUF\n"
            "  -p, --prompt       the user's prompt (the chat template or alpaca is applied as trained)\n"
            "  -c, --concept      concept to steer toward, e.g. \"Talk like a pirate\" (none: unsteered)\n"
            "  -t, --flowtime     steering strength T (default 2.0), or a schedule over the generated tokens,\n"
            "                     TOKEN:T,TOKEN:T,... (linear between, the last held): 0:0.5,32:2 ramps 0.5 to 2\n"
            "  -n, --n-steps      Euler steps N (default: the flow's)\n"
            "      --compare      print the unsteered reply, then the steered one\n"
            "  -ngl, --n-gpu-layers  layers on the offload devices (-1: all; default 0)\n"
            "      --rpc          ggml RPC servers to offload to\n"
            "      --temp         sampling temperature (default 0: greedy)\n"
            "      --seed         sampling seed (default 0)\n"
            "      --n-predict    longest reply in tokens (default 128)\n"
            "      --n-ctx        context size (default 4096)\n"
            "      --threads      CPU threads (default: all)\n");
}

/* T, or TOKEN:T,TOKEN:T,... into o->schedule; the core checks the values (flas_check_request). */
static int parse_flowtime(const char * v, struct options * o) {
    o->n_schedule = 0;
    if (strchr(v, ':') == NULL) {
        char * end = NULL;
        o->flowtime = strtof(v, &end);
        if (end == v || *end != '\0') {
            fprintf(stderr, "flas-cli: -t %s: expected a number T or a schedule TOKEN:T,TOKEN:T,...\n", v);
            return 0;
        }
        return 1;
    }
    for (const char * p = v; *p != '\0';) {
        char * end = NULL;
        const long token = strtol(p, &end, 10);
        if (end == p || *end != ':' || o->n_schedule == MAX_BREAKPOINTS || token < 0 || token > INT32_MAX) {
            fprintf(stderr, "flas-cli: -t %s: expected TOKEN:T,TOKEN:T,... (at most %d, tokens >= 0), e.g. 0:0.5,32:2\n",
                    v, MAX_BREAKPOINTS);
            return 0;
        }
        p = end + 1;
        const float t = strtof(p, &end);
        if (end == p || (*end != ',' && *end != '\0')) {
            fprintf(stderr, "flas-cli: -t %s: expected TOKEN:T,TOKEN:T,..., e.g. 0:0.5,32:2\n", v);
            return 0;
        }
        o->schedule[o->n_schedule].token = (int32_t) token;
        o->schedule[o->n_schedule].flowtime = t;
        o->n_schedule++;
        p = *end == ',' ? end + 1 : end;
    }
    return 1;
}

static int parse(int argc, char ** argv, struct options * o) {
    memset(o, 0, sizeof(*o));
    o->flowtime = 2.0f;
    o->n_predict = 128;
    o->n_ctx = 4096;
    for (int i = 1; i < argc; ++i) {
        const char * a = argv[i];
        const char * v = i + 1 < argc ? argv[i + 1] : NULL;
#define IS(s, l) (strcmp(a, s) == 0 || strcmp(a, l) == 0)
        if (IS("-h", "--help")) { usage(stdout); exit(0); }
        if (IS("--compare", "--compare")) { o->compare = 1; continue; }
        if (v == NULL) { fprintf(stderr, "flas-cli: %s needs a value\n", a); return 0; }
        ++i;
        if (IS("-m", "--model")) o->base = v;
        else if (IS("-f", "--flow")) o->flow = v;
        else if (IS("-c", "--concept")) o->concept = v;
        else if (IS("-p", "--prompt")) o->prompt = v;
        else if (IS("-t", "--flowtime")) { if (!parse_flowtime(v, o)) return 0; }
        else if (IS("-n", "--n-steps")) o->n_steps = atoi(v);
        else if (IS("-ngl", "--n-gpu-layers")) o->n_gpu_layers = atoi(v);
        else if (IS("--rpc", "--rpc")) o->rpc = v;
        else if (IS("--temp", "--temp")) o->temperature = strtof(v, NULL);
        else if (IS("--seed", "--seed")) o->seed = (unsigned) strtoul(v, NULL, 10);
        else if (IS("--n-predict", "--n-predict")) o->n_predict = atoi(v);
        else if (IS("--n-ctx", "--n-ctx")) o->n_ctx = atoi(v);
        else if (IS("--threads", "--threads")) o->threads = atoi(v);
        else { fprintf(stderr, "flas-cli: unknown option %s (see --help)\n", a); return 0; }
#undef IS
    }
    if (o->base == NULL || o->flow == NULL || o->prompt == NULL) {
        fprintf(stderr, "flas-cli: -m BASE.gguf, -f FLOW.gguf and -p PROMPT are required (see --help)\n");
        return 0;
    }
    if (!isfinite(o->flowtime) || o->flowtime < 0 || o->n_predict < 1 || o->n_steps < 0) {
        fprintf(stderr, "flas-cli: -t must be a number >= 0, --n-predict >= 1, -n >= 1\n");
        return 0;
    }
    return 1;
}

/* Streams one reply to stdout; returns 0 or 1 (error reported). */
static int reply(flas_model * model, const int32_t * prompt, int32_t n_prompt, const char * concept, float flowtime,
                 const struct options * o) {
    struct flas_request_params rp = flas_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = n_prompt;
    rp.concept = concept;
    rp.flowtime = concept != NULL ? flowtime : 0.0f;
    if (concept != NULL && o->n_schedule > 0) {
        rp.schedule = o->schedule;
        rp.n_schedule = o->n_schedule;
    }
    rp.n_steps = o->n_steps;
    rp.max_tokens = o->n_predict;
    rp.sampling.temperature = o->temperature;
    rp.sampling.top_k = o->temperature > 0 ? 64 : 0;
    rp.sampling.top_p = o->temperature > 0 ? 0.95f : 1.0f;
    rp.sampling.seed = o->seed;
    uint64_t id = 0;
    if (flas_submit(model, &rp, &id) != FLAS_OK) {
        fprintf(stderr, "flas-cli: %s\n", flas_last_error());
        return 1;
    }
    struct flas_result res = {FLAS_FINISH_NONE, FLAS_OK, 0, 0, 0.0, 0.0};
    while (res.finish == FLAS_FINISH_NONE) {
        int32_t tokens[32];
        const int32_t n = flas_poll(model, id, 1000, tokens, 32, &res);
        if (n < 0) {
            fprintf(stderr, "flas-cli: %s\n", flas_last_error());
            return 1;
        }
        for (int32_t i = 0; i < n; ++i) {
            char piece[256];
            const int32_t len = flas_token_to_piece(model, tokens[i], piece, sizeof(piece));
            if (len > 0 && len <= (int32_t) sizeof(piece)) {
                fwrite(piece, 1, (size_t) len, stdout);
            }
        }
        fflush(stdout);
    }
    printf("\n");
    if (res.finish == FLAS_FINISH_ERROR) {
        fprintf(stderr, "flas-cli: %s\n", flas_last_error());
        return 1;
    }
    return 0;
}

int main(int argc, char ** argv) {
    struct options o;
    if (!parse(argc, argv, &o)) {
        return 2;
    }
    struct flas_model_params mp = flas_model_default_params();
    mp.base_path = o.base;
    mp.flow_path = o.flow;
    mp.n_ctx = o.n_ctx;
    mp.n_gpu_layers = o.n_gpu_layers;
    mp.rpc_servers = o.rpc;
    mp.n_threads = o.threads;
    flas_model * model = NULL;
    if (flas_model_load(&mp, &model) != FLAS_OK) {
        fprintf(stderr, "flas-cli: %s\n", flas_last_error());
        return 1;
    }
    int32_t n_prompt = flas_prompt_tokens(model, o.prompt, NULL, 0);
    int32_t * prompt = n_prompt > 0 ? malloc(sizeof(int32_t) * (size_t) n_prompt) : NULL;
    if (n_prompt <= 0 || prompt == NULL || flas_prompt_tokens(model, o.prompt, prompt, n_prompt) != n_prompt) {
        fprintf(stderr, "flas-cli: %s\n", n_prompt < 0 ? flas_last_error() : "cannot tokenize the prompt");
        free(prompt);
        flas_model_free(model);
        return 1;
    }
    int rc = 0;
    if (o.compare) {
        printf("--- baseline (no steering)\n");
        rc = reply(model, prompt, n_prompt, NULL, 0.0f, &o);
        if (rc == 0) {
            printf("--- steered: \"%s\", T = ", o.concept != NULL ? o.concept : "");
            for (int i = 0; i < o.n_schedule; ++i) {
                printf("%s%d:%g", i > 0 ? "," : "", o.schedule[i].token, o.schedule[i].flowtime);
            }
            if (o.n_schedule == 0) {
                printf("%g", o.flowtime);
            }
            printf("\n");
        }
    }
    if (rc == 0) {
        rc = reply(model, prompt, n_prompt, o.concept, o.flowtime, &o);
    }
    free(prompt);
    flas_model_free(model);
    return rc;
}

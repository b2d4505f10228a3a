/*
 * flas.h: FLAS (Flow-based Activation Steering) on llama.cpp, from C.
 *
 * A flas_model holds a base model (a llama.cpp GGUF), a flow (a flas GGUF) and a scheduler
 * that decodes n_seq sequences together, each with its own concept, strength and sampling.
 * Requests are submitted and then polled for tokens, from any thread.
 *
 * Conventions (those of llama.h):
 *   - opaque handles, created by *_load / *_submit and released by *_free / flas_release;
 *   - *_default_params() give every field a sensible value; set what you need;
 *   - functions returning int return FLAS_OK (0) or a negative enum flas_status; the message
 *     of the last error on the calling thread is flas_last_error();
 *   - strings passed in are copied; strings returned are owned by the library and stay valid
 *     as documented at each function;
 *   - no C++ type or exception crosses this header.
 */
#ifndef FLAS_H
#define FLAS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#    define FLAS_API __declspec(dllexport)
#else
#    define FLAS_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Limits every interface shares (the Python package reads them through its extension). */
#define FLAS_MAX_STEPS 64  /* Euler steps N of one request */

enum flas_status {
    FLAS_OK                    =  0,
    FLAS_ERR_INVALID_ARGUMENT  = -1,  /* a bad parameter, path or file; nothing changed */
    FLAS_ERR_RUNTIME           = -2,  /* llama.cpp or the flow failed (the model stays usable) */
    FLAS_ERR_DEVICE_LOST       = -3,  /* an RPC server stopped answering: free the model */
    FLAS_ERR_NOT_FOUND         = -4,  /* an unknown or finished request id */
};

enum flas_finish {
    FLAS_FINISH_NONE       = 0,  /* still running */
    FLAS_FINISH_EOG        = 1,  /* the model ended its reply */
    FLAS_FINISH_MAX_TOKENS = 2,
    FLAS_FINISH_CONTEXT    = 3,  /* the sequence is full */
    FLAS_FINISH_CANCELLED  = 4,
    FLAS_FINISH_ERROR      = 5,  /* see flas_last_error() on the polling thread */
};

typedef struct flas_model flas_model;

struct llama_model;   /* llama.h */
struct ggml_tensor;   /* ggml.h */
/* ggml_backend_sched_eval_callback (ggml-backend.h): asked (ask = true) whether t is wanted,
 * then called with ask = false once it is computed; false stops the computation. */
typedef bool (*flas_eval_callback)(struct ggml_tensor * t, bool ask, void * user_data);

struct flas_model_params {
    const char * base_path;     /* base model GGUF (required) */
    const char * flow_path;     /* flow GGUF (required) */
    int32_t n_ctx;              /* llama.cpp's whole context, shared by the sequences (4096) */
    int32_t n_batch;            /* tokens per llama_decode (512) */
    int32_t n_seq;              /* sequences decoded together (1) */
    int32_t concept_cache;      /* encoded concepts kept (16) */
    int32_t n_gpu_layers;       /* layers on the offload devices; -1: all (0) */
    int32_t main_gpu;           /* llama.cpp's main_gpu (0) */
    int32_t n_threads;          /* 0: one per hardware thread */
    const char * rpc_servers;   /* "host:port[,host:port]" of ggml RPC servers, or NULL */
    bool exact;                 /* f32 KV caches, no flash attention (false) */
    bool verbose;               /* llama.cpp's informational log on stderr (false) */
    /* the application's own eval callback on the steered context, chained: it is asked about
     * every node and called for those it wants, as llama.cpp would (NULL: none) */
    flas_eval_callback cb_eval;
    void * cb_eval_user_data;
};

struct flas_request_params {
    const int32_t * prompt;     /* tokens, e.g. from flas_prompt_tokens; copied */
    int32_t n_prompt;
    const char * concept;       /* NULL or "": unsteered; copied */
    float   flowtime;           /* T; 0: unsteered (2.0) */
    int32_t n_steps;            /* N; 0: the flow's default (0) */
    int32_t max_tokens;         /* (128) */
    float   temperature;        /* 0: greedy (0.0) */
    int32_t top_k;              /* 0: off (0) */
    float   top_p;              /* 1: off (1.0) */
    uint32_t seed;              /* (0) */
};

struct flas_memory_row {
    char   device[64];          /* ggml device name: "CPU", "CUDA0", "RPC0", ... */
    char   type[16];            /* "cpu", "gpu", ... */
    char   description[128];
    size_t base_weights, kv_cache, base_compute, flow_weights, flow_caches, flow_compute, total;
};

/* ---- errors and information ---- */

/* The message of the last failed call on this thread ("" if none); valid until the next call. */
FLAS_API const char * flas_last_error(void);
/* ggml version, backends and devices, one line; valid for the life of the process. */
FLAS_API const char * flas_system_info(void);

/* Where the log of models loaded with flas_model_load goes (llama.cpp's messages, filtered to
 * errors unless params.verbose): level is a ggml_log_level; NULL restores stderr. Attached
 * models leave llama.cpp's log as the application set it. */
typedef void (*flas_log_callback)(int level, const char * text, void * user_data);
FLAS_API void flas_log_set(flas_log_callback callback, void * user_data);

/* ---- models ---- */

FLAS_API struct flas_model_params flas_model_default_params(void);
/* Loads the base model and the flow and starts the scheduler. On success *out is a model the
 * caller owns and frees with flas_model_free; on failure *out is NULL. */
FLAS_API int flas_model_load(const struct flas_model_params * params, flas_model ** out);
/* Steers a llama_model the application loaded itself (as mtmd attaches to one): the flow, its
 * contexts and the scheduler are added; the model's weights and placement are the application's.
 * params->base_path is ignored; the model is borrowed and must outlive *out. llama.cpp's log
 * callback is left as the application set it. */
FLAS_API int flas_model_attach(struct llama_model * model, const struct flas_model_params * params, flas_model ** out);
/* Frees everything the model holds (NULL is ignored). Requests still running end. An attached
 * llama_model is not freed. */
FLAS_API void flas_model_free(flas_model * model);

/* The base family ("gemma2", "gemma3", "qwen3", "llama"); valid while the model lives. */
FLAS_API const char * flas_model_family(const flas_model * model);
FLAS_API int32_t flas_model_n_vocab(const flas_model * model);
FLAS_API int32_t flas_model_n_ctx_seq(const flas_model * model);  /* tokens one sequence holds */
/* Bytes per device, as FlasModel.memory(): writes up to n_max rows, returns how many there are
 * (more than n_max: call again with room for them), or a negative flas_status. */
FLAS_API int32_t flas_model_memory(const flas_model * model, struct flas_memory_row * rows, int32_t n_max);

/* ---- tokens ---- */

/* The prompt as the flow was trained on it (the chat template with its generation prompt, or
 * alpaca), BOS first. Returns the token count; if it exceeds n_max, nothing useful is written
 * and the count says how much room is needed. Negative: a flas_status. */
FLAS_API int32_t flas_prompt_tokens(const flas_model * model, const char * prompt, int32_t * tokens, int32_t n_max);
/* The text of a token (raw bytes; a piece may end inside a UTF-8 character). Returns the byte
 * count written (not NUL-terminated), or -(bytes needed) when buf is too small. */
FLAS_API int32_t flas_token_to_piece(const flas_model * model, int32_t token, char * buf, int32_t size);

/* ---- concepts ---- */

/* Encodes a concept ahead of the requests that steer with it (they then find it encoded, as
 * later requests with the same text do anyway). Returns its token count, or a negative status. */
FLAS_API int32_t flas_encode_concept(flas_model * model, const char * concept);

/* ---- requests ---- */

FLAS_API struct flas_request_params flas_request_default_params(void);
/* Queues a request; *id identifies it until flas_poll reports it finished (or flas_release). */
FLAS_API int flas_submit(flas_model * model, const struct flas_request_params * params, uint64_t * id);
/* Waits up to timeout_ms (0: do not wait) for news of request id. Writes up to n_max new
 * tokens (kept for the next call if there are more) and returns how many, or a negative
 * flas_status. *finish becomes the flas_finish of a request that has ended and handed over
 * all its tokens; the id is then gone. */
FLAS_API int32_t flas_poll(flas_model * model, uint64_t id, int32_t timeout_ms, int32_t * tokens, int32_t n_max,
                           enum flas_finish * finish);
/* Ends a request (it finishes as FLAS_FINISH_CANCELLED within one decode step). */
FLAS_API int flas_cancel(flas_model * model, uint64_t id);
/* Cancels the request and forgets its id (for a caller that will not poll it again). */
FLAS_API int flas_release(flas_model * model, uint64_t id);

#ifdef __cplusplus
}
#endif

#endif /* FLAS_H */

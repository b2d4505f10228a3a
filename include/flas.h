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

/* Bumped whenever a struct or a signature of this header changes (no ABI promise before 1.0). */
#define FLAS_API_VERSION 7

/* Limits every interface shares (the Python package reads them through its extension). */
#define FLAS_MAX_STEPS 64  /* Euler steps N of one request */
#define FLAS_MAX_TOP_LOGPROBS 20  /* alternatives per token a request may ask for (OpenAI's limit) */

enum flas_status {
    FLAS_OK                    =  0,
    FLAS_ERR_INVALID_ARGUMENT  = -1,  /* a bad parameter, path or file; nothing changed */
    FLAS_ERR_RUNTIME           = -2,  /* llama.cpp or the flow failed (the model stays usable) */
    FLAS_ERR_DEVICE_LOST       = -3,  /* an RPC server stopped answering: free the model */
    FLAS_ERR_NOT_FOUND         = -4,  /* an unknown or finished request id */
    FLAS_ERR_CONTEXT_LENGTH    = -5,  /* a prompt longer than one sequence holds */
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
    int32_t n_threads;          /* 0: one per physical core, as llama.cpp (0) */
    const char * rpc_servers;   /* "host:port[,host:port]" of ggml RPC servers, or NULL */
    const float * tensor_split; /* proportions per offload device (n_tensor_split of them), or NULL:
                                   by free memory; copied */
    int32_t n_tensor_split;
    bool exact;                 /* f32 KV caches, no flash attention (false) */
    bool verbose;               /* llama.cpp's informational log on stderr (false) */
    /* the application's own eval callback on the steered context, chained: it is asked about
     * every node and called for those it wants, as llama.cpp would (NULL: none) */
    flas_eval_callback cb_eval;
    void * cb_eval_user_data;
};

/* How the next token is drawn: llama.cpp's sampler chain (penalties, then greedy when temperature
 * is 0, else top-k, typical, top-p, min-p, temperature and a seeded draw, in llama-cpp-python's
 * order). Each field: what turns it off, (its default), and the range flas_check_request holds it to. */
struct flas_sampling_params {
    float    temperature;       /* 0: greedy (0.0); finite, >= 0 */
    int32_t  top_k;             /* 0: off (0); >= 0 */
    float    top_p;             /* 1: off (1.0); in (0, 1] */
    float    typical_p;         /* 1: off (1.0); in (0, 1]; llama.cpp's locally typical sampling */
    float    min_p;             /* 0: off (0.0); in [0, 1] */
    float    repeat_penalty;    /* 1: off (1.0); finite, > 0; llama.cpp's penalty on the last repeat_last_n tokens */
    int32_t  repeat_last_n;     /* (64); >= -1, -1: the whole context */
    uint32_t seed;              /* (0) */
};

/* A point of a strength schedule: from generated token `token` (0: the first) the flowtime is T. */
struct flas_breakpoint {
    int32_t token;
    float   flowtime;
};

struct flas_request_params {
    const int32_t * prompt;     /* tokens, e.g. from flas_prompt_tokens; copied */
    int32_t n_prompt;
    const char * concept;       /* NULL or "": unsteered; copied */
    float   flowtime;           /* T; 0: unsteered (2.0); ignored when schedule is set */
    /* The strength as a schedule over the generated tokens (NULL: flowtime for every token):
     * n_schedule breakpoints, tokens strictly ascending from 0 or more, flowtimes finite and >= 0.
     * The flowtime of generated token i (the one the forward pass of the row before it samples)
     * is linear between the breakpoints around i, the first's before the first, the last's after
     * the last; the prompt's rows take token 0's. Copied. (NULL, 0) */
    const struct flas_breakpoint * schedule;
    int32_t n_schedule;
    int32_t n_steps;            /* N; 0: the flow's default (0) */
    int32_t max_tokens;         /* (128) */
    struct flas_sampling_params sampling;  /* (flas_sampling_default_params()) */
    bool    trace;              /* record every layer-L row before and after steering and the
                                   prompt's logits (from an empty sequence; end-of-generation is
                                   ignored); the request is then kept for flas_trace until
                                   flas_release (false) */
    bool    telemetry;          /* measure each generated token's displacement (struct
                                   flas_token_data; flas_poll_data) (false) */
    int32_t logprobs;           /* -1: none; 0..FLAS_MAX_TOP_LOGPROBS: each token's log-probability and
                                   that many most likely alternatives (struct flas_token_data) (-1) */
};

/* What one generated token was decoded with (flas_poll_data). */
struct flas_token_data {
    int32_t token;
    float   flowtime;           /* the strength of the forward pass that sampled it (0: unsteered) */
    float   displacement;       /* how far the flow moved that pass's layer-L row: ||h' - h|| / ||h||
                                   (0 when unsteered); NaN unless the request asked for telemetry */
    /* with params.logprobs >= 0: log-softmax of that pass's logits (before any sampler: not
     * affected by temperature or penalties) at the token, and its n_top most likely tokens, most
     * likely first (ties: the lower id first); NaN and 0 otherwise */
    float   logprob;
    int32_t n_top;
    int32_t top_token[FLAS_MAX_TOP_LOGPROBS];
    float   top_logprob[FLAS_MAX_TOP_LOGPROBS];
};

/* How a request went: finish is FLAS_FINISH_NONE while it runs; the rest is set once it ends. */
struct flas_result {
    enum flas_finish finish;
    int32_t status;             /* FLAS_FINISH_ERROR: the error's negative flas_status (FLAS_ERR_DEVICE_LOST: free the
                                   model; FLAS_ERR_CONTEXT_LENGTH: the prompt did not fit a sequence;
                                   FLAS_ERR_RUNTIME: the others); FLAS_OK otherwise */
    int32_t n_prompt;
    int32_t n_cached;           /* prompt tokens its sequence already held (prefix reuse) */
    double  prompt_seconds;     /* from admission to its first token */
    double  seconds;            /* from admission to the end */
};

/* ---- errors and information ---- */

/* The message of the last failed call on this thread ("" if none); valid until the next call. */
FLAS_API const char * flas_last_error(void);
/* ggml version, backends and devices, one line; valid for the life of the process. */
FLAS_API const char * flas_system_info(void);

struct flas_device_info {
    char   name[64];            /* ggml device name: "CPU", "CUDA0", "RPC0", ... */
    char   description[128];    /* e.g. the GPU model */
    char   type[16];            /* "cpu", "gpu", "igpu", "accel" */
    size_t memory_free;         /* bytes, as the backend reports them (0: unknown) */
    size_t memory_total;
};

struct flas_build_info {
    const char * ggml_version;  /* ggml_version(), e.g. "0.9.4" */
    const char * ggml_commit;
    const char * system_info;   /* llama_print_system_info(): CPU features, backends */
    const char * backends;      /* registered ggml backends, comma-separated: "RPC,CPU" */
    const char * libllama;      /* the shared objects loaded in this process */
    const char * libggml;
    const char * libggml_base;
    int32_t n_devices;
    const struct flas_device_info * devices;
};
/* The llama.cpp/ggml this library runs on. Owned by the library; valid until the calling thread's
 * next call (each call reads the devices' free memory anew). */
FLAS_API const struct flas_build_info * flas_build_info(void);

/* Where the log of models loaded with flas_model_load goes (llama.cpp's messages, filtered to
 * errors unless params.verbose): level is a ggml_log_level; NULL restores stderr. Attached
 * models leave llama.cpp's log as the application set it. */
typedef void (*flas_log_callback)(int level, const char * text, void * user_data);
FLAS_API void flas_log_set(flas_log_callback callback, void * user_data);

/* ---- models ---- */

FLAS_API struct flas_model_params flas_model_default_params(void);
/* The threads n_threads = 0 selects: one per physical core this process may run on. */
FLAS_API int32_t flas_default_threads(void);
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
FLAS_API int32_t flas_model_n_embd(const flas_model * model);     /* H, the width of a layer-L row */
FLAS_API int32_t flas_model_n_ctx(const flas_model * model);      /* llama.cpp's whole context */
FLAS_API int32_t flas_model_n_ctx_seq(const flas_model * model);  /* tokens one sequence holds */
FLAS_API int32_t flas_model_n_seq(const flas_model * model);
/* The ggml device computing layer L and the flow ("CPU", "RPC0", ...); valid while the model lives. */
FLAS_API const char * flas_model_flow_device(const flas_model * model);

/* What the flow GGUF says about itself (docs/FLOW_GGUF.md). */
struct flas_flow_info {
    const char * base_model_id;
    const char * prompt_format;  /* "chat" or "alpaca" */
    const char * family;         /* the base family */
    const char * activation;     /* "gelu_tanh" or "silu" */
    int32_t format_version;
    int32_t layer;               /* steering layer L, 0-based */
    int32_t n_block;
    int32_t n_steps;             /* the default N */
    float   t_min, t_max;        /* the flowtimes it was trained on */
    int32_t concept_max_len;     /* concept tokens used, BOS included */
    bool    has_cross_attn, has_self_attn, has_mlp;
    int32_t n_embd, n_head, n_head_kv, head_dim;
    float   softcap;             /* 0: none */
    float   rope_freq_base, rope_freq_scale;
};
/* Owned by the model; valid while it lives. NULL for a NULL model. */
FLAS_API const struct flas_flow_info * flas_model_flow_info(const flas_model * model);

struct flas_memory_row {
    char   device[64];          /* ggml device name: "CPU", "CUDA0", "RPC0", ... */
    char   type[16];            /* "cpu", "gpu", ... */
    char   description[128];
    size_t base_weights, kv_cache, base_compute, flow_weights, flow_caches, flow_compute, total;
};
/* Bytes per device, as FlasModel.memory(): writes up to n_max rows, returns how many there are
 * (more than n_max: call again with room for them), or a negative flas_status. */
FLAS_API int32_t flas_model_memory(const flas_model * model, struct flas_memory_row * rows, int32_t n_max);
/* What a model of these params would hold per device with every sequence steered at n_steps,
 * from llama.cpp's simulated buffers (nothing is allocated; flow_compute is 0). As flas_model_memory. */
FLAS_API int32_t flas_estimate_memory(const struct flas_model_params * params, int32_t n_steps,
                                      struct flas_memory_row * rows, int32_t n_max);
/* Allocates now what steering every sequence with n_steps holds (flow caches, compute buffer),
 * between two decode steps. */
FLAS_API int flas_model_reserve(flas_model * model, int32_t n_steps);

/* ---- tokens ---- */

/* One turn of a conversation (llama_chat_message's layout). */
struct flas_chat_message {
    const char * role;          /* "system", "user", "assistant" */
    const char * content;
};
/* The conversation as the flow was trained on it (the chat template with its generation prompt,
 * or alpaca), BOS first, as tokens. The template's own markers are control tokens; the messages'
 * text is plain text unless content_special (then control-token text in it, e.g.
 * "<end_of_turn>", becomes control tokens, as llama.cpp's parse_special does): with it off, a
 * user cannot forge turns by typing the markers. Returns the token count; if it exceeds n_max,
 * nothing useful is written and the count says how much room is needed. A conversation that
 * cannot fit one sequence (flas_model_n_ctx_seq tokens or more) is FLAS_ERR_CONTEXT_LENGTH,
 * told from its bytes before tokenizing where they suffice. Other errors: a negative flas_status. */
FLAS_API int32_t flas_chat_tokens(const flas_model * model, const struct flas_chat_message * messages,
                                  int32_t n_messages, bool content_special, int32_t * tokens, int32_t n_max);
/* flas_chat_tokens of one user turn, its text plain text. */
FLAS_API int32_t flas_prompt_tokens(const flas_model * model, const char * prompt, int32_t * tokens, int32_t n_max);
/* A prompt as it is, without a template (a completion's): BOS first, control-token text in it a
 * control token if parse_special, as llama.cpp's tokenizer gives them; with flas_chat_tokens's
 * length check. Returns as flas_chat_tokens. */
FLAS_API int32_t flas_text_tokens(const flas_model * model, const char * text, bool parse_special, int32_t * tokens,
                                  int32_t n_max);
/* llama.cpp's tokenizer on text as it is (add_special: BOS; parse_special: control tokens in the
 * text). Returns as flas_chat_tokens, without the length check. */
FLAS_API int32_t flas_tokenize(const flas_model * model, const char * text, bool add_special, bool parse_special,
                               int32_t * tokens, int32_t n_max);
/* The model's chat template applied to the messages, with the generation prompt. Returns the
 * length in bytes; if it is >= size, nothing useful is written (call again with length + 1);
 * otherwise buf is NUL-terminated. Negative: a flas_status. */
FLAS_API int32_t flas_chat_template(const flas_model * model, const struct flas_chat_message * messages,
                                    int32_t n_messages, char * buf, int32_t size);
/* The text of a token (raw bytes; a piece may end inside a UTF-8 character). Returns its byte
 * count; if that exceeds size, nothing is written (call again with that much room). Not
 * NUL-terminated. Negative: a flas_status. */
FLAS_API int32_t flas_token_to_piece(const flas_model * model, int32_t token, char * buf, int32_t size);

/* ---- concepts ---- */

/* Encodes a concept ahead of the requests that steer with it (they then find it encoded, as
 * later requests with the same text do anyway). Returns its token count, or a negative status. */
FLAS_API int32_t flas_encode_concept(flas_model * model, const char * concept);
/* The concept's encoding c = final_norm(layer1(layer0(tokens))), [K, n_embd] row-major (FLAS_SPEC.md
 * 2): what every flow block's cross-attention reads, K its tokens (BOS first, at most
 * concept_max_len). For trainers and tests; the concept table is untouched. Writes up to n_max
 * floats; returns K * n_embd, or a negative status. */
FLAS_API int64_t flas_concept_rows(flas_model * model, const char * concept, float * out, int64_t n_max);

/* ---- requests ---- */

FLAS_API struct flas_request_params flas_request_default_params(void);
FLAS_API struct flas_sampling_params flas_sampling_default_params(void);
/* Checks steering settings by the rules flas_submit applies (FLAS_OK, or FLAS_ERR_INVALID_ARGUMENT
 * with the message): flowtime finite and >= 0, n_steps in 1..FLAS_MAX_STEPS (a request's 0, the
 * flow's default, is flas_model_flow_info's n_steps), a concept (not NULL nor "") when flowtime > 0.
 * For a front end that checks what a user typed before it makes a request. */
FLAS_API int flas_check_steering(const char * concept, float flowtime, int32_t n_steps);
/* Checks a request's settings apart from its prompt by the rules flas_submit applies (as
 * flas_check_steering): its steering (each breakpoint of a schedule as flowtime, tokens ascending),
 * max_tokens >= 1, logprobs in -1..FLAS_MAX_TOP_LOGPROBS, and each sampling field in the range
 * struct flas_sampling_params states. */
FLAS_API int flas_check_request(const struct flas_request_params * params);
/* Queues a request; *id identifies it until flas_poll reports it finished (or flas_release). */
FLAS_API int flas_submit(flas_model * model, const struct flas_request_params * params, uint64_t * id);
/* Queues n requests at once (free sequences take them in the same decode step); every one is
 * checked before any is queued. ids receives their n ids. */
FLAS_API int flas_submit_many(flas_model * model, const struct flas_request_params * params, int32_t n, uint64_t * ids);
/* Waits up to timeout_ms (0: do not wait) for news of request id (one thread polls an id). Writes up to n_max new
 * tokens (kept for the next call if there are more) and returns how many, or a negative
 * flas_status. result->finish becomes the flas_finish of a request that has ended and handed
 * over all its tokens, with its counts and times; the id is then gone, unless the request was
 * traced (flas_release forgets it). */
FLAS_API int32_t flas_poll(flas_model * model, uint64_t id, int32_t timeout_ms, int32_t * tokens, int32_t n_max,
                           struct flas_result * result);
/* As flas_poll, each token with what it was decoded with (struct flas_token_data). */
FLAS_API int32_t flas_poll_data(flas_model * model, uint64_t id, int32_t timeout_ms, struct flas_token_data * tokens,
                                int32_t n_max, struct flas_result * result);
/* Changes a running request's steering from its next decoded token on; the tokens already
 * generated stay. params gives the new steering whole (concept, flowtime or schedule, n_steps;
 * its other fields are ignored), a schedule's tokens counted from the change: its token 0 is the
 * first token decoded with it. Waits until the change is in force, at most one decode step plus
 * the concept's encoding (done between two steps when the concept is new); *at (may be NULL)
 * receives the index of the first generated token it steers (0 for a request not started yet).
 * FLAS_ERR_NOT_FOUND: an unknown id, or a request that ended before the change took effect.
 * FLAS_ERR_INVALID_ARGUMENT: bad settings (as flas_check_steering), or a change the flow cannot
 * make: with a flow that has self-attention (flas_flow_info.has_self_attn), whose rows read the
 * earlier rows' Euler steps, a request that started unsteered cannot be steered later and
 * n_steps cannot change; the request then goes on as it was. */
FLAS_API int flas_request_steer(flas_model * model, uint64_t id, const struct flas_request_params * params, int32_t * at);
/* Waits up to timeout_ms until one of the n requests has news; *ready is its id, or 0. */
FLAS_API int flas_wait_any(flas_model * model, const uint64_t * ids, int32_t n, int32_t timeout_ms, uint64_t * ready);
/* Ends a request (it finishes as FLAS_FINISH_CANCELLED within one decode step). */
FLAS_API int flas_cancel(flas_model * model, uint64_t id);
/* Cancels the request and forgets its id (for a caller that will not poll it again). */
FLAS_API int flas_release(flas_model * model, uint64_t id);

enum flas_trace_kind {
    FLAS_TRACE_UNSTEERED = 0,   /* layer-L rows before the flow, [n_rows, n_embd] */
    FLAS_TRACE_STEERED   = 1,   /* after it */
    FLAS_TRACE_LOGITS    = 2,   /* last-token logits, [n_vocab] (of the prompt, for a request) */
};
/* What a finished traced request recorded: writes up to n_max floats, returns how many there are
 * (more than n_max: call again with room), or a negative flas_status. */
FLAS_API int64_t flas_trace(flas_model * model, uint64_t id, enum flas_trace_kind kind, float * out, int64_t n_max);

struct flas_stats {
    int32_t n_active;           /* sequences decoding */
    int32_t n_queued;           /* requests waiting for a sequence */
    int64_t n_decoded;          /* tokens through llama_decode */
    int64_t n_decode_calls;     /* llama_decode calls */
    int64_t concepts_encoded;   /* concept encodings run (cache misses) */
    int64_t concept_hits;       /* steerings that found their concept encoded */
    int32_t concepts_cached;
};
FLAS_API int flas_model_stats(const flas_model * model, struct flas_stats * out);

/* ---- advanced: replacing the flow, and driving the sequences yourself ---- */

/* Replaces the flow for every sequence: rows_in/rows_out are [n_rows, n_embd] row-major, the
 * layer-L rows of positions pos0 .. pos0+n_rows-1 of one sequence, inside llama.cpp's forward
 * pass (on the thread that decodes). Return false to fail that decode. NULL restores the flow.
 * Setting it empties every sequence (requests running end with an error). */
typedef bool (*flas_steer_hook)(const float * rows_in, float * rows_out, int32_t n_rows, int32_t n_embd,
                                int32_t pos0, void * user_data);
FLAS_API int flas_set_steer_hook(flas_model * model, flas_steer_hook hook, void * user_data);

/* Runs fn(model, user_data) on the calling thread between two decode steps, with the sequences
 * to itself: the flas_seq_* functions work only inside it, on that thread. A request decoding in
 * a sequence fn changes ends with FLAS_FINISH_ERROR; flas_model_free must not be called inside
 * it. Not from a steer hook or an eval callback (FLAS_ERR_INVALID_ARGUMENT): they run inside
 * the decode step. flas_encode_concept, flas_model_reserve, flas_model_memory and
 * flas_set_steer_hook wait for the step the same way (inside fn they run at once). */
typedef void (*flas_exclusive_fn)(flas_model * model, void * user_data);
FLAS_API int flas_exclusive(flas_model * model, flas_exclusive_fn fn, void * user_data);

/* Steers sequence seq (0 .. n_seq-1) with concept at flowtime over n_steps (concept NULL or
 * flowtime 0: unsteered) and empties it. Returns the concept's token count (0 without one). */
FLAS_API int32_t flas_seq_set_steering(flas_model * model, int32_t seq, const char * concept, float flowtime,
                                       int32_t n_steps);
/* The flowtime of sequence seq's next rows (a schedule driven by hand), its concept and steps kept;
 * what it holds stays as computed. Above 0 it needs the concept flas_seq_set_steering gave it. */
FLAS_API int flas_seq_set_flowtime(flas_model * model, int32_t seq, float flowtime);
/* Appends tokens to sequences in one llama_decode: entry i appends n_tokens[i] tokens to seqs[i]
 * (distinct sequences; more than n_batch tokens only for a single entry) and computes the
 * logits of each entry's last token. */
FLAS_API int flas_seq_decode(flas_model * model, int32_t n_entries, const int32_t * seqs,
                             const int32_t * const * tokens, const int32_t * n_tokens);
FLAS_API int flas_seq_reset(flas_model * model, int32_t seq);                   /* empties it */
FLAS_API int flas_seq_rewind(flas_model * model, int32_t seq, int32_t n_keep);  /* keeps positions < n_keep */
FLAS_API int flas_seq_set_trace(flas_model * model, int32_t seq, bool on);
/* Measure how far the flow moves the last row of each decode of seq (struct flas_token_data's
 * displacement); flas_seq_displacement gives that of its last decode (0: not steered), then 0. */
FLAS_API int flas_seq_set_telemetry(flas_model * model, int32_t seq, bool on);
FLAS_API int flas_seq_displacement(flas_model * model, int32_t seq, float * out);
/* Its last-token logits, or the rows traced since set_trace: as flas_trace. */
FLAS_API int64_t flas_seq_get(flas_model * model, int32_t seq, enum flas_trace_kind kind, float * out, int64_t n_max);

/* ---- utilities ---- */

/* Reads and checks a flow GGUF completely (keys and their ranges, tensor names, shapes and types,
 * finite values) without a base model: FLAS_OK, or an error whose message names the problem. */
FLAS_API int flas_flow_validate(const char * path);

/* ggml's quantizer on rows of floats: n_rows rows of n_per_row values from src into dst as ggml
 * type `type` (a ggml_type: q8_0, q4_k, q5_k, q6_k, ...; n_per_row a multiple of its block).
 * Returns the bytes written (dst must hold them: n_rows * the type's row size), or a negative
 * flas_status. */
FLAS_API int64_t flas_quantize_rows(int32_t type, const float * src, void * dst, int64_t n_rows, int64_t n_per_row);
/* llama.cpp's quantizer on a GGUF file (ftype: a llama_ftype; n_threads <= 0: all cores). */
FLAS_API int flas_quantize(const char * path_in, const char * path_out, int32_t ftype, int32_t n_threads);
/* Serves this machine's backend to ggml RPC clients at endpoint "host:port" (cache_dir: a
 * tensor cache directory, or NULL); returns only on error. */
FLAS_API int flas_rpc_serve(const char * endpoint, int32_t n_threads, const char * cache_dir);
/* Whether a TCP connection to endpoint "host:port" opens within timeout_ms. */
FLAS_API bool flas_endpoint_reachable(const char * endpoint, int32_t timeout_ms);
/* The ggml device (a ggml_backend_dev_t, for llama_model_params.devices) of the RPC server at
 * endpoint, or NULL with flas_last_error() set. Owned by ggml. */
FLAS_API void * flas_rpc_device(const char * endpoint);

#ifdef __cplusplus
}
#endif

#endif /* FLAS_H */

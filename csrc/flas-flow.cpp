#include "flas-flow.h"

#include "flas-names.h"
#include "gguf.h"

#include <cstdio>
#include <fstream>
#include <stdexcept>

namespace {

struct flow_reader {
    const std::string & path;
    gguf_context * gctx;
    ggml_context * mctx;

    [[noreturn]] void fail(const std::string & what) const {
        throw std::invalid_argument("flow GGUF " + path + ": " + what);
    }

    int64_t key(const char * name, enum gguf_type type) const {
        const int64_t id = gguf_find_key(gctx, name);
        if (id < 0) {
            fail(std::string("missing key '") + name + "'; re-convert the flow with flas-convert flow");
        }
        if (gguf_get_kv_type(gctx, id) != type) {
            fail(std::string("key '") + name + "' has type " + gguf_type_name(gguf_get_kv_type(gctx, id)) +
                 ", expected " + gguf_type_name(type));
        }
        return id;
    }
    int u32(const char * name) const { return (int) gguf_get_val_u32(gctx, key(name, GGUF_TYPE_UINT32)); }
    float f32(const char * name) const { return gguf_get_val_f32(gctx, key(name, GGUF_TYPE_FLOAT32)); }
    bool flag(const char * name) const { return gguf_get_val_bool(gctx, key(name, GGUF_TYPE_BOOL)); }
    std::string str(const char * name) const { return gguf_get_val_str(gctx, key(name, GGUF_TYPE_STRING)); }

    // A tensor of exactly this ggml shape, or an error naming it.
    ggml_tensor * tensor(const std::string & name, int64_t ne0, int64_t ne1 = 1) const {
        ggml_tensor * t = ggml_get_tensor(mctx, name.c_str());
        if (t == nullptr) {
            fail("missing tensor '" + name + "'");
        }
        if (ne1 == 1 && t->type != GGML_TYPE_F32) {  // norms, gates, biases
            fail("vector '" + name + "' is " + ggml_type_name(t->type) + ", expected f32; re-convert the flow");
        }
        if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
            char buf[256];
            snprintf(buf, sizeof(buf), "tensor '%s' has shape [%lld, %lld] but the hyper-parameters imply [%lld, %lld]",
                     name.c_str(), (long long) t->ne[0], (long long) t->ne[1], (long long) ne0, (long long) ne1);
            fail(buf);
        }
        return t;
    }
    ggml_tensor * block_tensor(const char * fmt, int b, int64_t ne0, int64_t ne1 = 1) const {
        char name[128];
        snprintf(name, sizeof(name), fmt, b);
        return tensor(std::string(name), ne0, ne1);
    }
};

void read_hparams(const flow_reader & r, flas_flow_hparams & hp) {
    const int64_t arch = gguf_find_key(r.gctx, "general.architecture");
    if (arch < 0 || gguf_get_kv_type(r.gctx, arch) != GGUF_TYPE_STRING ||
        std::string(gguf_get_val_str(r.gctx, arch)) != FLAS_ARCH) {
        r.fail(std::string("not a flow GGUF (general.architecture is '") +
               (arch >= 0 && gguf_get_kv_type(r.gctx, arch) == GGUF_TYPE_STRING ? gguf_get_val_str(r.gctx, arch) : "?") +
               "', expected '" FLAS_ARCH "'); convert the flow checkpoint with flas-convert flow");
    }
    const int version = r.u32(FLAS_KEY_FORMAT_VERSION);
    if (version < FLAS_FORMAT_VERSION_MIN || version > FLAS_FORMAT_VERSION) {
        r.fail("format version " + std::to_string(version) + " is not supported (this flas-cpp reads versions " +
               std::to_string(FLAS_FORMAT_VERSION_MIN) + " to " + std::to_string(FLAS_FORMAT_VERSION) + ")");
    }
    hp.format_version = version;
    hp.base_model_id   = r.str(FLAS_KEY_BASE_MODEL_ID);
    hp.prompt_format   = r.str(FLAS_KEY_PROMPT_FORMAT);
    hp.n_base_layer    = r.u32(FLAS_KEY_BASE_BLOCK_COUNT);
    hp.layer           = r.u32(FLAS_KEY_LAYER);
    hp.n_block         = r.u32(FLAS_KEY_BLOCK_COUNT);
    hp.n_steps         = r.u32(FLAS_KEY_N_STEPS);
    hp.t_min           = r.f32(FLAS_KEY_T_MIN);
    hp.t_max           = r.f32(FLAS_KEY_T_MAX);
    hp.concept_max_len = r.u32(FLAS_KEY_CONCEPT_MAX_LEN);
    hp.has_cross_attn  = !r.flag(FLAS_KEY_DISABLE_CROSS_ATTN);
    hp.has_self_attn   = !r.flag(FLAS_KEY_DISABLE_SELF_ATTN);
    hp.has_mlp         = !r.flag(FLAS_KEY_DISABLE_MLP);
    hp.n_embd          = r.u32(FLAS_KEY_EMBD);
    hp.n_ff            = r.u32(FLAS_KEY_FF);
    hp.n_head          = r.u32(FLAS_KEY_HEAD_COUNT);
    hp.n_head_kv       = r.u32(FLAS_KEY_HEAD_COUNT_KV);
    hp.head_dim        = r.u32(FLAS_KEY_HEAD_DIM);
    hp.rms_eps         = r.f32(FLAS_KEY_RMS_EPS);
    hp.softcap         = r.f32(FLAS_KEY_SOFTCAP);
    hp.query_pre_attn_scalar = r.f32(FLAS_KEY_QUERY_PRE_ATTN_SCALAR);
    hp.rope_freq_base  = r.f32(FLAS_KEY_ROPE_FREQ_BASE);
    hp.time_freq_dim   = r.u32(FLAS_KEY_TIME_FREQ_DIM);
    hp.base_arch       = r.str(FLAS_KEY_BASE_ARCH);
    const bool gemma = hp.base_arch == "gemma2" || hp.base_arch == "gemma3";
    const bool known = gemma || hp.base_arch == "qwen3" || hp.base_arch == "llama";
    if (hp.base_arch != "gemma2" && (version < 2 || !known)) {
        r.fail("flows of '" + hp.base_arch + "' base models are not supported (supported: gemma2, gemma3, qwen3, llama)");
    }
    hp.self_attn_qk_norm = hp.base_arch == "qwen3";
    if (r.flag(FLAS_KEY_NORM_PLUS_ONE) != gemma) {
        r.fail(std::string("norm weights must ") + (gemma ? "" : "not ") + "be stored as 1 + w for a " + hp.base_arch +
               " flow; re-convert the flow with flas-convert flow");
    }
    if (version >= 2) {  // version 1: Gemma-2's values, the defaults
        const std::string act = r.str(FLAS_KEY_ACTIVATION);
        if (act != "gelu_tanh" && act != "silu") {
            r.fail("activation '" + act + "' is not gelu_tanh or silu");
        }
        hp.silu = act == "silu";
        const std::string scaling = r.str(FLAS_KEY_ROPE_SCALING_TYPE);
        const float factor = r.f32(FLAS_KEY_ROPE_SCALING_FACTOR);
        if ((scaling != "none" && scaling != "linear" && scaling != "llama3") || !(factor >= 1.0f) ||
            (scaling == "none" && factor != 1.0f)) {
            r.fail("RoPE scaling '" + scaling + "' with factor " + std::to_string(factor) +
                   " is not supported (none with factor 1, linear with a factor >= 1, or llama3)");
        }
        hp.rope_llama3     = scaling == "llama3";  // the factors are in the rope_freqs tensor
        hp.rope_freq_scale = scaling == "linear" ? 1.0f / factor : 1.0f;
    }
    if (!(hp.softcap >= 0.0f) || !(hp.rope_freq_base > 0.0f) || !(hp.query_pre_attn_scalar > 0.0f)) {
        r.fail("attn_logit_softcapping must be >= 0 (0: none), rope freq_base and query_pre_attn_scalar > 0");
    }
    if (hp.n_block < 1 || hp.n_head < 1 || hp.n_head_kv < 1 || hp.n_head % hp.n_head_kv != 0 ||
        hp.head_dim % 2 != 0 || hp.time_freq_dim % 2 != 0 || hp.concept_max_len < 1 || hp.n_steps < 1) {
        r.fail("inconsistent hyper-parameters (blocks, heads, head_dim, concept length or steps)");
    }
}

void bind_tensors(const flow_reader & r, flas_flow & f) {
    const flas_flow_hparams & hp = f.hp;
    const int64_t H = hp.n_embd, I = hp.n_ff, D = hp.head_dim, Q = hp.n_head * D, KV = hp.n_head_kv * D;
    f.time_in_w  = r.tensor(FLAS_TN_TIME_IN_W, hp.time_freq_dim, H);
    f.time_in_b  = r.tensor(FLAS_TN_TIME_IN_B, H);
    f.time_out_w = r.tensor(FLAS_TN_TIME_OUT_W, H, H);
    f.time_out_b = r.tensor(FLAS_TN_TIME_OUT_B, H);
    int n_bound = 4;
    if (hp.rope_llama3) {
        f.rope_freqs = r.tensor(FLAS_TN_ROPE_FREQS, D / 2);
        n_bound += 1;
    }
    f.blocks.resize(hp.n_block);
    for (int b = 0; b < hp.n_block; ++b) {
        flas_flow_block & blk = f.blocks[b];
        if (hp.has_cross_attn) {
            blk.cross_norm      = r.block_tensor(FLAS_TN_CROSS_NORM, b, H);
            blk.cross_q         = r.block_tensor(FLAS_TN_CROSS_Q, b, H, Q);
            blk.cross_k         = r.block_tensor(FLAS_TN_CROSS_K, b, H, KV);
            blk.cross_v         = r.block_tensor(FLAS_TN_CROSS_V, b, H, KV);
            blk.cross_out       = r.block_tensor(FLAS_TN_CROSS_OUT, b, Q, H);
            blk.cross_q_norm    = r.block_tensor(FLAS_TN_CROSS_Q_NORM, b, D);
            blk.cross_k_norm    = r.block_tensor(FLAS_TN_CROSS_K_NORM, b, D);
            blk.cross_post_norm = r.block_tensor(FLAS_TN_CROSS_POST_NORM, b, H);
            blk.cross_gate      = r.block_tensor(FLAS_TN_CROSS_GATE, b, H);
            n_bound += 9;
        }
        if (hp.has_self_attn) {
            blk.attn_norm      = r.block_tensor(FLAS_TN_ATTN_NORM, b, H);
            blk.attn_q         = r.block_tensor(FLAS_TN_ATTN_Q, b, H, Q);
            blk.attn_k         = r.block_tensor(FLAS_TN_ATTN_K, b, H, KV);
            blk.attn_v         = r.block_tensor(FLAS_TN_ATTN_V, b, H, KV);
            blk.attn_out       = r.block_tensor(FLAS_TN_ATTN_OUT, b, Q, H);
            blk.attn_post_norm = r.block_tensor(FLAS_TN_ATTN_POST_NORM, b, H);
            blk.attn_gate      = r.block_tensor(FLAS_TN_ATTN_GATE, b, H);
            n_bound += 7;
            if (hp.self_attn_qk_norm) {
                blk.attn_q_norm = r.block_tensor(FLAS_TN_ATTN_Q_NORM, b, D);
                blk.attn_k_norm = r.block_tensor(FLAS_TN_ATTN_K_NORM, b, D);
                n_bound += 2;
            }
        }
        if (hp.has_mlp) {
            blk.ffn_norm      = r.block_tensor(FLAS_TN_FFN_NORM, b, H);
            blk.ffn_gate      = r.block_tensor(FLAS_TN_FFN_GATE, b, H, I);
            blk.ffn_up        = r.block_tensor(FLAS_TN_FFN_UP, b, H, I);
            blk.ffn_down      = r.block_tensor(FLAS_TN_FFN_DOWN, b, I, H);
            blk.ffn_post_norm = r.block_tensor(FLAS_TN_FFN_POST_NORM, b, H);
            blk.ffn_res_gate  = r.block_tensor(FLAS_TN_FFN_GATE_RES, b, H);
            n_bound += 6;
        }
    }
    if (n_bound != gguf_get_n_tensors(r.gctx)) {
        r.fail("holds " + std::to_string(gguf_get_n_tensors(r.gctx)) + " tensors but its hyper-parameters name " +
               std::to_string(n_bound) + "; re-convert the flow with flas-convert flow");
    }
}

}  // namespace

flas_flow_hparams flas_flow_read_hparams(const std::string & path) {
    gguf_init_params params = { /*no_alloc =*/ true, /*ctx =*/ nullptr };
    gguf_context_ptr gctx(gguf_init_from_file(path.c_str(), params));
    if (!gctx) {
        throw std::invalid_argument("cannot read flow GGUF " + path + " (missing, unreadable or not a GGUF file)");
    }
    flas_flow_hparams hp;
    read_hparams(flow_reader{path, gctx.get(), nullptr}, hp);
    return hp;
}

void flas_flow_load(flas_flow & flow, const std::string & path, ggml_backend_t backend) {
    ggml_context * mctx = nullptr;
    gguf_init_params params = { /*no_alloc =*/ true, /*ctx =*/ &mctx };
    gguf_context_ptr gctx(gguf_init_from_file(path.c_str(), params));
    if (!gctx) {
        throw std::invalid_argument("cannot read flow GGUF " + path + " (missing, unreadable or not a GGUF file)");
    }
    flow.ctx.reset(mctx);
    const flow_reader r{path, gctx.get(), mctx};
    read_hparams(r, flow.hp);
    bind_tensors(r, flow);

    flow.buf.reset(ggml_backend_alloc_ctx_tensors(mctx, backend));
    if (!flow.buf) {
        throw std::runtime_error("flow GGUF " + path + ": cannot allocate the weights on backend " +
                                 ggml_backend_name(backend));
    }
    ggml_backend_buffer_set_usage(flow.buf.get(), GGML_BACKEND_BUFFER_USAGE_WEIGHTS);

    std::ifstream file(path, std::ios::binary);
    std::vector<uint8_t> staging;
    const size_t data_offset = gguf_get_data_offset(gctx.get());
    for (int64_t i = 0; i < gguf_get_n_tensors(gctx.get()); ++i) {
        ggml_tensor * t = ggml_get_tensor(mctx, gguf_get_tensor_name(gctx.get(), i));
        const size_t nbytes = ggml_nbytes(t);
        staging.resize(nbytes);
        file.seekg(data_offset + gguf_get_tensor_offset(gctx.get(), i));
        file.read(reinterpret_cast<char *>(staging.data()), nbytes);
        if (!file) {
            throw std::invalid_argument("flow GGUF " + path + ": truncated data for tensor '" + ggml_get_name(t) + "'");
        }
        ggml_backend_tensor_set(t, staging.data(), 0, nbytes);
    }
}

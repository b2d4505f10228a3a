#include "flas-flow.h"

#include "flas-names.h"
#include "flas.h"
#include "gguf.h"

#include <cmath>
#include <cstdint>
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
    // An integer key of any integer type, as stored, within lo..hi.
    int count(const char * name, int64_t lo, int64_t hi) const {
        const int64_t id = gguf_find_key(gctx, name);
        if (id < 0) {
            fail(std::string("missing key '") + name + "'; re-convert the flow with flas-convert flow");
        }
        int64_t v = 0;
        bool too_big = false;
        switch (gguf_get_kv_type(gctx, id)) {
            case GGUF_TYPE_UINT8:  v = gguf_get_val_u8(gctx, id);  break;
            case GGUF_TYPE_INT8:   v = gguf_get_val_i8(gctx, id);  break;
            case GGUF_TYPE_UINT16: v = gguf_get_val_u16(gctx, id); break;
            case GGUF_TYPE_INT16:  v = gguf_get_val_i16(gctx, id); break;
            case GGUF_TYPE_UINT32: v = gguf_get_val_u32(gctx, id); break;
            case GGUF_TYPE_INT32:  v = gguf_get_val_i32(gctx, id); break;
            case GGUF_TYPE_INT64:  v = gguf_get_val_i64(gctx, id); break;
            case GGUF_TYPE_UINT64: {
                const uint64_t u = gguf_get_val_u64(gctx, id);
                too_big = u > (uint64_t) INT64_MAX;
                v = too_big ? INT64_MAX : (int64_t) u;
                break;
            }
            default:
                fail(std::string("key '") + name + "' has type " + gguf_type_name(gguf_get_kv_type(gctx, id)) +
                     ", expected an integer");
        }
        if (too_big || v < lo || v > hi) {
            fail(std::string("key '") + name + "' is " + (too_big ? std::to_string(gguf_get_val_u64(gctx, id)) : std::to_string(v)) +
                 ", outside the allowed " + std::to_string(lo) + ".." + std::to_string(hi));
        }
        return (int) v;
    }
    // A finite float key within lo..hi (lo excluded when open_lo).
    float real(const char * name, float lo, float hi, bool open_lo = false) const {
        const float v = gguf_get_val_f32(gctx, key(name, GGUF_TYPE_FLOAT32));
        if (!std::isfinite(v) || v < lo || v > hi || (open_lo && v == lo)) {
            char buf[160];
            snprintf(buf, sizeof(buf), "' is %g, outside the allowed %s%g, %g]", v, open_lo ? "(" : "[", lo, hi);
            fail(std::string("key '") + name + buf);
        }
        return v;
    }
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
        if (ne1 > 1 && !flas_flow_matrix_type_ok(t->type)) {
            fail("matrix '" + name + "' is " + ggml_type_name(t->type) + "; flow matrices may be " +
                 FLAS_FLOW_MATRIX_TYPES + " (docs/FLOW_GGUF.md); re-convert the flow with flas-convert flow");
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
    const int version = r.count(FLAS_KEY_FORMAT_VERSION, 0, INT32_MAX);
    if (version < FLAS_FORMAT_VERSION_MIN || version > FLAS_FORMAT_VERSION) {
        r.fail("format version " + std::to_string(version) + " is not supported (this flas-cpp reads versions " +
               std::to_string(FLAS_FORMAT_VERSION_MIN) + " to " + std::to_string(FLAS_FORMAT_VERSION) + ")");
    }
    hp.format_version = version;
    hp.base_model_id   = r.str(FLAS_KEY_BASE_MODEL_ID);
    hp.prompt_format   = r.str(FLAS_KEY_PROMPT_FORMAT);
    hp.has_cross_attn  = !r.flag(FLAS_KEY_DISABLE_CROSS_ATTN);
    hp.has_self_attn   = !r.flag(FLAS_KEY_DISABLE_SELF_ATTN);
    hp.has_mlp         = !r.flag(FLAS_KEY_DISABLE_MLP);
    // every size within what a real model has, so that no later product overflows
    hp.n_base_layer    = r.count(FLAS_KEY_BASE_BLOCK_COUNT, 1, 4096);
    hp.layer           = r.count(FLAS_KEY_LAYER, 0, hp.n_base_layer - 1);
    hp.n_block         = r.count(FLAS_KEY_BLOCK_COUNT, 1, 1024);
    hp.n_steps         = r.count(FLAS_KEY_N_STEPS, 1, FLAS_MAX_STEPS);
    hp.concept_max_len = r.count(FLAS_KEY_CONCEPT_MAX_LEN, 1, 8192);
    hp.n_embd          = r.count(FLAS_KEY_EMBD, 1, 1 << 16);
    hp.n_ff            = r.count(FLAS_KEY_FF, hp.has_mlp ? 1 : 0, 1 << 20);
    hp.n_head          = r.count(FLAS_KEY_HEAD_COUNT, 1, 1024);
    hp.n_head_kv       = r.count(FLAS_KEY_HEAD_COUNT_KV, 1, hp.n_head);
    hp.head_dim        = r.count(FLAS_KEY_HEAD_DIM, 2, 4096);
    hp.time_freq_dim   = r.count(FLAS_KEY_TIME_FREQ_DIM, 2, 1 << 16);
    hp.t_min           = r.real(FLAS_KEY_T_MIN, 0.0f, 1e6f);
    hp.t_max           = r.real(FLAS_KEY_T_MAX, hp.t_min, 1e6f);
    hp.rms_eps         = r.real(FLAS_KEY_RMS_EPS, 0.0f, 1.0f, /*open_lo =*/ true);
    hp.softcap         = r.real(FLAS_KEY_SOFTCAP, 0.0f, 1e6f);
    hp.query_pre_attn_scalar = r.real(FLAS_KEY_QUERY_PRE_ATTN_SCALAR, 0.0f, 1e9f, /*open_lo =*/ true);
    hp.rope_freq_base  = r.real(FLAS_KEY_ROPE_FREQ_BASE, 0.0f, 1e12f, /*open_lo =*/ true);
    if (hp.n_head % hp.n_head_kv != 0) {
        r.fail("attention.head_count " + std::to_string(hp.n_head) + " is not a multiple of head_count_kv " +
               std::to_string(hp.n_head_kv));
    }
    if (hp.head_dim % 2 != 0 || hp.time_freq_dim % 2 != 0) {
        r.fail("attention.key_length (" + std::to_string(hp.head_dim) + ") and time_embed.freq_dim (" +
               std::to_string(hp.time_freq_dim) + ") must be even (RoPE and sinusoid pairs)");
    }
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
        const float factor = r.real(FLAS_KEY_ROPE_SCALING_FACTOR, 1.0f, 1e6f);
        if ((scaling != "none" && scaling != "linear" && scaling != "llama3") || !(factor >= 1.0f) ||
            (scaling == "none" && factor != 1.0f)) {
            r.fail("RoPE scaling '" + scaling + "' with factor " + std::to_string(factor) +
                   " is not supported (none with factor 1, linear with a factor >= 1, or llama3)");
        }
        hp.rope_llama3     = scaling == "llama3";  // the factors are in the rope_freqs tensor
        hp.rope_freq_scale = scaling == "linear" ? 1.0f / factor : 1.0f;
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

// The index of the first NaN or Inf among t's values (data: its bytes), or -1. Quantized rows are
// dequantized a row at a time into `values` (their scales may be the non-finite part).
int64_t first_non_finite(const ggml_tensor * t, const uint8_t * data, std::vector<float> & values) {
    const int64_t n_row = t->ne[0], n_rows = ggml_nrows(t);
    const size_t row_bytes = ggml_row_size(t->type, n_row);
    values.resize(n_row);
    for (int64_t r = 0; r < n_rows; ++r) {
        const float * x = reinterpret_cast<const float *>(data + r * row_bytes);
        if (t->type != GGML_TYPE_F32) {
            ggml_get_type_traits(t->type)->to_float(data + r * row_bytes, values.data(), n_row);
            x = values.data();
        }
        for (int64_t i = 0; i < n_row; ++i) {
            if (!std::isfinite(x[i])) {
                return r * n_row + i;
            }
        }
    }
    return -1;
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
    std::vector<float> values;
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
        const int64_t bad = first_non_finite(t, staging.data(), values);
        if (bad >= 0) {
            throw std::invalid_argument("flow GGUF " + path + ": tensor '" + ggml_get_name(t) + "' holds a non-finite " +
                                        "value (NaN or Inf) at element " + std::to_string(bad) +
                                        "; the file is damaged or the checkpoint diverged");
        }
        ggml_backend_tensor_set(t, staging.data(), 0, nbytes);
    }
}

void flas_flow_validate(const std::string & path) {
    ggml_backend_ptr cpu(ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr));
    if (!cpu) {
        throw std::runtime_error("no CPU backend to check the flow on");
    }
    flas_flow flow;
    flas_flow_load(flow, path, cpu.get());
}

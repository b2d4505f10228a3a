// The Python module flas_cpp._core: a thin layer over the C API (include/flas.h), the only path
// into the core. Status codes become exceptions (invalid argument / not found: ValueError,
// runtime: RuntimeError, device lost: flas_cpp.DeviceLostError) with flas_last_error()'s
// message; the GIL is released around every call that may wait.
#include "flas.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

struct device_lost : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct context_length : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// The one map from a flas_status to a Python exception: for failed calls (check) and for
// requests that ended with an error (flas_result.status, through raise_status).
[[noreturn]] static void raise_status(int status, const std::string & msg) {
    switch (status) {
        case FLAS_ERR_INVALID_ARGUMENT:
        case FLAS_ERR_NOT_FOUND:   throw py::value_error(msg);
        case FLAS_ERR_DEVICE_LOST: throw device_lost(msg);
        case FLAS_ERR_CONTEXT_LENGTH: throw context_length(msg);
        default:                   throw std::runtime_error(msg);
    }
}

// Raises the exception of a negative status; returns non-negative values.
template <typename T>
static T check(T status) {
    if (status >= 0) {
        return status;
    }
    raise_status((int) status, flas_last_error());
}

// A C string ends at its first NUL: text with one inside would reach the core cut short.
static const char * c_text(const std::string & s, const char * what) {
    if (s.find('\0') != std::string::npos) {
        throw py::value_error(std::string(what) + " contains a NUL character ('\\0'), where a C string ends; remove it");
    }
    return s.c_str();
}

static const char * finish_name(enum flas_finish f) {
    switch (f) {
        case FLAS_FINISH_EOG:        return "eog";
        case FLAS_FINISH_MAX_TOKENS: return "max_tokens";
        case FLAS_FINISH_CONTEXT:    return "context";
        case FLAS_FINISH_CANCELLED:  return "cancelled";
        case FLAS_FINISH_ERROR:      return "error";
        default:                     return "";
    }
}

// The C parameters from Python's: strings and the split are kept alive by the holder.
struct model_params {
    std::string base, flow, rpc;
    std::vector<float> split;
    struct flas_model_params p = flas_model_default_params();

    model_params(std::string base_, std::string flow_, int n_ctx, int n_batch, int n_seq, int concept_cache,
                 int n_gpu_layers, int n_threads, bool exact, bool verbose, const std::vector<std::string> & rpc_servers,
                 int main_gpu, std::vector<float> tensor_split)
        : base(std::move(base_)), flow(std::move(flow_)), split(std::move(tensor_split)) {
        for (const std::string & e : rpc_servers) {
            rpc += (rpc.empty() ? "" : ",") + std::string(c_text(e, "an RPC server endpoint"));
        }
        p.base_path      = c_text(base, "the base model path");
        p.flow_path      = c_text(flow, "the flow path");
        p.n_ctx          = n_ctx;
        p.n_batch        = n_batch;
        p.n_seq          = n_seq;
        p.concept_cache  = concept_cache;
        p.n_gpu_layers   = n_gpu_layers;
        p.n_threads      = n_threads;
        p.exact          = exact;
        p.verbose        = verbose;
        p.rpc_servers    = rpc.empty() ? nullptr : rpc.c_str();
        p.main_gpu       = main_gpu;
        p.tensor_split   = split.empty() ? nullptr : split.data();
        p.n_tensor_split = (int32_t) split.size();
    }
};

static py::list memory_list(const std::vector<flas_memory_row> & rows) {
    py::list out;
    for (const flas_memory_row & r : rows) {
        py::dict d;
        d["device"] = r.device;
        d["type"] = r.type;
        d["description"] = r.description;
        d["base_weights"] = r.base_weights;
        d["kv_cache"] = r.kv_cache;
        d["base_compute"] = r.base_compute;
        d["flow_weights"] = r.flow_weights;
        d["flow_caches"] = r.flow_caches;
        d["flow_compute"] = r.flow_compute;
        d["total"] = r.total;
        out.append(d);
    }
    return out;
}

// Reads a variable-length result: f(buffer, n_max) returns the length needed (first: the room
// tried first, enough for most results, so that f usually runs once).
template <typename T, typename F>
static std::vector<T> read_all(F && f, size_t first = 256) {
    std::vector<T> out(first);
    for (;;) {
        const auto n = check(f(out.data(), (decltype(f(nullptr, 0))) out.size()));
        if ((size_t) n <= out.size()) {
            out.resize((size_t) n);
            return out;
        }
        out.resize((size_t) n);
    }
}

static py::array_t<float> float_array(std::vector<float> v, py::ssize_t n_cols) {
    const py::ssize_t n_rows = n_cols > 0 ? (py::ssize_t) v.size() / n_cols : (py::ssize_t) v.size();
    py::array_t<float> a = n_cols > 0 ? py::array_t<float>({n_rows, n_cols}) : py::array_t<float>(n_rows);
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

// A Python callable f(rows: ndarray[n, H], pos0) -> ndarray[n, H], called on the decoding thread.
struct steer_hook {
    py::object fn;

    static bool call(const float * in, float * out, int32_t n, int32_t n_embd, int32_t pos0, void * user_data) {
        py::gil_scoped_acquire gil;
        try {
            py::array_t<float> rows({(py::ssize_t) n, (py::ssize_t) n_embd});
            std::copy(in, in + (size_t) n * n_embd, rows.mutable_data());
            auto res = py::array_t<float, py::array::c_style | py::array::forcecast>(
                static_cast<steer_hook *>(user_data)->fn(rows, pos0));
            if (res.ndim() != 2 || res.shape(0) != n || res.shape(1) != n_embd) {
                PyErr_SetString(PyExc_ValueError, "the steer hook returned an array of the wrong shape");
                PyErr_WriteUnraisable(static_cast<steer_hook *>(user_data)->fn.ptr());
                return false;
            }
            std::copy(res.data(), res.data() + (size_t) n * n_embd, out);
            return true;
        } catch (py::error_already_set & e) {
            e.restore();
            PyErr_WriteUnraisable(static_cast<steer_hook *>(user_data)->fn.ptr());  // the traceback, on stderr
            return false;
        }
    }
};

// A loaded model. close() drops the handle; a call in flight on another thread holds its own
// reference, so the model (and the steer hook it calls) is freed when the last one ends.
class model {
    struct loaded {
        flas_model * m = nullptr;
        std::mutex hook_mutex;  // one set_steer_hook at a time: the C call and the swap together
        std::unique_ptr<steer_hook> hook;
        ~loaded() {  // with the GIL held, as every reference is dropped
            {
                py::gil_scoped_release release;  // the scheduler may be waiting for it in a hook
                flas_model_free(m);
            }
            hook.reset();  // no call of it can be under way any more
        }
    };

  public:
    explicit model(const model_params & mp) : handle_(std::make_shared<loaded>()) {
        py::gil_scoped_release release;
        check(flas_model_load(&mp.p, &handle_->m));
    }

    void close() {
        std::shared_ptr<loaded> h;
        {
            std::lock_guard<std::mutex> lk(mutex_);
            h = std::move(handle_);
        }
    }

    std::shared_ptr<flas_model> get() const {
        std::shared_ptr<loaded> l = get_loaded();
        return std::shared_ptr<flas_model>(l, l->m);  // shares the ownership of the holder
    }

    void set_steer_hook(py::object fn) {
        std::shared_ptr<loaded> l = get_loaded();
        std::unique_ptr<steer_hook> next;
        if (!fn.is_none()) {
            next = std::make_unique<steer_hook>(steer_hook{std::move(fn)});
        }
        std::unique_ptr<steer_hook> old;  // destroyed with the GIL held, after the C call
        int status;
        {
            py::gil_scoped_release release;  // the decode may be in a hook waiting for the GIL
            std::lock_guard<std::mutex> lk(l->hook_mutex);
            status = flas_set_steer_hook(l->m, next ? &steer_hook::call : nullptr, next.get());
            if (status == FLAS_OK) {
                old = std::move(l->hook);  // no longer called
                l->hook = std::move(next);
            }
        }
        check(status);
    }

  private:
    std::shared_ptr<loaded> get_loaded() const {
        std::lock_guard<std::mutex> lk(mutex_);
        if (!handle_) {
            throw std::runtime_error("this FlasModel is closed; load a new one");
        }
        return handle_;
    }

    mutable std::mutex mutex_;
    std::shared_ptr<loaded> handle_;
};

static py::dict flow_info_dict(const flas_flow_info & fi) {
    py::dict d;
    d["base_model_id"] = fi.base_model_id;
    d["prompt_format"] = fi.prompt_format;
    d["family"] = fi.family;
    d["activation"] = fi.activation;
    d["format_version"] = fi.format_version;
    d["layer"] = fi.layer;
    d["num_blocks"] = fi.n_block;
    d["n_steps"] = fi.n_steps;
    d["t_min"] = fi.t_min;
    d["t_max"] = fi.t_max;
    d["concept_max_len"] = fi.concept_max_len;
    d["has_cross_attn"] = fi.has_cross_attn;
    d["has_self_attn"] = fi.has_self_attn;
    d["has_mlp"] = fi.has_mlp;
    d["n_embd"] = fi.n_embd;
    d["n_head"] = fi.n_head;
    d["n_head_kv"] = fi.n_head_kv;
    d["head_dim"] = fi.head_dim;
    d["softcap"] = fi.softcap;
    d["rope_freq_base"] = fi.rope_freq_base;
    d["rope_freq_scale"] = fi.rope_freq_scale;
    return d;
}

// One request of FlasModel (generation.py's _Settings), as the C parameters (their defaults).
struct request {
    std::vector<int32_t> prompt;
    std::string concept;
    struct flas_request_params p = flas_request_default_params();  // its other fields

    struct flas_request_params params() const {
        struct flas_request_params out = p;
        out.prompt   = prompt.data();
        out.n_prompt = (int32_t) prompt.size();
        out.concept  = c_text(concept, "the concept");
        return out;
    }
};

// fn() inside flas_exclusive; a Python exception is raised again after it.
static void run_exclusive(flas_model * m, py::function fn) {
    struct call {
        py::function fn;
        std::exception_ptr error;  // what fn raised
    } c{std::move(fn), nullptr};
    auto trampoline = [](flas_model *, void * user_data) {
        call & c = *static_cast<call *>(user_data);
        py::gil_scoped_acquire gil;
        try {
            c.fn();
        } catch (...) {
            c.error = std::current_exception();
        }
    };
    int status;
    {
        py::gil_scoped_release release;  // the scheduler may be in a hook that needs the GIL
        status = flas_exclusive(m, trampoline, &c);
    }
    if (c.error) {
        std::rethrow_exception(c.error);
    }
    check(status);
}

// the keyword defaults are flas_model_default_params()'s (`defaults` in the module's init)
#define MODEL_ARGS                                                                                               \
    py::arg("base"), py::arg("flow"), py::arg("n_ctx") = defaults.n_ctx, py::arg("n_batch") = defaults.n_batch, \
        py::arg("n_seq") = defaults.n_seq, py::arg("concept_cache") = defaults.concept_cache,                   \
        py::arg("n_gpu_layers") = defaults.n_gpu_layers, py::arg("n_threads") = defaults.n_threads,             \
        py::arg("exact") = defaults.exact, py::arg("verbose") = defaults.verbose,                               \
        py::arg("rpc_servers") = std::vector<std::string>(), py::arg("main_gpu") = defaults.main_gpu,           \
        py::arg("tensor_split") = std::vector<float>()

PYBIND11_MODULE(_core, m) {
    m.doc() = "flas-cpp: Python over the C API (flas.h)";
    const struct flas_model_params defaults = flas_model_default_params();

    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) {
                std::rethrow_exception(p);
            }
        } catch (const device_lost & e) {
            py::object cls = py::module_::import("flas_cpp.generation").attr("DeviceLostError");
            PyErr_SetString(cls.ptr(), e.what());
        } catch (const context_length & e) {
            py::object cls = py::module_::import("flas_cpp.generation").attr("ContextLengthError");
            PyErr_SetString(cls.ptr(), e.what());
        }
    });
    m.attr("MAX_STEPS") = FLAS_MAX_STEPS;
    m.attr("ERR_CONTEXT_LENGTH") = (int) FLAS_ERR_CONTEXT_LENGTH;
    m.def("check_steering", [](const std::string & concept, float flowtime, int32_t n_steps) {
        check(flas_check_steering(c_text(concept, "the concept"), flowtime, n_steps));
    }, py::arg("concept"), py::arg("flowtime"), py::arg("n_steps"),
          "ValueError with the core's message unless flas_submit would accept this steering.");
    m.def("raise_status", [](int status, const std::string & message) { raise_status(status, message); },
          py::arg("status"), py::arg("message"),
          "Raises the exception of a flas_status (a request's result.status): DeviceLostError, ContextLengthError, "
          "ValueError or RuntimeError.");

    m.def("model_default_params", [] {
        const struct flas_model_params p = flas_model_default_params();
        py::dict d;
        d["n_ctx"] = p.n_ctx;
        d["n_batch"] = p.n_batch;
        d["n_seq"] = p.n_seq;
        d["concept_cache"] = p.concept_cache;
        d["n_gpu_layers"] = p.n_gpu_layers;
        d["main_gpu"] = p.main_gpu;
        d["n_threads"] = p.n_threads;
        d["exact"] = p.exact;
        d["verbose"] = p.verbose;
        return d;
    }, "flas_model_default_params(): the defaults every interface shares.");
    m.def("default_threads", &flas_default_threads, "The threads n_threads = 0 selects: one per physical core.");

    m.def("build_info", [] {
        const struct flas_build_info * bi = flas_build_info();
        py::list devices, backends;
        for (int32_t i = 0; i < bi->n_devices; ++i) {
            const flas_device_info & d = bi->devices[i];
            py::dict dev;
            dev["name"] = d.name;
            dev["description"] = d.description;
            dev["type"] = d.type;
            dev["memory_free"] = d.memory_free;
            dev["memory_total"] = d.memory_total;
            devices.append(dev);
        }
        for (const std::string b : py::str(bi->backends).attr("split")(",").cast<std::vector<std::string>>()) {
            backends.append(b);
        }
        py::dict out;
        out["ggml_version"] = bi->ggml_version;
        out["ggml_commit"] = bi->ggml_commit;
        out["system_info"] = bi->system_info;
        out["backends"] = backends;
        out["devices"] = devices;
        out["libllama"] = bi->libllama;
        out["libggml"] = bi->libggml;
        out["libggml_base"] = bi->libggml_base;
        return out;
    }, "ggml/llama.cpp version, registered backends and devices, and the paths of the loaded libraries.");

    m.def("validate_flow", [](const std::string & path) {
        py::gil_scoped_release release;
        check(flas_flow_validate(c_text(path, "the flow path")));
    }, py::arg("path"), "flas_flow_validate: every check of loading a flow GGUF, without a base model (ValueError).");
    m.def("quantize_rows", [](py::array_t<float, py::array::c_style | py::array::forcecast> rows, int type) {
        if (rows.ndim() != 2) {
            throw py::value_error("quantize_rows: rows must be a 2-D float32 array [n_rows, n_per_row]");
        }
        const int64_t n_rows = rows.shape(0), n_per_row = rows.shape(1);
        // the largest row size of any ggml type: f32 at 4 bytes a value
        std::vector<uint8_t> buf((size_t) (n_rows * n_per_row * 4));
        int64_t n;
        {
            py::gil_scoped_release release;
            n = flas_quantize_rows(type, rows.data(), buf.data(), n_rows, n_per_row);
        }
        check(n);
        py::array_t<uint8_t> out({(py::ssize_t) n_rows, (py::ssize_t) (n_rows > 0 ? n / n_rows : 0)});
        std::copy(buf.begin(), buf.begin() + n, out.mutable_data());
        return out;
    }, py::arg("rows"), py::arg("type"), "ggml's quantizer: float32 rows -> the bytes of ggml type `type`, [n_rows, row bytes].");
    m.def("quantize", [](const std::string & in, const std::string & out, int ftype, int n_threads) {
        py::gil_scoped_release release;
        check(flas_quantize(c_text(in, "the input path"), c_text(out, "the output path"), ftype, n_threads));
    }, py::arg("path_in"), py::arg("path_out"), py::arg("ftype"), py::arg("n_threads") = 0,
       "llama.cpp's quantizer on a GGUF file; ftype is a llama_ftype.");
    m.def("rpc_serve", [](const std::string & endpoint, int n_threads, const std::string & cache_dir) {
        py::gil_scoped_release release;
        check(flas_rpc_serve(c_text(endpoint, "the endpoint"), n_threads,
                             cache_dir.empty() ? nullptr : c_text(cache_dir, "the cache directory")));
    }, py::arg("endpoint"), py::arg("n_threads") = 0, py::arg("cache_dir") = "",
       "Serve this machine's backend to ggml RPC clients at endpoint (host:port); returns only on error.");
    m.def("endpoint_reachable", [](const std::string & endpoint, int timeout_ms) {
        py::gil_scoped_release release;
        return flas_endpoint_reachable(c_text(endpoint, "the endpoint"), timeout_ms);
    }, py::arg("endpoint"), py::arg("timeout_ms") = 1000);
    m.def("rpc_device_handles", [](const std::vector<std::string> & endpoints) {
        std::vector<uintptr_t> out;
        for (const std::string & e : endpoints) {
            void * dev = flas_rpc_device(c_text(e, "an RPC server endpoint"));
            if (dev == nullptr) {
                check(FLAS_ERR_INVALID_ARGUMENT);
            }
            out.push_back(reinterpret_cast<uintptr_t>(dev));
        }
        return out;
    }, py::arg("endpoints"), "ggml_backend_dev_t pointers of RPC servers (for llama_model_params.devices).");

    m.def("estimate_memory", [](const std::string & base, const std::string & flow, int n_ctx, int n_batch, int n_seq,
                                int concept_cache, int n_gpu_layers, int n_threads, bool exact, bool verbose,
                                const std::vector<std::string> & rpc_servers, int main_gpu,
                                const std::vector<float> & tensor_split, int n_steps) {
        const model_params mp(base, flow, n_ctx, n_batch, n_seq, concept_cache, n_gpu_layers, n_threads, exact, verbose,
                              rpc_servers, main_gpu, tensor_split);
        std::vector<flas_memory_row> rows;
        {
            py::gil_scoped_release release;
            rows = read_all<flas_memory_row>([&](flas_memory_row * r, int32_t n) {
                return flas_estimate_memory(&mp.p, n_steps, r, n);
            });
        }
        return memory_list(rows);
    }, MODEL_ARGS, py::arg("n_steps") = 1,
       "Bytes per device a model of these parameters would hold (simulated buffers; flow_compute not estimated).");

    py::class_<request>(m, "Request")
        .def(py::init<>())
        .def_readwrite("prompt", &request::prompt)
        .def_readwrite("concept", &request::concept)
#define REQUEST_FIELD(name) .def_property(#name, [](const request & r) { return r.p.name; }, \
                                               [](request & r, decltype(flas_request_params::name) v) { r.p.name = v; })
        REQUEST_FIELD(flowtime) REQUEST_FIELD(n_steps) REQUEST_FIELD(max_tokens) REQUEST_FIELD(temperature)
        REQUEST_FIELD(top_k) REQUEST_FIELD(top_p) REQUEST_FIELD(min_p) REQUEST_FIELD(repeat_penalty)
        REQUEST_FIELD(repeat_last_n) REQUEST_FIELD(seed) REQUEST_FIELD(trace);
#undef REQUEST_FIELD

    py::class_<model>(m, "Model")
        .def(py::init([](const std::string & base, const std::string & flow, int n_ctx, int n_batch, int n_seq,
                         int concept_cache, int n_gpu_layers, int n_threads, bool exact, bool verbose,
                         const std::vector<std::string> & rpc_servers, int main_gpu, const std::vector<float> & tensor_split) {
                 return std::make_unique<model>(model_params(base, flow, n_ctx, n_batch, n_seq, concept_cache,
                                                             n_gpu_layers, n_threads, exact, verbose, rpc_servers,
                                                             main_gpu, tensor_split));
             }), MODEL_ARGS, "flas_model_load: the base model, the flow, and the scheduler's thread.")
        .def("close", &model::close, "flas_model_free (once no call is under way on another thread).")
        .def_property_readonly("n_vocab", [](const model & s) { return flas_model_n_vocab(s.get().get()); })
        .def_property_readonly("n_embd", [](const model & s) { return flas_model_n_embd(s.get().get()); })
        .def_property_readonly("n_ctx", [](const model & s) { return flas_model_n_ctx(s.get().get()); })
        .def_property_readonly("n_ctx_seq", [](const model & s) { return flas_model_n_ctx_seq(s.get().get()); })
        .def_property_readonly("n_seq", [](const model & s) { return flas_model_n_seq(s.get().get()); })
        .def_property_readonly("flow_device", [](const model & s) { return std::string(flas_model_flow_device(s.get().get())); })
        .def_property_readonly("flow_info", [](const model & s) { return flow_info_dict(*flas_model_flow_info(s.get().get())); })
        .def("memory", [](const model & s) {
            auto h = s.get();
            return memory_list(read_all<flas_memory_row>([&](flas_memory_row * r, int32_t n) {
                return flas_model_memory(h.get(), r, n);
            }));
        })
        .def("reserve", [](const model & s, int n_steps) {
            auto h = s.get();
            py::gil_scoped_release release;
            check(flas_model_reserve(h.get(), n_steps));
        }, py::arg("n_steps"))
        .def("prompt_tokens", [](const model & s, const std::string & prompt) {
            auto h = s.get();
            const char * prompt_text = c_text(prompt, "the prompt");
            py::gil_scoped_release release;  // tokenizing a long text takes a while
            return read_all<int32_t>([&](int32_t * t, int32_t n) { return flas_prompt_tokens(h.get(), prompt_text, t, n); },
                                     (size_t) flas_model_n_ctx_seq(h.get()));
        }, py::arg("prompt"))
        .def("chat_tokens", [](const model & s, const std::vector<std::pair<std::string, std::string>> & turns,
                               bool content_special) {
            auto h = s.get();
            std::vector<flas_chat_message> msgs;
            for (const auto & t : turns) {
                msgs.push_back({c_text(t.first, "a message's role"), c_text(t.second, "a message's content")});
            }
            py::gil_scoped_release release;
            return read_all<int32_t>([&](int32_t * t, int32_t n) {
                return flas_chat_tokens(h.get(), msgs.data(), (int32_t) msgs.size(), content_special, t, n);
            }, (size_t) flas_model_n_ctx_seq(h.get()));
        }, py::arg("messages"), py::arg("content_special"))
        .def("text_tokens", [](const model & s, const std::string & text, bool parse_special) {
            auto h = s.get();
            const char * text_c = c_text(text, "the prompt");
            py::gil_scoped_release release;
            return read_all<int32_t>([&](int32_t * t, int32_t n) {
                return flas_text_tokens(h.get(), text_c, parse_special, t, n);
            }, (size_t) flas_model_n_ctx_seq(h.get()));
        }, py::arg("text"), py::arg("parse_special"))
        .def("tokenize", [](const model & s, const std::string & text, bool add_special, bool parse_special) {
            auto h = s.get();
            const char * text_c = c_text(text, "the text");
            py::gil_scoped_release release;
            return read_all<int32_t>([&](int32_t * t, int32_t n) {
                return flas_tokenize(h.get(), text_c, add_special, parse_special, t, n);
            }, text.size() + 2);  // a token covers at least one byte; BOS and EOS
        }, py::arg("text"), py::arg("add_special"), py::arg("parse_special"))
        .def("chat_template", [](const model & s, const std::vector<std::pair<std::string, std::string>> & turns) {
            auto h = s.get();
            std::vector<flas_chat_message> msgs;
            for (const auto & t : turns) {
                msgs.push_back({c_text(t.first, "a message's role"), c_text(t.second, "a message's content")});
            }
            py::gil_scoped_release release;
            std::vector<char> buf(1024);
            int32_t n = check(flas_chat_template(h.get(), msgs.data(), (int32_t) msgs.size(), buf.data(), (int32_t) buf.size()));
            if (n >= (int32_t) buf.size()) {
                buf.resize((size_t) n + 1);
                n = check(flas_chat_template(h.get(), msgs.data(), (int32_t) msgs.size(), buf.data(), (int32_t) buf.size()));
            }
            return std::string(buf.data(), (size_t) n);
        }, py::arg("messages"))
        .def("token_to_piece", [](const model & s, int32_t token) {
            auto h = s.get();
            const std::vector<char> piece = read_all<char>([&](char * buf, int32_t n) {
                return flas_token_to_piece(h.get(), token, buf, n);
            });
            return py::bytes(piece.data(), piece.size());
        }, py::arg("token"))
        .def("encode_concept", [](const model & s, const std::string & concept) {
            auto h = s.get();
            const char * concept_text = c_text(concept, "the concept");
            py::gil_scoped_release release;
            return check(flas_encode_concept(h.get(), concept_text));
        }, py::arg("concept"))
        .def("submit_many", [](const model & s, const std::vector<request> & reqs) {
            auto h = s.get();
            std::vector<struct flas_request_params> params;
            for (const request & r : reqs) {
                params.push_back(r.params());
            }
            std::vector<uint64_t> ids(reqs.size());
            check(flas_submit_many(h.get(), params.data(), (int32_t) params.size(), ids.data()));
            return ids;
        }, py::arg("requests"))
        .def("poll", [](const model & s, uint64_t id, int timeout_ms) {
            auto h = s.get();
            std::vector<int32_t> tokens(256);
            struct flas_result res{};
            int32_t n;
            std::string error;
            {
                py::gil_scoped_release release;
                n = flas_poll(h.get(), id, timeout_ms, tokens.data(), (int32_t) tokens.size(), &res);
                error = flas_last_error();
            }
            tokens.resize((size_t) check(n));
            py::dict d;
            d["tokens"] = tokens;
            d["done"] = res.finish != FLAS_FINISH_NONE;
            if (res.finish != FLAS_FINISH_NONE) {
                d["finish"] = finish_name(res.finish);
                d["error"] = res.finish == FLAS_FINISH_ERROR ? error : std::string();
                d["status"] = res.status;
                d["n_prompt"] = res.n_prompt;
                d["n_cached"] = res.n_cached;
                d["prompt_seconds"] = res.prompt_seconds;
                d["seconds"] = res.seconds;
            }
            return d;
        }, py::arg("id"), py::arg("timeout_ms"), "flas_poll: up to 256 new tokens; once done, how it ended.")
        .def("wait_any", [](const model & s, const std::vector<uint64_t> & ids, int timeout_ms) {
            auto h = s.get();
            uint64_t ready = 0;
            py::gil_scoped_release release;
            check(flas_wait_any(h.get(), ids.data(), (int32_t) ids.size(), timeout_ms, &ready));
            return ready;
        }, py::arg("ids"), py::arg("timeout_ms"))
        .def("trace", [](const model & s, uint64_t id) {
            auto h = s.get();
            auto get = [&](enum flas_trace_kind kind) {
                return read_all<float>([&](float * out, int64_t n) { return flas_trace(h.get(), id, kind, out, n); });
            };
            const py::ssize_t H = flas_model_n_embd(h.get());
            py::dict d;
            d["unsteered"] = float_array(get(FLAS_TRACE_UNSTEERED), H);
            d["steered"] = float_array(get(FLAS_TRACE_STEERED), H);
            d["logits"] = float_array(get(FLAS_TRACE_LOGITS), 0);
            return d;
        }, py::arg("id"), "A finished traced request's rows (unsteered, steered: [n, H]) and prompt logits.")
        .def("cancel", [](const model & s, uint64_t id) { check(flas_cancel(s.get().get(), id)); }, py::arg("id"))
        .def("release", [](const model & s, uint64_t id) { check(flas_release(s.get().get(), id)); }, py::arg("id"))
        .def("stats", [](const model & s) {
            struct flas_stats st{};
            check(flas_model_stats(s.get().get(), &st));
            py::dict d;
            d["active"] = st.n_active;
            d["queued"] = st.n_queued;
            d["tokens_decoded"] = st.n_decoded;
            d["decode_calls"] = st.n_decode_calls;
            d["concepts_encoded"] = st.concepts_encoded;
            d["concept_hits"] = st.concept_hits;
            d["concepts_cached"] = st.concepts_cached;
            return d;
        })
        .def("set_steer_hook", &model::set_steer_hook, py::arg("fn"),
             "fn(rows [n, H] float32, pos0) -> rows replaces the flow; None restores it.")
        .def("exclusive", [](const model & s, py::function fn) { run_exclusive(s.get().get(), std::move(fn)); },
             py::arg("fn"), "flas_exclusive: fn() between two decode steps; the seq_* methods work inside it.")
        .def("seq_set_steering", [](const model & s, int seq, const std::string & concept, float flowtime, int n_steps) {
            auto h = s.get();
            const char * concept_text = c_text(concept, "the concept");
            py::gil_scoped_release release;
            return check(flas_seq_set_steering(h.get(), seq, concept_text, flowtime, n_steps));
        }, py::arg("seq"), py::arg("concept"), py::arg("flowtime"), py::arg("n_steps"))
        .def("seq_decode", [](const model & s, const std::vector<std::pair<int32_t, std::vector<int32_t>>> & batch) {
            auto h = s.get();
            std::vector<int32_t> seqs, counts;
            std::vector<const int32_t *> tokens;
            for (const auto & e : batch) {
                seqs.push_back(e.first);
                tokens.push_back(e.second.data());
                counts.push_back((int32_t) e.second.size());
            }
            py::gil_scoped_release release;
            check(flas_seq_decode(h.get(), (int32_t) batch.size(), seqs.data(), tokens.data(), counts.data()));
        }, py::arg("batch"), "[(seq, [tokens...]), ...] in one llama_decode.")
        .def("seq_reset", [](const model & s, int seq) { check(flas_seq_reset(s.get().get(), seq)); }, py::arg("seq"))
        .def("seq_rewind", [](const model & s, int seq, int n_keep) { check(flas_seq_rewind(s.get().get(), seq, n_keep)); },
             py::arg("seq"), py::arg("n_keep"))
        .def("seq_set_trace", [](const model & s, int seq, bool on) { check(flas_seq_set_trace(s.get().get(), seq, on)); },
             py::arg("seq"), py::arg("on"))
        .def("seq_get", [](const model & s, int seq, const std::string & what) {
            auto h = s.get();
            const enum flas_trace_kind kind = what == "logits" ? FLAS_TRACE_LOGITS
                                            : what == "steered" ? FLAS_TRACE_STEERED
                                            : what == "unsteered" ? FLAS_TRACE_UNSTEERED
                                            : throw py::value_error("seq_get: what is logits, steered or unsteered");
            std::vector<float> v = read_all<float>([&](float * out, int64_t n) {
                return flas_seq_get(h.get(), seq, kind, out, n);
            });
            return float_array(std::move(v), kind == FLAS_TRACE_LOGITS ? 0 : flas_model_n_embd(h.get()));
        }, py::arg("seq"), py::arg("what"), "Its last-token logits, or its traced steered/unsteered rows [n, H].");
}

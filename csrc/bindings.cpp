// The Python module flas_cpp._core: the only file that includes pybind11. It copies arguments
// into the C++ types and releases the GIL around long calls; std::invalid_argument becomes
// ValueError and std::runtime_error RuntimeError (pybind11's defaults).
#include "flas-info.h"
#include "flas-engine.h"
#include "flas-runtime.h"

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

static py::dict build_info_dict() {
    const flas_build_info bi = flas_build_info_get();
    py::list devices;
    for (const auto & d : bi.devices) {
        py::dict dev;
        dev["name"] = d.name;
        dev["description"] = d.description;
        dev["type"] = d.type;
        dev["memory_free"] = d.memory_free;
        dev["memory_total"] = d.memory_total;
        devices.append(dev);
    }
    py::dict out;
    out["ggml_version"] = bi.ggml_version;
    out["ggml_commit"] = bi.ggml_commit;
    out["system_info"] = bi.system_info;
    out["backends"] = bi.backends;
    out["devices"] = devices;
    out["libllama"] = bi.libllama_path;
    out["libggml"] = bi.libggml_path;
    out["libggml_base"] = bi.libggml_base_path;
    return out;
}

static py::dict flow_hparams_dict(const flas_flow_hparams & hp) {
    py::dict d;
    d["base_model_id"] = hp.base_model_id;
    d["prompt_format"] = hp.prompt_format;
    d["family"] = hp.base_arch;
    d["format_version"] = hp.format_version;
    d["softcap"] = hp.softcap;
    d["activation"] = hp.silu ? "silu" : "gelu_tanh";
    d["rope_freq_base"] = hp.rope_freq_base;
    d["rope_freq_scale"] = hp.rope_freq_scale;
    d["layer"] = hp.layer;
    d["num_blocks"] = hp.n_block;
    d["n_steps"] = hp.n_steps;
    d["t_min"] = hp.t_min;
    d["t_max"] = hp.t_max;
    d["concept_max_len"] = hp.concept_max_len;
    d["has_cross_attn"] = hp.has_cross_attn;
    d["has_self_attn"] = hp.has_self_attn;
    d["has_mlp"] = hp.has_mlp;
    d["n_embd"] = hp.n_embd;
    d["n_head"] = hp.n_head;
    d["n_head_kv"] = hp.n_head_kv;
    d["head_dim"] = hp.head_dim;
    return d;
}

static py::array_t<float> rows_array(const std::vector<float> & v, int n_embd) {
    py::array_t<float> a({(py::ssize_t) (v.size() / n_embd), (py::ssize_t) n_embd});
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

// A Python callable f(rows: ndarray[n, H], pos0: int) -> ndarray[n, H] as a steering hook.
// Python exceptions are turned into std::runtime_error while the GIL is held.
static flas_steer_hook python_hook(py::object fn, int n_embd) {
    if (fn.is_none()) {
        return {};
    }
    return [fn, n_embd](const float * in, float * out, int n, int pos0) {
        py::gil_scoped_acquire gil;
        try {
            py::array_t<float> rows({(py::ssize_t) n, (py::ssize_t) n_embd});
            std::copy(in, in + (size_t) n * n_embd, rows.mutable_data());
            auto res = py::array_t<float, py::array::c_style | py::array::forcecast>(fn(rows, pos0));
            if (res.ndim() != 2 || res.shape(0) != n || res.shape(1) != n_embd) {
                throw std::runtime_error("steer hook returned an array of the wrong shape");
            }
            std::copy(res.data(), res.data() + (size_t) n * n_embd, out);
        } catch (py::error_already_set & e) {
            throw std::runtime_error(std::string("steer hook raised: ") + e.what());
        }
    };
}

static py::list memory_list(const std::vector<flas_device_memory> & rows) {
    py::list out;
    for (const flas_device_memory & r : rows) {
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
        d["total"] = r.total();
        out.append(d);
    }
    return out;
}

static flas_runtime_params runtime_params(const std::string & base, const std::string & flow, int n_ctx, int n_batch,
                                          int n_seq, int concept_cache, int n_gpu_layers, int n_threads, bool exact,
                                          bool verbose, const std::vector<std::string> & rpc_servers, int main_gpu,
                                          const std::vector<float> & tensor_split) {
    flas_runtime_params p;
    p.base_path = base;
    p.flow_path = flow;
    p.n_ctx = n_ctx;
    p.n_batch = n_batch;
    p.n_seq = n_seq;
    p.concept_cache = concept_cache;
    p.n_gpu_layers = n_gpu_layers;
    p.n_threads = n_threads;
    p.exact = exact;
    p.verbose = verbose;
    p.rpc_servers = rpc_servers;
    p.main_gpu = main_gpu;
    p.tensor_split = tensor_split;
    return p;
}

#define RUNTIME_ARGS                                                                                              \
    py::arg("base"), py::arg("flow"), py::arg("n_ctx") = 4096, py::arg("n_batch") = 512, py::arg("n_seq") = 1,   \
        py::arg("concept_cache") = 16, py::arg("n_gpu_layers") = 0, py::arg("n_threads") = 0,                    \
        py::arg("exact") = false, py::arg("verbose") = false, py::arg("rpc_servers") = std::vector<std::string>(),  \
        py::arg("main_gpu") = 0, py::arg("tensor_split") = std::vector<float>()

PYBIND11_MODULE(_core, m) {
    m.doc() = "flas-cpp native core (llama.cpp + ggml)";
    llama_backend_init();  // idempotent; llama-cpp-python does the same on import

    // flas_device_lost -> flas_cpp.DeviceLostError (a RuntimeError)
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) {
                std::rethrow_exception(p);
            }
        } catch (const flas_device_lost & e) {
            py::object cls = py::module_::import("flas_cpp.generation").attr("DeviceLostError");
            PyErr_SetString(cls.ptr(), e.what());
        }
    });
    m.attr("MAX_STEPS") = FLAS_MAX_STEPS;  // flas.h: one definition for C, C++ and Python
    m.def("build_info", &build_info_dict,
          "ggml/llama.cpp version, registered backends and devices, and the paths of the loaded libraries.");
    m.def("model_quantize", &flas_model_quantize, py::arg("path_in"), py::arg("path_out"), py::arg("ftype"),
          py::arg("nthread") = 0, py::call_guard<py::gil_scoped_release>(),
          "Quantize a GGUF file with llama.cpp's quantizer (llama_model_quantize); ftype is a llama_ftype.");

    m.def("rpc_serve", &flas_rpc_serve, py::arg("endpoint"), py::arg("n_threads"), py::arg("cache_dir") = "",
          py::call_guard<py::gil_scoped_release>(),
          "Serve this machine's backend to ggml RPC clients at endpoint (host:port); returns only on error.");
    m.def("rpc_device_handles", [](const std::vector<std::string> & endpoints) {
              std::vector<uintptr_t> out;
              for (ggml_backend_dev_t d : flas_rpc_devices(endpoints)) {
                  out.push_back(reinterpret_cast<uintptr_t>(d));
              }
              return out;
          }, py::arg("endpoints"),
          "ggml_backend_dev_t pointers of the RPC servers' devices (for llama_model_params.devices in benchmarks).");
    m.def("endpoint_reachable", &flas_endpoint_reachable, py::arg("endpoint"), py::arg("timeout_ms") = 1000,
          py::call_guard<py::gil_scoped_release>());

    m.def("estimate_memory", [](const std::string & base, const std::string & flow, int n_ctx, int n_batch, int n_seq,
                                int concept_cache, int n_gpu_layers, int n_threads, bool exact, bool verbose,
                                const std::vector<std::string> & rpc_servers, int main_gpu,
                                const std::vector<float> & tensor_split, int n_steps) {
              const flas_runtime_params p = runtime_params(base, flow, n_ctx, n_batch, n_seq, concept_cache, n_gpu_layers,
                                                           n_threads, exact, verbose, rpc_servers, main_gpu, tensor_split);
              std::vector<flas_device_memory> rows;
              {
                  py::gil_scoped_release release;
                  rows = flas_estimate_memory(p, n_steps);
              }
              return memory_list(rows);
          }, RUNTIME_ARGS, py::arg("n_steps") = 1,
          "Bytes per device a model of these parameters would hold, from simulated buffers (nothing is allocated; "
          "flow_compute is not estimated).");

    using R = flas_runtime;
    py::class_<R>(m, "Runtime")
        .def(py::init([](const std::string & base, const std::string & flow, int n_ctx, int n_batch, int n_seq,
                         int concept_cache, int n_gpu_layers, int n_threads, bool exact, bool verbose,
                         const std::vector<std::string> & rpc_servers, int main_gpu, const std::vector<float> & tensor_split) {
                 const flas_runtime_params p = runtime_params(base, flow, n_ctx, n_batch, n_seq, concept_cache,
                                                              n_gpu_layers, n_threads, exact, verbose, rpc_servers,
                                                              main_gpu, tensor_split);
                 py::gil_scoped_release release;
                 return new flas_runtime(p);
             }),
             RUNTIME_ARGS)
        .def("tokenize", &R::tokenize, py::arg("text"), py::arg("add_special"), py::arg("parse_special"))
        .def("token_to_piece", [](const R & r, llama_token t) { return py::bytes(r.token_to_piece(t)); })
        .def("is_eog", &R::is_eog)
        .def("apply_chat_template", &R::apply_chat_template, py::arg("messages"))
        .def("set_steering", &R::set_steering, py::arg("seq"), py::arg("concept"), py::arg("flowtime"),
             py::arg("n_steps"), py::call_guard<py::gil_scoped_release>())
        .def("prepare_concept", &R::prepare_concept, py::arg("concept"), py::call_guard<py::gil_scoped_release>())
        .def("set_trace", &R::set_trace, py::arg("seq"), py::arg("on"))
        .def("set_steer_hook", [](R & r, py::object fn) { r.set_steer_hook(python_hook(fn, r.n_embd())); })
        .def("reset", &R::reset, py::arg("seq"))
        .def("rewind", &R::rewind, py::arg("seq"), py::arg("n_keep"))
        .def("decode", [](R & r, const std::vector<std::pair<int, std::vector<llama_token>>> & entries) {
                 std::vector<flas_seq_tokens> batch;
                 for (const auto & e : entries) {
                     batch.push_back({e.first, e.second});
                 }
                 py::gil_scoped_release release;
                 r.decode(batch);
             }, py::arg("batch"), "Append tokens to sequences in one llama_decode: [(seq, [tokens...]), ...].")
        .def("logits", [](const R & r, int seq) { return py::array_t<float>(py::cast(r.logits(seq))); }, py::arg("seq"))
        .def("sampler_init", &R::sampler_init, py::arg("seq"), py::arg("temperature"), py::arg("top_k"),
             py::arg("top_p"), py::arg("seed"))
        .def("sample", &R::sample, py::arg("seq"), py::call_guard<py::gil_scoped_release>())
        .def("n_past", &R::n_past, py::arg("seq"))
        .def("concept_tokens", &R::concept_tokens, py::arg("seq"))
        .def("trace_unsteered", [](const R & r, int seq) { return rows_array(r.trace_unsteered(seq), r.n_embd()); },
             py::arg("seq"))
        .def("trace_steered", [](const R & r, int seq) { return rows_array(r.trace_steered(seq), r.n_embd()); },
             py::arg("seq"))
        .def("stats", [](const R & r) {
                 const flas_stats st = r.stats();
                 py::dict d;
                 d["concepts_encoded"] = st.concepts_encoded;
                 d["concept_hits"] = st.concept_hits;
                 d["concepts_cached"] = st.concepts_cached;
                 return d;
             })
        .def_property_readonly("n_vocab", &R::n_vocab)
        .def_property_readonly("n_embd", &R::n_embd)
        .def_property_readonly("n_ctx", &R::n_ctx)
        .def_property_readonly("n_ctx_seq", &R::n_ctx_seq)
        .def_property_readonly("n_seq", &R::n_seq)
        .def_property_readonly("flow_backend", &R::flow_backend)
        .def_property_readonly("flow_device", &R::flow_device)
        .def("reserve_steering", &R::reserve_steering, py::arg("n_steps"), py::call_guard<py::gil_scoped_release>())
        .def("memory", [](const R & r) { return memory_list(r.memory()); },
             "Bytes per device: base_weights, kv_cache, base_compute, flow_weights, flow_caches, flow_compute.")
        .def_property_readonly("flow_hparams", [](const R & r) { return flow_hparams_dict(r.flow_hparams()); });

    py::class_<flas_request>(m, "EngineRequest")
        .def(py::init<>())
        .def_readwrite("prompt", &flas_request::prompt)
        .def_readwrite("concept", &flas_request::concept)
        .def_readwrite("flowtime", &flas_request::flowtime)
        .def_readwrite("n_steps", &flas_request::n_steps)
        .def_readwrite("max_tokens", &flas_request::max_tokens)
        .def_readwrite("temperature", &flas_request::temperature)
        .def_readwrite("top_k", &flas_request::top_k)
        .def_readwrite("top_p", &flas_request::top_p)
        .def_readwrite("seed", &flas_request::seed)
        .def_readwrite("trace", &flas_request::trace);

    using E = flas_engine;
    py::class_<E>(m, "Engine")
        .def(py::init<R &>(), py::arg("runtime"), py::keep_alive<1, 2>())
        .def_static("load", [](const std::string & base, const std::string & flow, int n_ctx, int n_batch, int n_seq,
                               int concept_cache, int n_gpu_layers, int n_threads, bool exact, bool verbose,
                         const std::vector<std::string> & rpc_servers, int main_gpu, const std::vector<float> & tensor_split) {
                 const flas_runtime_params p = runtime_params(base, flow, n_ctx, n_batch, n_seq, concept_cache,
                                                              n_gpu_layers, n_threads, exact, verbose, rpc_servers,
                                                              main_gpu, tensor_split);
                 py::gil_scoped_release release;
                 return std::make_unique<E>(p);
             }, RUNTIME_ARGS, "An engine that loads its own runtime on its worker thread (as FlasModel does).")
        .def_property_readonly("lost", &E::lost, "Empty, or why the engine stopped for good (an RPC server lost).")
        .def_property_readonly("runtime", [](E & e) -> R & { return e.runtime(); },
                               py::return_value_policy::reference_internal)
        .def("submit", &E::submit, py::arg("request"))
        .def("submit_many", &E::submit_many, py::arg("requests"))
        .def("wait", [](E & e, uint64_t id, int timeout_ms) {
                 flas_update u;
                 {
                     py::gil_scoped_release release;
                     u = e.wait(id, timeout_ms);
                 }
                 py::dict d;
                 d["tokens"] = u.tokens;
                 d["done"] = u.done;
                 if (u.done) {
                     d["finish"] = u.finish;
                     d["error"] = u.error;
                     d["n_prompt"] = u.n_prompt;
                     d["n_cached"] = u.n_cached;
                     d["prompt_seconds"] = u.prompt_seconds;
                     d["seconds"] = u.seconds;
                     const int H = e.runtime().n_embd();
                     d["trace_in"] = rows_array(u.trace_in, H);
                     d["trace_out"] = rows_array(u.trace_out, H);
                     d["prompt_logits"] = py::array_t<float>(py::cast(u.prompt_logits));
                 }
                 return d;
             }, py::arg("id"), py::arg("timeout_ms"))
        .def("wait_any", &E::wait_any, py::arg("ids"), py::arg("timeout_ms"), py::call_guard<py::gil_scoped_release>())
        .def("cancel", &E::cancel, py::arg("id"))
        .def("release", &E::release, py::arg("id"))
        .def("stats", [](const E & e) {
                 const flas_engine_stats st = e.stats();
                 py::dict d;
                 d["active"] = st.n_active;
                 d["queued"] = st.n_queued;
                 d["tokens_decoded"] = st.n_decoded;
                 d["decode_calls"] = st.n_steps;
                 d["concepts_encoded"] = st.concepts.concepts_encoded;
                 d["concept_hits"] = st.concepts.concept_hits;
                 d["concepts_cached"] = st.concepts.concepts_cached;
                 return d;
             })
        .def("exclusive", [](E & e, py::function fn) {
                 // the worker may be in a hook that needs the GIL: wait for the step without it
                 py::gil_scoped_release release;
                 e.run_exclusive([&] {
                     py::gil_scoped_acquire gil;
                     fn();
                 });
             }, py::arg("fn"), "Run fn() between two decode steps, with the runtime to itself.");
}

// Build information, flow checks, quantizers and ggml RPC: flas.h's calls that need no model.
#include "bindings.h"

#include <cstdint>

void register_utilities(py::module_ & m) {
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

    m.def("estimate_memory", [](model_params & mp, int n_steps) {
        const struct flas_model_params p = mp.params();
        py::gil_scoped_release release;
        return read_all<flas_memory_row>([&](flas_memory_row * r, int32_t n) {
            return flas_estimate_memory(&p, n_steps, r, n);
        }, 8);
    }, py::arg("params"), py::arg("n_steps") = 1,
       "Bytes per device a model of these parameters would hold (simulated buffers; flow_compute not estimated).");

}

// The Python module flas_cpp._core: the only file that includes pybind11.
// std::invalid_argument becomes ValueError and std::runtime_error RuntimeError (pybind11 defaults).
#include "flas-info.h"

#include "llama.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

static py::dict build_info_dict() {
    const flas_build_info bi = flas_build_info_get();
    py::list devices;
    for (const auto & d : bi.devices) {
        py::dict dev;
        dev["name"]         = d.name;
        dev["description"]  = d.description;
        dev["type"]         = d.type;
        dev["memory_free"]  = d.memory_free;
        dev["memory_total"] = d.memory_total;
        devices.append(dev);
    }
    py::dict out;
    out["ggml_version"]  = bi.ggml_version;
    out["ggml_commit"]   = bi.ggml_commit;
    out["system_info"]   = bi.system_info;
    out["backends"]      = bi.backends;
    out["devices"]       = devices;
    out["libllama"]      = bi.libllama_path;
    out["libggml"]       = bi.libggml_path;
    out["libggml_base"]  = bi.libggml_base_path;
    return out;
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "flas-cpp native core (llama.cpp + ggml)";
    llama_backend_init();  // idempotent; llama-cpp-python does the same on import

    m.def("build_info", &build_info_dict,
          "ggml/llama.cpp version, registered backends and devices, and the paths of the loaded libraries.");
    m.def("model_quantize", &flas_model_quantize, py::arg("path_in"), py::arg("path_out"), py::arg("ftype"),
          py::arg("nthread") = 0, py::call_guard<py::gil_scoped_release>(),
          "Quantize a GGUF file with llama.cpp's quantizer (llama_model_quantize); ftype is a llama_ftype.");
}

// What the files of the Python module flas_cpp._core share: a thin layer over the C API
// (include/flas.h), the only path into the core. Status codes become exceptions (invalid argument
// / not found: ValueError, runtime: RuntimeError, device lost: flas_cpp.DeviceLostError, context
// length: flas_cpp.ContextLengthError) with flas_last_error()'s message; the GIL is released
// around every call that may wait. Each area registers itself (register_*).
#pragma once

#include "flas.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

struct device_lost : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct context_length : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

struct not_found : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// The one map from a flas_status to a Python exception: for failed calls (check) and for
// requests that ended with an error (Result.status, through raise_status).
[[noreturn]] void raise_status(int status, const std::string & msg);

// Raises the exception of a negative status; returns non-negative values.
template <typename T>
static T check(T status) {
    if (status >= 0) {
        return status;
    }
    raise_status((int) status, flas_last_error());
}

// A C string ends at its first NUL: text with one inside would reach the core cut short.
const char * c_text(const std::string & s, const char * what);

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

py::array_t<float> float_array(const std::vector<float> & v, py::ssize_t n_cols);

// flas_model_params with the strings and the split it points to held (Python's ModelParams).
struct model_params {
    std::string base, flow;
    std::vector<std::string> rpc_servers;
    std::vector<float> tensor_split;
    struct flas_model_params p = flas_model_default_params();  // its other fields

    struct flas_model_params params();  // p, pointing into this object (valid while it lives)

  private:
    std::string rpc_;
};

// flas_request_params with the prompt and concept held (Python's Request).
struct request_params {
    std::vector<int32_t> prompt;
    std::string concept;
    std::vector<flas_breakpoint> schedule;  // empty: p.flowtime for every token
    struct flas_request_params p = flas_request_default_params();  // its other fields

    struct flas_request_params params() const;  // p, pointing into this object
};

// How a request ended (flas_result) and, for FLAS_FINISH_ERROR, flas_last_error()'s message.
struct request_end {
    struct flas_result result;
    std::string error;
};

// flas_flow_info with its strings copied: valid after the model is closed.
struct flow_info {
    explicit flow_info(const struct flas_flow_info & fi)
        : p(fi), base_model_id(fi.base_model_id), prompt_format(fi.prompt_format), family(fi.family),
          activation(fi.activation) {}
    struct flas_flow_info p;
    std::string base_model_id, prompt_format, family, activation;
};

void register_records(py::module_ & m);    // the records and parameters of flas.h as classes
void register_model(py::module_ & m);      // Model: a flas_model and its calls
void register_utilities(py::module_ & m);  // build information, flow checks, quantizers, RPC

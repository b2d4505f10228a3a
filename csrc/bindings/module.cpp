// The Python module flas_cpp._core (bindings.h says what it is): errors, the limits every
// interface shares, the core's checks, and each area's registration.
#include "bindings.h"

void raise_status(int status, const std::string & msg) {
    switch (status) {
        case FLAS_ERR_INVALID_ARGUMENT: throw py::value_error(msg);
        case FLAS_ERR_NOT_FOUND:        throw not_found(msg);
        case FLAS_ERR_DEVICE_LOST:      throw device_lost(msg);
        case FLAS_ERR_CONTEXT_LENGTH:   throw context_length(msg);
        default:                        throw std::runtime_error(msg);
    }
}

const char * c_text(const std::string & s, const char * what) {
    if (s.find('\0') != std::string::npos) {
        throw py::value_error(std::string(what) + " contains a NUL character ('\\0'), where a C string ends; remove it");
    }
    return s.c_str();
}

py::array_t<float> float_array(const std::vector<float> & v, py::ssize_t n_cols) {
    const py::ssize_t n_rows = n_cols > 0 ? (py::ssize_t) v.size() / n_cols : (py::ssize_t) v.size();
    py::array_t<float> a = n_cols > 0 ? py::array_t<float>({n_rows, n_cols}) : py::array_t<float>(n_rows);
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "flas-cpp: Python over the C API (flas.h)";

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
        } catch (const not_found & e) {
            py::object cls = py::module_::import("flas_cpp.generation").attr("RequestNotFoundError");
            PyErr_SetString(cls.ptr(), e.what());
        }
    });
    m.attr("MAX_STEPS") = FLAS_MAX_STEPS;
    m.attr("ERR_CONTEXT_LENGTH") = (int) FLAS_ERR_CONTEXT_LENGTH;
    m.def("raise_status", [](int status, const std::string & message) { raise_status(status, message); },
          py::arg("status"), py::arg("message"),
          "Raises the exception of a flas_status (a request's Result.status): DeviceLostError, ContextLengthError, "
          "RequestNotFoundError, ValueError or RuntimeError.");

    register_records(m);
    register_model(m);
    register_utilities(m);

    m.def("check_steering", [](const std::string & concept, float flowtime, int32_t n_steps) {
        check(flas_check_steering(c_text(concept, "the concept"), flowtime, n_steps));
    }, py::arg("concept"), py::arg("flowtime"), py::arg("n_steps"),
          "ValueError with the core's message unless flas_submit would accept this steering.");
    m.def("check_request", [](const request_params & r) {
        const struct flas_request_params p = r.params();
        check(flas_check_request(&p));
    }, py::arg("request"), "ValueError with the core's message unless flas_submit would accept these settings "
                           "(steering, max_tokens, sampling; not the prompt).");
}

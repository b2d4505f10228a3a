// What the C API's files share (not installed): the flas_model handle behind the opaque type,
// and the one place where C++ exceptions become status codes and flas_last_error() messages.
#pragma once

#include "flas.h"

#include "flas-engine.h"

#include <memory>
#include <stdexcept>
#include <string>

struct flas_model {
    std::unique_ptr<flas_engine> engine;
    std::string flow_device;
    std::string activation;
    struct flas_flow_info flow_info = {};  // its strings point into the runtime's hparams and activation
    // no request state of its own: the engine keeps each request's tokens, end and trace until
    // they are handed over (flas_poll) or released
};

// The model whose flas_exclusive runs on this thread, if any.
flas_model *& flas_exclusive_model();

// fn on the runtime between two decode steps; at once when this thread is inside the model's
// flas_exclusive already (waiting for the step would wait for itself).
template <typename F>
static void flas_on_runtime(flas_model * m, F && fn) {
    if (flas_exclusive_model() == m) {
        fn(m->engine->runtime());
    } else {
        m->engine->run_exclusive([&] { fn(m->engine->runtime()); });
    }
}

// The message of the calling thread's last failed call.
std::string & flas_error_slot();

// Runs fn, returning its result, or the status of the exception it throws (its message kept).
template <typename F>
static auto flas_guarded(F && fn) -> decltype(fn()) {
    std::string & error = flas_error_slot();
    try {
        error.clear();
        return fn();
    } catch (const flas_device_lost & e) {
        error = e.what();
        return FLAS_ERR_DEVICE_LOST;
    } catch (const flas_not_found & e) {
        error = e.what();
        return FLAS_ERR_NOT_FOUND;
    } catch (const flas_context_length & e) {
        error = e.what();
        return FLAS_ERR_CONTEXT_LENGTH;
    } catch (const std::out_of_range & e) {
        error = e.what();
        return FLAS_ERR_INVALID_ARGUMENT;
    } catch (const std::invalid_argument & e) {
        error = e.what();
        return FLAS_ERR_INVALID_ARGUMENT;
    } catch (const std::exception & e) {
        error = e.what();
        return FLAS_ERR_RUNTIME;
    } catch (...) {
        error = "unknown error";
        return FLAS_ERR_RUNTIME;
    }
}

static inline void flas_need(bool ok, const char * what) {
    if (!ok) {
        throw std::invalid_argument(what);
    }
}

// Copies up to n_max of values to out; returns how many there are (the caller sizes by it).
template <typename T>
static int64_t flas_copy_out(const std::vector<T> & values, T * out, int64_t n_max) {
    if ((int64_t) values.size() <= n_max) {
        std::copy(values.begin(), values.end(), out);
    }
    return (int64_t) values.size();
}

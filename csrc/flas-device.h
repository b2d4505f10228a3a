// Devices: the offload devices llama.cpp is given (local GPUs and ggml RPC servers), what each
// device holds, and what happens when a remote device goes away.
//
// ggml's RPC client aborts the process when a server cannot be reached or stops answering.
// flas-cpp turns that into errors: while a flas_device_guard lives on a thread, an RPC abort
// on that thread throws flas_device_lost; an abort on the RPC client's own dispatcher thread
// (the server died while a request was on the wire) parks that thread for good, marks the
// endpoints that no longer answer as lost, and tells every flas_device_watch, so that the
// caller blocked on the reply can be abandoned instead of the process being killed.
#pragma once

#include "flas-platform.h"

#include "ggml-backend.h"
#include "llama.h"

#include <cstddef>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

struct flas_device_lost : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ---- RPC servers ----
// Connects to each endpoint ("host:port") and returns its devices, in order. Errors name the
// endpoint: unreachable, not a ggml RPC server, lost earlier in this process, RPC not built.
std::vector<ggml_backend_dev_t> flas_rpc_devices(const std::vector<std::string> & endpoints);
// Whether a TCP connection to endpoint ("host:port") opens within timeout_ms.
flas_tcp flas_endpoint_probe(const std::string & endpoint, int timeout_ms);
bool flas_endpoint_open(const std::string & endpoint, int timeout_ms);
// This machine's GPUs (the RPC devices are not registered, so never among them).
std::vector<ggml_backend_dev_t> flas_local_accelerators();
// Serves this machine's CPU backend to RPC clients; returns only on error (never on success).
void flas_serve_rpc(const std::string & endpoint, int n_threads, const std::string & cache_dir);

// ---- device loss ----
struct flas_device_guard {  // RPC aborts on this thread throw flas_device_lost while it lives
    flas_device_guard();
    ~flas_device_guard();
    flas_device_guard(const flas_device_guard &) = delete;
    flas_device_guard & operator=(const flas_device_guard &) = delete;
};

// Calls on_lost(message) (from the RPC client's thread) when one of `endpoints` stops answering.
class flas_device_watch {
  public:
    flas_device_watch(std::vector<std::string> endpoints, std::function<void(const std::string &)> on_lost);
    ~flas_device_watch();
    flas_device_watch(const flas_device_watch &) = delete;
    flas_device_watch & operator=(const flas_device_watch &) = delete;
    const std::vector<std::string> & endpoints() const { return endpoints_; }
    void notify(const std::string & message) const { on_lost_(message); }

  private:
    std::vector<std::string> endpoints_;
    std::function<void(const std::string &)> on_lost_;
};

// ---- memory ----
// Bytes one device holds for a model and its flow.
struct flas_device_memory {
    std::string device;      // ggml device name: "CPU", "CUDA0", "RPC0", ...
    std::string type;        // "cpu", "gpu", ...
    std::string description; // for an RPC device, its endpoint
    size_t base_weights = 0; // llama.cpp's model buffers
    size_t kv_cache     = 0; // llama.cpp's context memory (KV cache)
    size_t base_compute = 0; // llama.cpp's compute buffers
    size_t flow_weights = 0;
    size_t flow_caches  = 0; // concept K/V and time embeddings, and every sequence's flow KV cache
    size_t flow_compute = 0; // the flow graph's compute buffer
    size_t total() const {
        return base_weights + kv_cache + base_compute + flow_weights + flow_caches + flow_compute;
    }
};

// The base model's part, per device, from llama.cpp's own accounting (real buffers, or
// simulated ones for a model loaded with no_alloc). Host buffers count for the CPU.
std::vector<flas_device_memory> flas_base_memory(const llama_context * ctx);
// The row of `rows` for the device holding `buf` (added if missing); nullptr buf: none.
flas_device_memory * flas_memory_row(std::vector<flas_device_memory> & rows, ggml_backend_buffer_t buf);
flas_device_memory & flas_memory_row(std::vector<flas_device_memory> & rows, ggml_backend_dev_t dev);

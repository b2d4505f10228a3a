#include "flas-device.h"

#include "flas-info.h"
#include "flas-llama-ext.h"

#include "ggml.h"

#include <chrono>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>

// ---------------------------------------------------------------------------------------------
// device loss
// ---------------------------------------------------------------------------------------------

static thread_local int t_guard_depth = 0;

static std::mutex g_watch_mutex;
static std::vector<const flas_device_watch *> g_watches;
static std::set<std::string> g_lost_endpoints;  // their RPC client is dead for this process
static ggml_abort_callback_t g_prev_abort = nullptr;
static std::once_flag g_abort_once;

// "…/ggml-rpc.cpp:566: Remote RPC server crashed…" -> "Remote RPC server crashed…"
static std::string without_source_location(const char * message) {
    std::string m = message;
    const size_t at = m.find("ggml-rpc.cpp:");
    const size_t text = at == std::string::npos ? std::string::npos : m.find(": ", at);
    m = text == std::string::npos ? m : m.substr(text + 2);
    while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) {
        m.pop_back();
    }
    return m;
}

static void on_ggml_abort(const char * message) {
    const bool from_rpc = strstr(message, "ggml-rpc") != nullptr;
    if (from_rpc && t_guard_depth > 0) {
        throw flas_device_lost(without_source_location(message));
    }
    if (from_rpc) {
        // The RPC client's dispatcher thread: ggml would abort() once we return. Find who lost
        // a device, tell them, and park this thread (it belongs to a dead connection).
        std::vector<const flas_device_watch *> hit;
        {
            std::lock_guard<std::mutex> lk(g_watch_mutex);
            // A dead server refuses connections, though its listening socket may outlive the
            // connection that just broke by a few milliseconds: probe a few times. A live one
            // may be busy serving this very process (one client at a time, a backlog of one)
            // and time out: such endpoints count as lost only when none refuses (a host that
            // went away entirely). If nothing can be told apart, every watch hears of it: an
            // error on a healthy model beats a caller blocked for good.
            std::set<std::string> slow;
            for (int attempt = 0; attempt < 10; ++attempt) {
                bool any_refused = false;
                for (const flas_device_watch * w : g_watches) {
                    for (const std::string & e : w->endpoints()) {
                        if (g_lost_endpoints.count(e) != 0) {
                            continue;  // lost before: its models already know
                        }
                        const flas_tcp p = flas_endpoint_probe(e, 1000);
                        if (p == flas_tcp::refused) {
                            g_lost_endpoints.insert(e);
                            any_refused = true;
                        } else if (p == flas_tcp::timeout) {
                            slow.insert(e);
                        }
                    }
                }
                if (any_refused) {
                    slow.clear();
                    break;
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
            }
            g_lost_endpoints.insert(slow.begin(), slow.end());
            for (const flas_device_watch * w : g_watches) {
                bool any = false;
                for (const std::string & e : w->endpoints()) {
                    any = any || g_lost_endpoints.count(e) != 0;
                }
                if (any) {
                    hit.push_back(w);
                }
            }
            if (hit.empty()) {  // (a model on an endpoint lost before is dead already)
                hit = g_watches;
            }
            for (const flas_device_watch * w : hit) {
                std::string lost;
                for (const std::string & e : w->endpoints()) {
                    if (g_lost_endpoints.count(e) != 0) {
                        lost += (lost.empty() ? "" : ", ") + e;
                    }
                }
                w->notify("device lost: the RPC server at " + (lost.empty() ? std::string("one of the servers") : lost) +
                          " stopped answering (ggml: " +
                          without_source_location(message) + "); this model cannot be used any more: close it and load it again");
            }
        }
        for (;;) {
            std::this_thread::sleep_for(std::chrono::hours(24));
        }
    }
    if (g_prev_abort != nullptr) {
        g_prev_abort(message);
    } else {
        fprintf(stderr, "%s\n", message);
    }
}

static void install_abort_callback() {
    std::call_once(g_abort_once, [] { g_prev_abort = ggml_set_abort_callback(on_ggml_abort); });
}

flas_device_guard::flas_device_guard() {
    install_abort_callback();
    ++t_guard_depth;
}

flas_device_guard::~flas_device_guard() { --t_guard_depth; }

flas_device_watch::flas_device_watch(std::vector<std::string> endpoints, std::function<void(const std::string &)> on_lost)
    : endpoints_(std::move(endpoints)), on_lost_(std::move(on_lost)) {
    install_abort_callback();
    std::lock_guard<std::mutex> lk(g_watch_mutex);
    g_watches.push_back(this);
}

flas_device_watch::~flas_device_watch() {
    std::lock_guard<std::mutex> lk(g_watch_mutex);
    g_watches.erase(std::find(g_watches.begin(), g_watches.end(), this));
}

// ---------------------------------------------------------------------------------------------
// RPC servers
// ---------------------------------------------------------------------------------------------

static bool split_endpoint(const std::string & endpoint, std::string & host, std::string & port) {
    const size_t colon = endpoint.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == endpoint.size()) {
        return false;
    }
    host = endpoint.substr(0, colon);
    port = endpoint.substr(colon + 1);
    for (char c : port) {
        if (c < '0' || c > '9') {
            return false;
        }
    }
    const long p = std::strtol(port.c_str(), nullptr, 10);
    return port.size() <= 5 && p >= 1 && p <= 65535;
}

flas_tcp flas_endpoint_probe(const std::string & endpoint, int timeout_ms) {
    std::string host, port;
    return split_endpoint(endpoint, host, port) ? flas_tcp_probe(host, port, timeout_ms) : flas_tcp::refused;
}

bool flas_endpoint_open(const std::string & endpoint, int timeout_ms) {
    return flas_endpoint_probe(endpoint, timeout_ms) == flas_tcp::open;
}

static ggml_backend_reg_t rpc_reg_or_throw() {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    if (reg == nullptr) {
        throw std::invalid_argument(
            "this llama.cpp was built without the RPC backend; rebuild llama-cpp-python with it: "
            "CMAKE_ARGS=\"-DGGML_RPC=on\" pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python==0.3.36, "
            "then reinstall flas-cpp");
    }
    return reg;
}

std::vector<ggml_backend_dev_t> flas_rpc_devices(const std::vector<std::string> & endpoints) {
    std::vector<ggml_backend_dev_t> devices;
    if (endpoints.empty()) {
        return devices;
    }
    // the endpoints' form first: a typo is named whether or not this llama.cpp has the RPC backend
    for (const std::string & e : endpoints) {
        std::string host, port;
        if (!split_endpoint(e, host, port)) {
            throw std::invalid_argument("rpc server '" + e + "' is not host:port (e.g. 127.0.0.1:50052)");
        }
    }
    using add_server_t = ggml_backend_reg_t (*)(const char *);
    auto add_server = (add_server_t) ggml_backend_reg_get_proc_address(rpc_reg_or_throw(), "ggml_backend_rpc_add_server");
    if (add_server == nullptr) {
        throw std::runtime_error("the RPC backend has no ggml_backend_rpc_add_server");
    }
    for (const std::string & e : endpoints) {
        std::string host, port;
        split_endpoint(e, host, port);
        {
            std::lock_guard<std::mutex> lk(g_watch_mutex);
            if (g_lost_endpoints.count(e) != 0) {
                throw std::invalid_argument("the RPC server at " + e + " was lost earlier in this process and ggml's "
                                            "RPC client cannot reconnect to it; restart this process to use " + e +
                                            " again, or serve on another port");
            }
        }
        // no probe connection of our own: ggml's server listens with a backlog of one and
        // serves one client at a time, so extra connections could crowd out real ones
        ggml_backend_reg_t reg = nullptr;
        try {
            flas_device_guard guard;
            reg = add_server(e.c_str());
        } catch (const flas_device_lost & err) {
            if (strstr(err.what(), "Failed to connect") != nullptr) {
                throw std::invalid_argument("cannot reach the RPC server at " + e + "; start one there with: "
                                            "python -m flas_cpp.rpc_server --host " + host + " --port " + port);
            }
            throw std::invalid_argument("the RPC server at " + e + " did not answer as a ggml RPC server of this "
                                        "version (" + err.what() + ")");
        }
        if (reg == nullptr || ggml_backend_reg_dev_count(reg) == 0) {
            throw std::invalid_argument("the RPC server at " + e + " offers no devices");
        }
        for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); ++i) {
            devices.push_back(ggml_backend_reg_dev_get(reg, i));
        }
    }
    return devices;
}

void flas_serve_rpc(const std::string & endpoint, int n_threads, const std::string & cache_dir) {
    std::string host, port;
    if (!split_endpoint(endpoint, host, port)) {
        throw std::invalid_argument("endpoint '" + endpoint + "' is not host:port");
    }
    using start_server_t = void (*)(const char *, const char *, size_t, size_t, ggml_backend_dev_t *);
    auto start_server = (start_server_t) ggml_backend_reg_get_proc_address(rpc_reg_or_throw(), "ggml_backend_rpc_start_server");
    if (start_server == nullptr) {
        throw std::runtime_error("the RPC backend has no ggml_backend_rpc_start_server");
    }
    // this machine's accelerators if it has any, else its CPU
    std::vector<ggml_backend_dev_t> devices = flas_local_accelerators();
    if (devices.empty()) {
        devices.push_back(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));
    }
    start_server(endpoint.c_str(), cache_dir.empty() ? nullptr : cache_dir.c_str(), (size_t) std::max(1, n_threads),
                 devices.size(), devices.data());
    throw std::runtime_error("the RPC server on " + endpoint + " stopped (is the port in use?)");
}

// ---------------------------------------------------------------------------------------------
// memory
// ---------------------------------------------------------------------------------------------

std::vector<ggml_backend_dev_t> flas_local_accelerators() {
    std::vector<ggml_backend_dev_t> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const auto type = ggml_backend_dev_type(dev);
        if (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) {
            out.push_back(dev);
        }
    }
    return out;
}

flas_device_memory & flas_memory_row(std::vector<flas_device_memory> & rows, ggml_backend_dev_t dev) {
    const std::string name = ggml_backend_dev_name(dev);
    for (flas_device_memory & r : rows) {
        if (r.device == name) {
            return r;
        }
    }
    flas_device_memory r;
    r.device      = name;
    r.type        = flas_device_type_name(ggml_backend_dev_type(dev));
    r.description = ggml_backend_dev_description(dev);
    rows.push_back(r);
    return rows.back();
}

static ggml_backend_dev_t device_of(ggml_backend_buffer_type_t buft) {
    ggml_backend_dev_t dev = buft != nullptr ? ggml_backend_buft_get_device(buft) : nullptr;
    if (dev == nullptr || ggml_backend_buft_is_host(buft)) {  // pinned host memory is host memory
        dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    }
    return dev;
}

flas_device_memory * flas_memory_row(std::vector<flas_device_memory> & rows, ggml_backend_buffer_t buf) {
    return buf != nullptr ? &flas_memory_row(rows, device_of(ggml_backend_buffer_get_type(buf))) : nullptr;
}

std::vector<flas_device_memory> flas_base_memory(const llama_context * ctx) {
    std::vector<flas_device_memory> rows;
    flas_memory_row(rows, ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));  // the CPU first, always
    for (const auto & [buft, mb] : llama_get_memory_breakdown(ctx)) {
        flas_device_memory & r = flas_memory_row(rows, device_of(buft));
        r.base_weights += mb.model;
        r.kv_cache     += mb.context;
        r.base_compute += mb.compute;
    }
    return rows;
}

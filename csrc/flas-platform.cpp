#include "flas-platform.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <set>
#include <thread>
#if defined(__linux__)
#    include <sched.h>
#endif

flas_tcp flas_tcp_probe(const std::string & host, const std::string & port, int timeout_ms) {
    addrinfo hints{};
    hints.ai_family   = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo * res = nullptr;
    if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) {
        return flas_tcp::refused;
    }
    flas_tcp result = flas_tcp::refused;
    for (addrinfo * a = res; a != nullptr && result != flas_tcp::open; a = a->ai_next) {
        const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) {
            continue;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            result = flas_tcp::open;
        } else if (errno == EINPROGRESS) {
            pollfd pfd{fd, POLLOUT, 0};
            int err = 0;
            socklen_t len = sizeof(err);
            const int ready = poll(&pfd, 1, timeout_ms);
            if (ready == 0) {
                result = flas_tcp::timeout;
            } else if (ready == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
                result = flas_tcp::open;
            }
        }
        close(fd);
    }
    freeaddrinfo(res);
    return result;
}

std::string flas_shared_object_of(const void * symbol) {
    Dl_info info{};
    if (dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) {
        return "";
    }
    return info.dli_fname;
}

int flas_physical_cores() {
    const int n_hw = (int) std::max(1u, std::thread::hardware_concurrency());
#if defined(__linux__)
    cpu_set_t cpus;
    if (sched_getaffinity(0, sizeof(cpus), &cpus) != 0) {
        return n_hw;
    }
    std::set<std::string> cores;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (!CPU_ISSET(cpu, &cpus)) {
            continue;
        }
        const std::string topo = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
        std::string package, core;
        std::ifstream(topo + "physical_package_id") >> package;
        std::ifstream(topo + "core_id") >> core;
        cores.insert(package.empty() || core.empty() ? "cpu" + std::to_string(cpu) : package + ":" + core);
    }
    return cores.empty() ? n_hw : (int) cores.size();
#else
    return n_hw;
#endif
}

// What depends on the operating system, in one place: a TCP connection probe and the path of
// a loaded shared object, the physical cores. POSIX (Linux, macOS) today; a Windows port replaces flas-platform.cpp.
#pragma once

#include <string>

enum class flas_tcp { open, refused, timeout };
// Whether a TCP connection to host:port opens within timeout_ms (closed again at once).
flas_tcp flas_tcp_probe(const std::string & host, const std::string & port, int timeout_ms);
// The file of the shared object holding `symbol` ("" if unknown).
std::string flas_shared_object_of(const void * symbol);
// Cores this process may run on, hyper-thread siblings counted once (llama.cpp's thread default).
int flas_physical_cores();

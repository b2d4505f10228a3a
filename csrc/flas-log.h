// flas-cpp's log: llama.cpp's messages through it, errors only unless verbose, to stderr or to
// the application's callback (flas_log_set).
#pragma once

#include "ggml.h"

// llama.cpp's log through flas-cpp: errors only, or everything when verbose.
void flas_log_init(bool verbose);
// Where flas-cpp's log goes: callback (NULL: stderr).
void flas_log_route(ggml_log_callback callback, void * user_data);
// Set while a pass is aborted on purpose (concept encoding): its error is not logged.
extern thread_local bool flas_log_quiet;

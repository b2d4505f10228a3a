// flas-cpp's log (flas-log.h).
#include "flas-log.h"

#include "llama.h"

#include <cstdio>

static bool g_verbose = false;
thread_local bool flas_log_quiet = false;

static ggml_log_callback g_app_log = nullptr;  // an application's choice (flas_log_set), else stderr
static void * g_app_log_data = nullptr;

void flas_log_route(ggml_log_callback callback, void * user_data) {
    g_app_log = callback;
    g_app_log_data = user_data;
}

static void log_callback(enum ggml_log_level level, const char * text, void *) {
    if (g_verbose || (!flas_log_quiet && level == GGML_LOG_LEVEL_ERROR)) {
        if (g_app_log != nullptr) {
            g_app_log(level, text, g_app_log_data);
        } else {
            fputs(text, stderr);
        }
    }
}

void flas_log_init(bool verbose) {
    g_verbose = verbose;
    llama_log_set(log_callback, nullptr);
}

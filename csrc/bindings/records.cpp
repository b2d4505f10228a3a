// flas.h's parameter and record structs as Python classes, their attributes named as in flas.h:
// ModelParams, SamplingParams, Request (flas_request_params), Result (flas_result), Finish,
// Stats, MemoryRow and FlowInfo. Python reads them by attribute (flas_cpp._native.record makes
// a dict of one for the public API's dicts).
#include "bindings.h"

struct flas_model_params model_params::params() {
    rpc_.clear();
    for (const std::string & e : rpc_servers) {
        rpc_ += (rpc_.empty() ? "" : ",") + std::string(c_text(e, "an RPC server endpoint"));
    }
    struct flas_model_params out = p;
    out.base_path      = c_text(base, "the base model path");
    out.flow_path      = c_text(flow, "the flow path");
    out.rpc_servers    = rpc_.empty() ? nullptr : rpc_.c_str();
    out.tensor_split   = tensor_split.empty() ? nullptr : tensor_split.data();
    out.n_tensor_split = (int32_t) tensor_split.size();
    return out;
}

struct flas_request_params request_params::params() const {
    struct flas_request_params out = p;
    out.prompt   = prompt.data();
    out.n_prompt = (int32_t) prompt.size();
    out.concept  = c_text(concept, "the concept");
    out.schedule   = schedule.empty() ? nullptr : schedule.data();
    out.n_schedule = (int32_t) schedule.size();
    return out;
}

// A field of the C struct behind a holder: read and written in place.
#define FIELD(holder, name) \
    def_property(#name, [](const holder & h) { return h.p.name; }, [](holder & h, decltype(h.p.name) v) { h.p.name = v; })
#define READONLY(type, name) def_readonly(#name, &type::name)
#define INFO(name) def_property_readonly(#name, [](const flow_info & f) { return f.p.name; })
#define CHARS(type, name) def_property_readonly(#name, [](const type & r) { return std::string(r.name); })

void register_records(py::module_ & m) {
    py::class_<model_params>(m, "ModelParams", "struct flas_model_params (flas_model_default_params()), with the "
                                               "paths, RPC servers and tensor split held")
        .def(py::init<>())
        .def_readwrite("base", &model_params::base)
        .def_readwrite("flow", &model_params::flow)
        .def_readwrite("rpc_servers", &model_params::rpc_servers)
        .def_readwrite("tensor_split", &model_params::tensor_split)
        .FIELD(model_params, n_ctx).FIELD(model_params, n_batch).FIELD(model_params, n_seq)
        .FIELD(model_params, concept_cache).FIELD(model_params, n_gpu_layers).FIELD(model_params, main_gpu)
        .FIELD(model_params, n_threads).FIELD(model_params, exact).FIELD(model_params, verbose);

    py::class_<flas_sampling_params>(m, "SamplingParams", "struct flas_sampling_params (flas_sampling_default_params())")
        .def(py::init([] { return flas_sampling_default_params(); }))
        .def_readwrite("temperature", &flas_sampling_params::temperature)
        .def_readwrite("top_k", &flas_sampling_params::top_k)
        .def_readwrite("top_p", &flas_sampling_params::top_p)
        .def_readwrite("typical_p", &flas_sampling_params::typical_p)
        .def_readwrite("min_p", &flas_sampling_params::min_p)
        .def_readwrite("repeat_penalty", &flas_sampling_params::repeat_penalty)
        .def_readwrite("repeat_last_n", &flas_sampling_params::repeat_last_n)
        .def_readwrite("seed", &flas_sampling_params::seed);

    py::class_<request_params>(m, "Request", "struct flas_request_params (flas_request_default_params()), with the "
                                             "prompt and concept held")
        .def(py::init<>())
        .def_readwrite("prompt", &request_params::prompt)
        .def_readwrite("concept", &request_params::concept)
        .FIELD(request_params, flowtime)
        .def_property("schedule", [](const request_params & r) {
            std::vector<std::pair<int32_t, float>> out;
            for (const flas_breakpoint & b : r.schedule) {
                out.emplace_back(b.token, b.flowtime);
            }
            return out;
        }, [](request_params & r, const std::vector<std::pair<int32_t, float>> & points) {
            r.schedule.clear();
            for (const auto & [token, flowtime] : points) {
                r.schedule.push_back({token, flowtime});
            }
        }, "[(token, flowtime), ...]; []: flowtime for every token")
        .FIELD(request_params, n_steps).FIELD(request_params, max_tokens)
        .def_property("sampling", py::cpp_function([](request_params & r) -> flas_sampling_params & { return r.p.sampling; },
                                                   py::return_value_policy::reference_internal),
                      [](request_params & r, const flas_sampling_params & s) { r.p.sampling = s; })
        .FIELD(request_params, trace).FIELD(request_params, telemetry).FIELD(request_params, logprobs);

    py::enum_<flas_finish>(m, "Finish", "enum flas_finish: how a request ended")
        .value("NONE", FLAS_FINISH_NONE)
        .value("EOG", FLAS_FINISH_EOG)
        .value("MAX_TOKENS", FLAS_FINISH_MAX_TOKENS)
        .value("CONTEXT", FLAS_FINISH_CONTEXT)
        .value("CANCELLED", FLAS_FINISH_CANCELLED)
        .value("ERROR", FLAS_FINISH_ERROR);

    py::class_<request_end>(m, "Result", "struct flas_result of a request that ended, and its error's message")
        .def_property_readonly("finish", [](const request_end & e) { return e.result.finish; })
        .def_property_readonly("status", [](const request_end & e) { return e.result.status; })
        .def_property_readonly("n_prompt", [](const request_end & e) { return e.result.n_prompt; })
        .def_property_readonly("n_cached", [](const request_end & e) { return e.result.n_cached; })
        .def_property_readonly("prompt_seconds", [](const request_end & e) { return e.result.prompt_seconds; })
        .def_property_readonly("seconds", [](const request_end & e) { return e.result.seconds; })
        .def_readonly("error", &request_end::error);

    py::class_<flas_stats>(m, "Stats", "struct flas_stats")
        .READONLY(flas_stats, n_active).READONLY(flas_stats, n_queued).READONLY(flas_stats, n_decoded)
        .READONLY(flas_stats, n_decode_calls).READONLY(flas_stats, concepts_encoded)
        .READONLY(flas_stats, concept_hits).READONLY(flas_stats, concepts_cached);

    py::class_<flas_memory_row>(m, "MemoryRow", "struct flas_memory_row: bytes on one device")
        .CHARS(flas_memory_row, device).CHARS(flas_memory_row, type).CHARS(flas_memory_row, description)
        .READONLY(flas_memory_row, base_weights).READONLY(flas_memory_row, kv_cache)
        .READONLY(flas_memory_row, base_compute).READONLY(flas_memory_row, flow_weights)
        .READONLY(flas_memory_row, flow_caches).READONLY(flas_memory_row, flow_compute)
        .READONLY(flas_memory_row, total);

    py::class_<flow_info>(m, "FlowInfo", "struct flas_flow_info: what the flow GGUF says about itself")
        .def_readonly("base_model_id", &flow_info::base_model_id)
        .def_readonly("prompt_format", &flow_info::prompt_format)
        .def_readonly("family", &flow_info::family)
        .def_readonly("activation", &flow_info::activation)
        .INFO(format_version).INFO(layer).INFO(n_block).INFO(n_steps).INFO(t_min).INFO(t_max).INFO(concept_max_len)
        .INFO(has_cross_attn).INFO(has_self_attn).INFO(has_mlp).INFO(n_embd).INFO(n_head).INFO(n_head_kv)
        .INFO(head_dim).INFO(softcap).INFO(rope_freq_base).INFO(rope_freq_scale);
}

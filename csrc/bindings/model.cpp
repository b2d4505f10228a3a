// Model: a flas_model and its calls (flas.h's models, tokens, concepts, requests, traces, the
// steer hook and the exclusive flas_seq_* calls).
#include "bindings.h"

#include <algorithm>
#include <memory>
#include <mutex>
#include <utility>

// A Python callable f(rows: ndarray[n, H], pos0) -> ndarray[n, H], called on the decoding thread.
struct steer_hook {
    py::object fn;

    static bool call(const float * in, float * out, int32_t n, int32_t n_embd, int32_t pos0, void * user_data) {
        py::gil_scoped_acquire gil;
        try {
            py::array_t<float> rows({(py::ssize_t) n, (py::ssize_t) n_embd});
            std::copy(in, in + (size_t) n * n_embd, rows.mutable_data());
            auto res = py::array_t<float, py::array::c_style | py::array::forcecast>(
                static_cast<steer_hook *>(user_data)->fn(rows, pos0));
            if (res.ndim() != 2 || res.shape(0) != n || res.shape(1) != n_embd) {
                PyErr_SetString(PyExc_ValueError, "the steer hook returned an array of the wrong shape");
                PyErr_WriteUnraisable(static_cast<steer_hook *>(user_data)->fn.ptr());
                return false;
            }
            std::copy(res.data(), res.data() + (size_t) n * n_embd, out);
            return true;
        } catch (py::error_already_set & e) {
            e.restore();
            PyErr_WriteUnraisable(static_cast<steer_hook *>(user_data)->fn.ptr());  // the traceback, on stderr
            return false;
        }
    }
};

// A loaded model. close() drops the handle; a call in flight on another thread holds its own
// reference, so the model (and the steer hook it calls) is freed when the last one ends.
class model {
    struct loaded {
        flas_model * m = nullptr;
        std::mutex hook_mutex;  // one set_steer_hook at a time: the C call and the swap together
        std::unique_ptr<steer_hook> hook;
        ~loaded() {  // with the GIL held, as every reference is dropped
            {
                py::gil_scoped_release release;  // the scheduler may be waiting for it in a hook
                flas_model_free(m);
            }
            hook.reset();  // no call of it can be under way any more
        }
    };

  public:
    explicit model(model_params & mp) : handle_(std::make_shared<loaded>()) {
        const struct flas_model_params p = mp.params();
        py::gil_scoped_release release;
        check(flas_model_load(&p, &handle_->m));
    }

    void close() {
        std::shared_ptr<loaded> h;
        {
            std::lock_guard<std::mutex> lk(mutex_);
            h = std::move(handle_);
        }
    }

    std::shared_ptr<flas_model> get() const {
        std::shared_ptr<loaded> l = get_loaded();
        return std::shared_ptr<flas_model>(l, l->m);  // shares the ownership of the holder
    }

    void set_steer_hook(py::object fn) {
        std::shared_ptr<loaded> l = get_loaded();
        std::unique_ptr<steer_hook> next;
        if (!fn.is_none()) {
            next = std::make_unique<steer_hook>(steer_hook{std::move(fn)});
        }
        std::unique_ptr<steer_hook> old;  // destroyed with the GIL held, after the C call
        int status;
        {
            py::gil_scoped_release release;  // the decode may be in a hook waiting for the GIL
            std::lock_guard<std::mutex> lk(l->hook_mutex);
            status = flas_set_steer_hook(l->m, next ? &steer_hook::call : nullptr, next.get());
            if (status == FLAS_OK) {
                old = std::move(l->hook);  // no longer called
                l->hook = std::move(next);
            }
        }
        check(status);
    }

  private:
    std::shared_ptr<loaded> get_loaded() const {
        std::lock_guard<std::mutex> lk(mutex_);
        if (!handle_) {
            throw std::runtime_error("this FlasModel is closed; load a new one");
        }
        return handle_;
    }

    mutable std::mutex mutex_;
    std::shared_ptr<loaded> handle_;
};

// fn() inside flas_exclusive; a Python exception is raised again after it.
static void run_exclusive(flas_model * m, py::function fn) {
    struct call {
        py::function fn;
        std::exception_ptr error;  // what fn raised
    } c{std::move(fn), nullptr};
    auto trampoline = [](flas_model *, void * user_data) {
        call & c = *static_cast<call *>(user_data);
        py::gil_scoped_acquire gil;
        try {
            c.fn();
        } catch (...) {
            c.error = std::current_exception();
        }
    };
    int status;
    {
        py::gil_scoped_release release;  // the scheduler may be in a hook that needs the GIL
        status = flas_exclusive(m, trampoline, &c);
    }
    if (c.error) {
        std::rethrow_exception(c.error);
    }
    check(status);
}

void register_model(py::module_ & m) {
    py::class_<model>(m, "Model", "A flas_model: the base model, the flow and the scheduler's thread")
        .def(py::init<model_params &>(), py::arg("params"),
             "flas_model_load: the base model, the flow, and the scheduler's thread.")
        .def("close", &model::close, "flas_model_free (once no call is under way on another thread).")
        .def_property_readonly("n_vocab", [](const model & s) { return flas_model_n_vocab(s.get().get()); })
        .def_property_readonly("n_embd", [](const model & s) { return flas_model_n_embd(s.get().get()); })
        .def_property_readonly("n_ctx", [](const model & s) { return flas_model_n_ctx(s.get().get()); })
        .def_property_readonly("n_ctx_seq", [](const model & s) { return flas_model_n_ctx_seq(s.get().get()); })
        .def_property_readonly("n_seq", [](const model & s) { return flas_model_n_seq(s.get().get()); })
        .def_property_readonly("flow_device", [](const model & s) { return std::string(flas_model_flow_device(s.get().get())); })
        .def_property_readonly("flow_info", [](const model & s) { return flow_info(*flas_model_flow_info(s.get().get())); })
        .def("memory", [](const model & s) {
            auto h = s.get();
            return read_all<flas_memory_row>([&](flas_memory_row * r, int32_t n) { return flas_model_memory(h.get(), r, n); },
                                             8);
        })
        .def("reserve", [](const model & s, int n_steps) {
            auto h = s.get();
            py::gil_scoped_release release;
            check(flas_model_reserve(h.get(), n_steps));
        }, py::arg("n_steps"))
        .def("prompt_tokens", [](const model & s, const std::string & prompt) {
            auto h = s.get();
            const char * prompt_text = c_text(prompt, "the prompt");
            py::gil_scoped_release release;  // tokenizing a long text takes a while
            return read_all<int32_t>([&](int32_t * t, int32_t n) { return flas_prompt_tokens(h.get(), prompt_text, t, n); },
                                     (size_t) flas_model_n_ctx_seq(h.get()));
        }, py::arg("prompt"))
        .def("chat_tokens", [](const model & s, const std::vector<std::pair<std::string, std::string>> & turns,
                               bool content_special) {
            auto h = s.get();
            std::vector<flas_chat_message> msgs;
            for (const auto & t : turns) {
                msgs.push_back({c_text(t.first, "a message's role"), c_text(t.second, "a message's content")});
            }
            py::gil_scoped_release release;
            return read_all<int32_t>([&](int32_t * t, int32_t n) {
                return flas_chat_tokens(h.get(), msgs.data(), (int32_t) msgs.size(), content_special, t, n);
            }, (size_t) flas_model_n_ctx_seq(h.get()));
        }, py::arg("messages"), py::arg("content_special"))
        .def("text_tokens", [](const model & s, const std::string & text, bool parse_special) {
            auto h = s.get();
            const char * text_c = c_text(text, "the prompt");
            py::gil_scoped_release release;
            return read_all<int32_t>([&](int32_t * t, int32_t n) {
                return flas_text_tokens(h.get(), text_c, parse_special, t, n);
            }, (size_t) flas_model_n_ctx_seq(h.get()));
        }, py::arg("text"), py::arg("parse_special"))
        .def("tokenize", [](const model & s, const std::string & text, bool add_special, bool parse_special) {
            auto h = s.get();
            const char * text_c = c_text(text, "the text");
            py::gil_scoped_release release;
            return read_all<int32_t>([&](int32_t * t, int32_t n) {
                return flas_tokenize(h.get(), text_c, add_special, parse_special, t, n);
            }, text.size() + 2);  // a token covers at least one byte; BOS and EOS
        }, py::arg("text"), py::arg("add_special"), py::arg("parse_special"))
        .def("chat_template", [](const model & s, const std::vector<std::pair<std::string, std::string>> & turns) {
            auto h = s.get();
            std::vector<flas_chat_message> msgs;
            for (const auto & t : turns) {
                msgs.push_back({c_text(t.first, "a message's role"), c_text(t.second, "a message's content")});
            }
            py::gil_scoped_release release;
            std::vector<char> buf(1024);
            int32_t n = check(flas_chat_template(h.get(), msgs.data(), (int32_t) msgs.size(), buf.data(), (int32_t) buf.size()));
            if (n >= (int32_t) buf.size()) {
                buf.resize((size_t) n + 1);
                n = check(flas_chat_template(h.get(), msgs.data(), (int32_t) msgs.size(), buf.data(), (int32_t) buf.size()));
            }
            return std::string(buf.data(), (size_t) n);
        }, py::arg("messages"))
        .def("token_to_piece", [](const model & s, int32_t token) {
            auto h = s.get();
            const std::vector<char> piece = read_all<char>([&](char * buf, int32_t n) {
                return flas_token_to_piece(h.get(), token, buf, n);
            });
            return py::bytes(piece.data(), piece.size());
        }, py::arg("token"))
        .def("encode_concept", [](const model & s, const std::string & concept) {
            auto h = s.get();
            const char * concept_text = c_text(concept, "the concept");
            py::gil_scoped_release release;
            return check(flas_encode_concept(h.get(), concept_text));
        }, py::arg("concept"))
        .def("concept_rows", [](const model & s, const std::string & concept) {
            auto h = s.get();
            const char * concept_text = c_text(concept, "the concept");
            const py::ssize_t H = flas_model_n_embd(h.get());
            std::vector<float> rows;
            {
                py::gil_scoped_release release;
                // room for 64 rows, the usual concept_max_len, so the concept is encoded once
                rows = read_all<float>([&](float * out, int64_t n) { return flas_concept_rows(h.get(), concept_text, out, n); },
                                       (size_t) 64 * H);
            }
            return float_array(rows, H);
        }, py::arg("concept"), "The concept's encoding [K, H] (flas_concept_rows).")
        .def("submit_many", [](const model & s, const std::vector<request_params> & reqs) {
            auto h = s.get();
            std::vector<struct flas_request_params> params;
            for (const request_params & r : reqs) {
                params.push_back(r.params());
            }
            std::vector<uint64_t> ids(reqs.size());
            check(flas_submit_many(h.get(), params.data(), (int32_t) params.size(), ids.data()));
            return ids;
        }, py::arg("requests"))
        .def("poll", [](const model & s, uint64_t id, int timeout_ms, int n_max) {
            auto h = s.get();
            std::vector<flas_token_data> data((size_t) std::max(0, n_max));
            request_end end{};
            int32_t n;
            {
                py::gil_scoped_release release;
                n = flas_poll_data(h.get(), id, timeout_ms, data.data(), (int32_t) data.size(), &end.result);
                end.error = end.result.finish == FLAS_FINISH_ERROR ? flas_last_error() : "";
            }
            data.resize((size_t) check(n));
            std::vector<int32_t> tokens;
            std::vector<float> flowtime, displacement;
            py::list logprobs;
            for (const flas_token_data & d : data) {
                tokens.push_back(d.token);
                flowtime.push_back(d.flowtime);
                displacement.push_back(d.displacement);
                py::list top;
                for (int i = 0; i < d.n_top; ++i) {
                    top.append(py::make_tuple(d.top_token[i], d.top_logprob[i]));
                }
                logprobs.append(py::make_tuple(d.logprob, top));
            }
            return py::make_tuple(tokens, flowtime, displacement, logprobs,
                                  end.result.finish == FLAS_FINISH_NONE ? py::none() : py::cast(end));
        }, py::arg("id"), py::arg("timeout_ms"), py::arg("n_max") = 256,
           "flas_poll_data: (up to n_max new tokens, the flowtime and displacement of each, the (logprob, [(token, "
           "logprob), ...]) of each (flas_token_data), the Result once the request has ended and handed them all "
           "over, else None).")
        .def("wait_any", [](const model & s, const std::vector<uint64_t> & ids, int timeout_ms) {
            auto h = s.get();
            uint64_t ready = 0;
            py::gil_scoped_release release;
            check(flas_wait_any(h.get(), ids.data(), (int32_t) ids.size(), timeout_ms, &ready));
            return ready;
        }, py::arg("ids"), py::arg("timeout_ms"))
        .def("trace", [](const model & s, uint64_t id) {
            auto h = s.get();
            auto get = [&](enum flas_trace_kind kind) {
                return read_all<float>([&](float * out, int64_t n) { return flas_trace(h.get(), id, kind, out, n); });
            };
            const py::ssize_t H = flas_model_n_embd(h.get());
            py::dict d;
            d["unsteered"] = float_array(get(FLAS_TRACE_UNSTEERED), H);
            d["steered"] = float_array(get(FLAS_TRACE_STEERED), H);
            d["logits"] = float_array(get(FLAS_TRACE_LOGITS), 0);
            return d;
        }, py::arg("id"), "A finished traced request's rows (unsteered, steered: [n, H]) and prompt logits.")
        .def("steer", [](const model & s, uint64_t id, const request_params & r) {
            auto h = s.get();
            const struct flas_request_params p = r.params();
            int32_t at = -1;
            py::gil_scoped_release release;  // waits for the worker, which may be in a hook that needs the GIL
            check(flas_request_steer(h.get(), id, &p, &at));
            return at;
        }, py::arg("id"), py::arg("request"),
           "flas_request_steer: the request's steering replaced by the Request's (its prompt ignored) from its next "
           "token on; returns the first generated token it steers.")
        .def("cancel", [](const model & s, uint64_t id) { check(flas_cancel(s.get().get(), id)); }, py::arg("id"))
        .def("release", [](const model & s, uint64_t id) { check(flas_release(s.get().get(), id)); }, py::arg("id"))
        .def("stats", [](const model & s) {
            struct flas_stats st{};
            check(flas_model_stats(s.get().get(), &st));
            return st;
        })
        .def("set_steer_hook", &model::set_steer_hook, py::arg("fn"),
             "fn(rows [n, H] float32, pos0) -> rows replaces the flow; None restores it.")
        .def("exclusive", [](const model & s, py::function fn) { run_exclusive(s.get().get(), std::move(fn)); },
             py::arg("fn"), "flas_exclusive: fn() between two decode steps; the seq_* methods work inside it.")
        .def("seq_set_steering", [](const model & s, int seq, const std::string & concept, float flowtime, int n_steps) {
            auto h = s.get();
            const char * concept_text = c_text(concept, "the concept");
            py::gil_scoped_release release;
            return check(flas_seq_set_steering(h.get(), seq, concept_text, flowtime, n_steps));
        }, py::arg("seq"), py::arg("concept"), py::arg("flowtime"), py::arg("n_steps"))
        .def("seq_decode", [](const model & s, const std::vector<std::pair<int32_t, std::vector<int32_t>>> & batch) {
            auto h = s.get();
            std::vector<int32_t> seqs, counts;
            std::vector<const int32_t *> tokens;
            for (const auto & e : batch) {
                seqs.push_back(e.first);
                tokens.push_back(e.second.data());
                counts.push_back((int32_t) e.second.size());
            }
            py::gil_scoped_release release;
            check(flas_seq_decode(h.get(), (int32_t) batch.size(), seqs.data(), tokens.data(), counts.data()));
        }, py::arg("batch"), "[(seq, [tokens...]), ...] in one llama_decode.")
        .def("seq_set_flowtime", [](const model & s, int seq, float flowtime) {
            check(flas_seq_set_flowtime(s.get().get(), seq, flowtime));
        }, py::arg("seq"), py::arg("flowtime"))
        .def("seq_reset", [](const model & s, int seq) { check(flas_seq_reset(s.get().get(), seq)); }, py::arg("seq"))
        .def("seq_rewind", [](const model & s, int seq, int n_keep) { check(flas_seq_rewind(s.get().get(), seq, n_keep)); },
             py::arg("seq"), py::arg("n_keep"))
        .def("seq_set_trace", [](const model & s, int seq, bool on) { check(flas_seq_set_trace(s.get().get(), seq, on)); },
             py::arg("seq"), py::arg("on"))
        .def("seq_set_telemetry", [](const model & s, int seq, bool on) {
            check(flas_seq_set_telemetry(s.get().get(), seq, on));
        }, py::arg("seq"), py::arg("on"))
        .def("seq_displacement", [](const model & s, int seq) {
            float d = 0.0f;
            check(flas_seq_displacement(s.get().get(), seq, &d));
            return d;
        }, py::arg("seq"))
        .def("seq_get", [](const model & s, int seq, const std::string & what) {
            auto h = s.get();
            const enum flas_trace_kind kind = what == "logits" ? FLAS_TRACE_LOGITS
                                            : what == "steered" ? FLAS_TRACE_STEERED
                                            : what == "unsteered" ? FLAS_TRACE_UNSTEERED
                                            : throw py::value_error("seq_get: what is logits, steered or unsteered");
            std::vector<float> v = read_all<float>([&](float * out, int64_t n) {
                return flas_seq_get(h.get(), seq, kind, out, n);
            });
            return float_array(std::move(v), kind == FLAS_TRACE_LOGITS ? 0 : flas_model_n_embd(h.get()));
        }, py::arg("seq"), py::arg("what"), "Its last-token logits, or its traced steered/unsteered rows [n, H].");
}

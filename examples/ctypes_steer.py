"""Steered generation through libflas's C API from Python's ctypes: no flas_cpp import, only the
shared library (any language with a C FFI does the same).

    python examples/ctypes_steer.py LIBFLAS.so BASE.gguf FLOW.gguf CONCEPT PROMPT [MAX_TOKENS]

prints the generated token ids, one per line.
"""

import ctypes as C
import sys


class ModelParams(C.Structure):
    _fields_ = [("base_path", C.c_char_p), ("flow_path", C.c_char_p), ("n_ctx", C.c_int32), ("n_batch", C.c_int32),
                ("n_seq", C.c_int32), ("concept_cache", C.c_int32), ("n_gpu_layers", C.c_int32),
                ("main_gpu", C.c_int32), ("n_threads", C.c_int32), ("rpc_servers", C.c_char_p),
                ("tensor_split", C.POINTER(C.c_float)), ("n_tensor_split", C.c_int32), ("exact", C.c_bool), ("verbose", C.c_bool), ("cb_eval", C.c_void_p), ("cb_eval_user_data", C.c_void_p)]


class SamplingParams(C.Structure):
    _fields_ = [("temperature", C.c_float), ("top_k", C.c_int32), ("top_p", C.c_float), ("typical_p", C.c_float),
                ("min_p", C.c_float),
                ("repeat_penalty", C.c_float), ("repeat_last_n", C.c_int32), ("seed", C.c_uint32)]


class Breakpoint(C.Structure):
    _fields_ = [("token", C.c_int32), ("flowtime", C.c_float)]


class RequestParams(C.Structure):
    _fields_ = [("prompt", C.POINTER(C.c_int32)), ("n_prompt", C.c_int32), ("concept", C.c_char_p),
                ("flowtime", C.c_float), ("schedule", C.POINTER(Breakpoint)), ("n_schedule", C.c_int32),
                ("n_steps", C.c_int32), ("max_tokens", C.c_int32),
                ("sampling", SamplingParams), ("trace", C.c_bool), ("telemetry", C.c_bool), ("logprobs", C.c_int32)]


class Result(C.Structure):
    _fields_ = [("finish", C.c_int), ("status", C.c_int32), ("n_prompt", C.c_int32), ("n_cached", C.c_int32),
                ("prompt_seconds", C.c_double), ("seconds", C.c_double)]


def load(path: str) -> C.CDLL:
    lib = C.CDLL(path)
    lib.flas_last_error.restype = C.c_char_p
    lib.flas_model_default_params.restype = ModelParams
    lib.flas_request_default_params.restype = RequestParams
    lib.flas_model_load.argtypes = [C.POINTER(ModelParams), C.POINTER(C.c_void_p)]
    lib.flas_model_free.argtypes = [C.c_void_p]
    lib.flas_prompt_tokens.argtypes = [C.c_void_p, C.c_char_p, C.POINTER(C.c_int32), C.c_int32]
    lib.flas_submit.argtypes = [C.c_void_p, C.POINTER(RequestParams), C.POINTER(C.c_uint64)]
    lib.flas_poll.argtypes = [C.c_void_p, C.c_uint64, C.c_int32, C.POINTER(C.c_int32), C.c_int32, C.POINTER(Result)]
    return lib


def main(argv: list[str]) -> int:
    lib_path, base, flow, concept, prompt = argv[1:6]
    max_tokens = int(argv[6]) if len(argv) > 6 else 32
    lib = load(lib_path)
    mp = lib.flas_model_default_params()
    mp.base_path, mp.flow_path, mp.n_ctx = base.encode(), flow.encode(), 1024
    model = C.c_void_p()
    if lib.flas_model_load(C.byref(mp), C.byref(model)) != 0:
        print(f"load: {lib.flas_last_error().decode()}", file=sys.stderr)
        return 1
    try:
        ids = (C.c_int32 * 512)()
        n = lib.flas_prompt_tokens(model, prompt.encode(), ids, 512)
        rp = lib.flas_request_default_params()
        rp.prompt, rp.n_prompt, rp.concept = ids, n, concept.encode()
        rp.flowtime, rp.max_tokens, rp.sampling.temperature = 2.0, max_tokens, 0.0
        rid = C.c_uint64()
        if lib.flas_submit(model, C.byref(rp), C.byref(rid)) != 0:
            print(f"submit: {lib.flas_last_error().decode()}", file=sys.stderr)
            return 1
        res, out = Result(), (C.c_int32 * 64)()
        while res.finish == 0:
            got = lib.flas_poll(model, rid, 1000, out, 64, C.byref(res))
            if got < 0:
                print(f"poll: {lib.flas_last_error().decode()}", file=sys.stderr)
                return 1
            for i in range(got):
                print(out[i])
        return 0 if res.finish != 5 else 1
    finally:
        lib.flas_model_free(model)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Type stubs of the extension (csrc/bindings.cpp), a thin layer over the C API (include/flas.h)."""

from typing import Callable

import numpy as np

MAX_STEPS: int
ERR_CONTEXT_LENGTH: int  # flas.h's FLAS_ERR_CONTEXT_LENGTH

def raise_status(status: int, message: str) -> None: ...
def check_steering(concept: str, flowtime: float, n_steps: int) -> None: ...

def check_request(request: Request) -> None: ...
def default_threads() -> int: ...
def build_info() -> dict: ...
def validate_flow(path: str) -> None: ...
def quantize_rows(rows: np.ndarray, type: int) -> np.ndarray: ...
def quantize(path_in: str, path_out: str, ftype: int, n_threads: int = 0) -> None: ...
def rpc_serve(endpoint: str, n_threads: int = 0, cache_dir: str = "") -> None: ...
def rpc_device_handles(endpoints: list[str]) -> list[int]: ...
def endpoint_reachable(endpoint: str, timeout_ms: int = 1000) -> bool: ...
def estimate_memory(params: ModelParams, n_steps: int = 1) -> list[MemoryRow]: ...

# flas.h's structs, their fields named as there (flas_model_default_params() etc. give the defaults)
class ModelParams:
    base: str
    flow: str
    rpc_servers: list[str]
    tensor_split: list[float]
    n_ctx: int
    n_batch: int
    n_seq: int
    concept_cache: int
    n_gpu_layers: int
    main_gpu: int
    n_threads: int
    exact: bool
    verbose: bool

class SamplingParams:
    temperature: float
    top_k: int
    top_p: float
    typical_p: float
    min_p: float
    repeat_penalty: float
    repeat_last_n: int
    seed: int

class Request:
    """struct flas_request_params, with the prompt and concept held."""
    prompt: list[int]
    concept: str
    flowtime: float
    schedule: list[tuple[int, float]]
    n_steps: int
    max_tokens: int
    sampling: SamplingParams
    trace: bool
    telemetry: bool
    logprobs: int

class Finish(int):
    NONE: "Finish"
    EOG: "Finish"
    MAX_TOKENS: "Finish"
    CONTEXT: "Finish"
    CANCELLED: "Finish"
    ERROR: "Finish"
    name: str

class Result:
    """struct flas_result of a request that ended, and its error's message."""
    finish: Finish
    status: int
    n_prompt: int
    n_cached: int
    prompt_seconds: float
    seconds: float
    error: str

class Stats:
    n_active: int
    n_queued: int
    n_decoded: int
    n_decode_calls: int
    concepts_encoded: int
    concept_hits: int
    concepts_cached: int

class MemoryRow:
    device: str
    type: str
    description: str
    base_weights: int
    kv_cache: int
    base_compute: int
    flow_weights: int
    flow_caches: int
    flow_compute: int
    total: int

class FlowInfo:
    base_model_id: str
    prompt_format: str
    family: str
    activation: str
    format_version: int
    layer: int
    n_block: int
    n_steps: int
    t_min: float
    t_max: float
    concept_max_len: int
    has_cross_attn: bool
    has_self_attn: bool
    has_mlp: bool
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    softcap: float
    rope_freq_base: float
    rope_freq_scale: float

class Model:
    """A flas_model: the base model, the flow and the scheduler's thread. Errors: ValueError
    (bad argument, unknown id), RuntimeError, flas_cpp.DeviceLostError."""
    def __init__(self, params: ModelParams) -> None: ...
    def close(self) -> None: ...
    n_vocab: int
    n_embd: int
    n_ctx: int
    n_ctx_seq: int
    n_seq: int
    flow_device: str
    flow_info: FlowInfo
    def memory(self) -> list[MemoryRow]: ...
    def reserve(self, n_steps: int) -> None: ...
    def prompt_tokens(self, prompt: str) -> list[int]: ...
    def chat_tokens(self, messages: list[tuple[str, str]], content_special: bool) -> list[int]: ...
    def text_tokens(self, text: str, parse_special: bool) -> list[int]: ...
    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]: ...
    def chat_template(self, messages: list[tuple[str, str]]) -> str: ...
    def token_to_piece(self, token: int) -> bytes: ...
    def encode_concept(self, concept: str) -> int: ...
    def concept_rows(self, concept: str) -> np.ndarray: ...
    def submit_many(self, requests: list[Request]) -> list[int]: ...
    def poll(self, id: int, timeout_ms: int, n_max: int = 256) -> tuple[list[int], list[float], list[float], list[tuple[float, list[tuple[int, float]]]], Result | None]: ...
    def wait_any(self, ids: list[int], timeout_ms: int) -> int: ...
    def trace(self, id: int) -> dict[str, np.ndarray]: ...
    def steer(self, id: int, request: Request) -> int: ...
    def cancel(self, id: int) -> None: ...
    def release(self, id: int) -> None: ...
    def stats(self) -> Stats: ...
    def set_steer_hook(self, fn: Callable[[np.ndarray, int], np.ndarray] | None) -> None: ...
    def exclusive(self, fn: Callable[[], None]) -> None: ...
    def seq_set_steering(self, seq: int, concept: str, flowtime: float, n_steps: int) -> int: ...
    def seq_decode(self, batch: list[tuple[int, list[int]]]) -> None: ...
    def seq_set_flowtime(self, seq: int, flowtime: float) -> None: ...
    def seq_reset(self, seq: int) -> None: ...
    def seq_rewind(self, seq: int, n_keep: int) -> None: ...
    def seq_set_trace(self, seq: int, on: bool) -> None: ...
    def seq_set_telemetry(self, seq: int, on: bool) -> None: ...
    def seq_displacement(self, seq: int) -> float: ...
    def seq_get(self, seq: int, what: str) -> np.ndarray: ...

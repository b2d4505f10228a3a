"""FlasModel: steered generation from a base GGUF and a flow GGUF."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from gguf import GGUFReader

from ._native import core, model_params, record
from .placement import base_layer_count, device_total, fit_gpu_layers, gib, parse_size
from . import completions
from .completions import stop_list
from .generation import ContextLengthError, Generation, Handle, Request, _Settings, raise_if_failed
from .prompting import (Flowtime, Message, c_float, c_int, check_request, check_steering, check_text, normalize_messages,
                        sampling_from)


def parse_rpc_servers(rpc_servers: str | Sequence[str] | None) -> list[str]:
    """["host:port", ...] from a list or llama.cpp's comma-separated form; checked."""
    if rpc_servers is None:
        return []
    items = rpc_servers.split(",") if isinstance(rpc_servers, str) else list(rpc_servers)
    out = []
    for item in items:
        e = str(item).strip()
        host, _, port = e.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"rpc server {e!r} is not host:port (e.g. 127.0.0.1:50052)")
        out.append(e)
    return out


class FlasModel:
    """A Gemma-2 base model (GGUF) steered by a FLAS flow (GGUF) inside llama.cpp's forward pass.

    `n_seq` sequences decode together in one batch, each with its own concept, strength and
    sampling; `n_ctx` is llama.cpp's whole context, shared: each sequence holds n_ctx // n_seq
    tokens (as llama-server's slots). Requests beyond n_seq wait for a free sequence
    (continuous batching). The decode loop runs on a C++ thread of its own, without the GIL.

    Threads: every method may be called from several threads at once; their requests are queued
    on the one engine and decoded together. close() (or leaving `with`) frees everything at once:
    requests still running end, and any later call raises RuntimeError("... closed ...").

    `exact=True` selects a float32 KV cache and no flash attention, for parity with a float32
    reference; the default uses llama.cpp's fast settings. `n_threads=None` uses one thread per
    physical core, as llama.cpp does. `concept_cache` encoded concepts are kept, shared by text.

    Devices, with llama-cpp-python's names and meanings: `n_gpu_layers` layers (the last ones;
    -1: all) go to the offload devices: this machine's GPUs and the ggml RPC servers in
    `rpc_servers` ("host:port", a list or a comma-separated string; RPC devices come first),
    split by `tensor_split` (proportions per device) with `main_gpu`. The flow, its caches and
    its compute live on the device that computes layer L. `memory()` says what each device holds.
    `gpu_memory="6GiB"` instead of n_gpu_layers offloads the most layers whose device total,
    with every sequence steered at the flow's N, fits; `placement` says what it chose.
    """

    def __init__(self, base: str | os.PathLike | None = None, flow: str | os.PathLike | None = None, n_ctx: int = 4096,
                 n_gpu_layers: int = 0, n_threads: int | None = None, exact: bool = False, n_batch: int = 512,
                 verbose: bool = False, n_seq: int = 1, concept_cache: int = 16,
                 rpc_servers: str | Sequence[str] | None = None, main_gpu: int = 0,
                 tensor_split: Sequence[float] | None = None, gpu_memory: str | int | None = None,
                 model_path: str | os.PathLike | None = None, seed: int = 0):
        if (base is None) == (model_path is None):
            raise ValueError("give the base model GGUF as base (or model_path, llama-cpp-python's name), once")
        base = base if base is not None else model_path
        if flow is None:
            raise ValueError("flow (the flow GGUF, flas-convert flow) is required")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.model_path: str = str(base)  # llama-cpp-python's name for the base model's file
        self.seed: int = seed              # of requests that give none
        for path, what in ((base, "base model GGUF"), (flow, "flow GGUF")):
            if not Path(path).is_file():
                raise ValueError(f"{what} not found: {path}")
        # types here; the ranges (n_seq, n_ctx per sequence, n_batch, concept_cache) are the core's
        # rules, said once there, whichever interface is used
        for name, value in (("n_seq", n_seq), ("n_ctx", n_ctx), ("n_batch", n_batch), ("concept_cache", concept_cache)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        self.rpc_servers: list[str] = parse_rpc_servers(rpc_servers)
        params = dict(n_ctx=n_ctx, n_batch=n_batch, n_seq=n_seq, concept_cache=concept_cache,
                      n_threads=n_threads or 0, exact=exact, verbose=verbose,
                      rpc_servers=self.rpc_servers, main_gpu=main_gpu, tensor_split=list(tensor_split or []))
        self.placement: str = ""
        if gpu_memory is None:
            # loaded on the scheduler's own thread, the one every decode then runs on
            self._m = core().Model(model_params(base=str(base), flow=str(flow), n_gpu_layers=n_gpu_layers, **params))
        else:
            if n_gpu_layers:
                raise ValueError("give n_gpu_layers or gpu_memory, not both")
            n_gpu_layers = self._load_within(str(base), str(flow), parse_size(gpu_memory), params)
        self.flow_info: dict = record(self._m.flow_info)  # flas_flow_info's fields
        self.n_ctx: int = self._m.n_ctx
        self.n_seq: int = n_seq
        self.n_ctx_seq: int = self._m.n_ctx_seq  # tokens one sequence holds
        self.n_gpu_layers: int = n_gpu_layers
        self.flow_device: str = self._m.flow_device  # the ggml device computing layer L and the flow
        self.family: str = self.flow_info["family"]  # the base model's family: gemma2, gemma3, qwen3 or llama

    def _load_within(self, base: str, flow: str, budget: int, params: dict) -> int:
        """Loads with the most layers whose offload device holds at most budget bytes once every
        sequence is steered at the flow's N (estimated, then checked on the real buffers)."""
        n_steps = int(GGUFReader(flow).get_field("flas.n_steps").contents())
        ngl, _ = fit_gpu_layers(base, flow, budget, n_steps, **params)
        while True:
            self._m = core().Model(model_params(base=base, flow=flow, n_gpu_layers=ngl, **params))
            self.reserve_steering(n_steps)
            used = device_total(self.memory())
            if used <= budget or ngl == 0:
                break
            self._m.close()  # the estimate leaves out the flow's compute buffer: one layer fewer
            ngl -= 1
        n_layer = base_layer_count(flow)
        dev = self._m.flow_device
        self.placement = (f"gpu_memory {gib(budget)}: n_gpu_layers {min(ngl, n_layer + 1)} of {n_layer + 1} "
                          f"(layers and output), the flow on {dev}; the offload device holds {gib(used)}")
        print(f"flas-cpp: {self.placement}", file=sys.stderr)
        return ngl

    @classmethod
    def from_pretrained(cls, repo: str, base: str | None = None, revision: str | None = None,
                        flow_outtype: str | None = None, **kwargs) -> "FlasModel":
        """A FLAS flow repository on the Hugging Face hub with the base its config names, or `base`
        ("REPO[:QUANT]": a GGUF repository's file, or a checkpoint converted to QUANT); downloaded
        and converted on first use, then cached (flas_cpp.hub.pull). kwargs: FlasModel's."""
        from .hub import pull

        base_gguf, flow_gguf = pull(repo, base=base, revision=revision, flow_outtype=flow_outtype)
        return cls(base_gguf, flow_gguf, **kwargs)

    def close(self) -> None:
        """Free the model, its context, the flow and every device buffer now (not when garbage
        collected). Requests still running end as cancelled; using the model afterwards raises."""
        self._m.close()

    def __enter__(self) -> "FlasModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def memory(self) -> list[dict]:
        """Bytes each device holds, one dict per device: device, type, description, base_weights,
        kv_cache, base_compute (llama.cpp's own accounting), flow_weights, flow_caches (concepts,
        each sequence's time embeddings and folded concept values, every steered sequence's flow KV
        cache), flow_compute, total. Flow caches
        and compute grow when a sequence is first steered with more Euler steps."""
        return [record(r) for r in self._m.memory()]

    def reserve_steering(self, n_steps: int) -> None:
        """Allocate now what steering every sequence with n_steps Euler steps holds (flow caches and
        compute buffer), so that memory() shows the model's full size before any request."""
        self._m.reserve(n_steps)

    # ---- prompts and tokens ----------------------------------------------------------------

    def prompt_tokens(self, prompt: str | None = None, messages: Sequence[Message] | None = None,
                      parse_special: bool = False) -> list[int]:
        """The prompt as trained: the chat template with the generation prompt (or alpaca), BOS first,
        built by the core (flas_chat_tokens). The template's markers are control tokens; the text of
        the prompt and messages stays text unless parse_special (then "<end_of_turn>" written in it
        is the control token). A prompt that cannot fit a sequence raises ContextLengthError."""
        if not isinstance(parse_special, bool):
            raise ValueError(f"parse_special must be True or False, got {parse_special!r}")
        return self._m.chat_tokens(normalize_messages(prompt, messages), parse_special)

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of text, as llama-cpp-python's Llama.tokenize (bytes; str is taken as UTF-8)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._m.tokenize(text, add_bos, special)

    def detokenize(self, tokens: Sequence[int]) -> bytes:
        """The bytes of the tokens, as llama-cpp-python's Llama.detokenize (decode them for text)."""
        return b"".join(self._m.token_to_piece(t) for t in tokens)

    # ---- llama-cpp-python's completion calls ----------------------------------------------------

    def create_completion(self, prompt: str, max_tokens: int | None = 16, temperature: float = 0.8,
                          top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0,
                          stop: str | Sequence[str] | None = None, repeat_penalty: float = 1.0, top_k: int = 40,
                          stream: bool = False, seed: int | None = None, concept: str | None = None,
                          flowtime: Flowtime = 2.0, n_steps: int | None = None,
                          logprobs: int | None = None) -> dict | Iterator[dict]:
        """llama-cpp-python's Llama.create_completion (the prompt as it is, its defaults, its dicts,
        stream=True: its chunks, logprobs=k: its choice["logprobs"]), steered by concept at flowtime
        (None: the base model)."""
        return completions.create(self, False, stream, max_tokens, prompt=prompt, temperature=temperature, top_p=top_p,
                                  min_p=min_p, typical_p=typical_p, stop=stop, repeat_penalty=repeat_penalty,
                                  top_k=top_k, seed=seed, concept=concept, flowtime=flowtime, n_steps=n_steps,
                                  logprobs=logprobs)

    def create_chat_completion(self, messages: Sequence[Message], temperature: float = 0.2, top_p: float = 0.95,
                               top_k: int = 40, min_p: float = 0.05, typical_p: float = 1.0, stream: bool = False,
                               stop: str | Sequence[str] | None = None, seed: int | None = None,
                               max_tokens: int | None = None, repeat_penalty: float = 1.0,
                               concept: str | None = None, flowtime: Flowtime = 2.0,
                               n_steps: int | None = None, logprobs: bool = False,
                               top_logprobs: int | None = None) -> dict | Iterator[dict]:
        """llama-cpp-python's Llama.create_chat_completion (the chat template, its defaults, its
        dicts, stream=True: its chunks, logprobs/top_logprobs: OpenAI's choice["logprobs"]), steered
        by concept at flowtime (None: the base model)."""
        return completions.create(self, True, stream, max_tokens, messages=messages, temperature=temperature,
                                  top_p=top_p, min_p=min_p, typical_p=typical_p, stop=stop,
                                  repeat_penalty=repeat_penalty, top_k=top_k, seed=seed, concept=concept,
                                  flowtime=flowtime, n_steps=n_steps,
                                  logprobs=(top_logprobs or 0) if logprobs else None)

    # ---- generation --------------------------------------------------------------------------

    # One request shape for submit, generate and stream: a Request, a dict of its fields, or its
    # fields as keyword arguments (a string first is the prompt). The fields: prompt or messages,
    # concept and flowtime (0, or no concept: the unsteered base model), n_steps (None: the
    # flow's), max_tokens, temperature, top_k, top_p, seed (None: the model's), any other field of
    # flas.h's flas_sampling_params by name (min_p, typical_p, repeat_penalty, ...), stop (the
    # text ends before the first of these strings: stop_reason "stop"), raw (the prompt as it is,
    # without the chat template), parse_special.

    def submit(self, request: Request | dict | str | None = None, **fields: Any) -> Handle:
        """Queue one request on the engine; returns its Handle at once. Safe to call from any
        thread. Bad fields, and a prompt longer than a sequence holds (ContextLengthError), raise
        ValueError here."""
        return self._submit_one(Request.make(request, fields))

    def generate(self, request: Request | dict | str | None = None, **fields: Any) -> Generation:
        """Generate one reply, e.g. generate("Tell me about your day.", concept="Talk like a pirate")."""
        return raise_if_failed(self.submit(request, **fields).result())

    def stream(self, request: Request | dict | str | None = None, **fields: Any) -> Iterator[Any]:
        """Text pieces as they decode; stop early by breaking out of the loop (or closing it). With
        telemetry=True, pairs (text, [TokenTelemetry of the tokens decoded with it])."""
        return self._stream(self.submit(request, **fields))

    def generate_many(self, requests: Iterable[Request | dict]) -> list[Generation]:
        """Every request, decoded together on the model's n_seq sequences (more requests wait for a
        free one); the Generations in the order of the requests. Every request is checked before
        any runs (ValueError naming its index); one that fails while running (a prompt longer than
        a sequence holds) has stop_reason "error" and .error, and the others finish."""
        return [h.result() for h in self._submit_all(requests)]

    def stream_many(self, requests: Iterable[Request | dict]) -> Iterator[tuple[int, str]]:
        """(index, text piece) as the requests decode together. After the last piece, a request that
        failed raises RuntimeError naming it."""
        handles = self._submit_all(requests)
        live = {h.id: (i, h) for i, h in enumerate(handles) if not h.done}
        try:
            while live:
                ready = self._m.wait_any(list(live), 100)
                if ready == 0:
                    continue
                i, h = live[ready]
                piece = h.poll(0)
                if h.done:
                    del live[ready]
                if piece:
                    yield i, piece
        finally:
            for _, h in live.values():
                h.cancel()
        failed = [(i, h.result().error) for i, h in enumerate(handles) if h.result().stop_reason == "error"]
        if failed:
            raise RuntimeError("; ".join(f"request {i} failed: {e}" for i, e in failed))

    def compare(self, prompt: str | None = None, concept: str | None = None, flowtime: float = 2.0,
                **kwargs) -> tuple[Generation, Generation]:
        """(baseline, steered): the same prompt, sampling settings and seed, with and without
        steering; decoded together when n_seq > 1."""
        check_steering(concept, flowtime, kwargs.get("n_steps") or self.flow_info["n_steps"])
        if concept is None:
            raise ValueError("compare needs a concept, e.g. concept=\"Talk like a pirate\"")
        base = dict(kwargs, prompt=prompt, concept=None, flowtime=0.0)
        steered = dict(kwargs, prompt=prompt, concept=concept, flowtime=flowtime)
        baseline, steered_gen = (raise_if_failed(g) for g in self.generate_many([base, steered]))
        return baseline, steered_gen

    def generate_batch(self, prompts: Sequence[str], concept: str, flowtimes: Sequence[float] = (0.5, 1.0, 2.0),
                       **kwargs) -> list[list[Generation]]:
        """Every prompt at every flowtime, like the reference's batch generation: result[i][j] is
        prompts[i] at flowtimes[j]. The concept is encoded once; the runs share the sequences."""
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of strings; use generate() for one prompt")
        flowtimes = list(flowtimes)
        reqs = [dict(kwargs, prompt=p, concept=concept, flowtime=ft) for p in prompts for ft in flowtimes]
        gens = [raise_if_failed(g) for g in self.generate_many(reqs)]
        return [gens[i * len(flowtimes):(i + 1) * len(flowtimes)] for i in range(len(prompts))]

    def trace(self, prompt: str | None = None, concept: str | None = None, flowtime: Flowtime = 2.0,
              n_steps: int | None = None, n_decode: int = 0, messages: Sequence[Message] | None = None) -> dict:
        """Layer-L rows before and after the flow for the prompt (and n_decode greedy steps).

        Returns tokens (every token processed), generated, unsteered and steered ([n_rows, H]
        float32 arrays), and logits (the prompt's last-token logits).
        """
        req = Request(prompt=prompt, messages=messages, concept=concept, flowtime=flowtime, n_steps=n_steps,
                      max_tokens=max(n_decode, 0) + 1, temperature=0.0, top_k=0, top_p=1.0, seed=0)
        s = self._settings(req)
        s.request.trace = True
        handle = self._start([s])[0]
        g = raise_if_failed(handle.result())
        generated = g.tokens[:n_decode]  # the last sampled token is not decoded
        return {"tokens": s.request.prompt + generated, "generated": generated, **handle.trace()}

    def encode_concept(self, concept: str) -> int:
        """Encode a concept now, ahead of the requests that will steer with it (they then find it
        in the concept cache, as repeated concepts do). Returns its token count."""
        if not isinstance(concept, str) or not concept.strip():
            raise ValueError("concept is empty; describe it in words, e.g. \"Talk like a pirate\"")
        return self._m.encode_concept(concept)

    def concept_rows(self, concept: str) -> np.ndarray:
        """The concept's encoding [K, H] float32 as steering computes it (FLAS_SPEC.md 2): the base's
        layers 0-1 and final norm over its first concept_max_len tokens. For trainers and tests."""
        return self._m.concept_rows(concept)  # the core's rule: a concept that is not empty

    def set_steer_hook(self, fn: Callable[[np.ndarray, int], np.ndarray] | None) -> None:
        """Advanced: replace the flow by fn(rows [n, H], first_position) -> steered rows, called in
        llama.cpp's forward pass for every sequence's layer-L rows (testing, research). None
        restores the flow. fn runs on the engine's thread."""
        self._m.set_steer_hook(fn)

    def stats(self) -> dict:
        """flas_stats: n_active (sequences decoding), n_queued (requests waiting for one), n_decoded
        (tokens through llama_decode), n_decode_calls, concepts_encoded, concept_hits, concepts_cached."""
        return record(self._m.stats())

    # ---- internals -----------------------------------------------------------------------------

    def _settings(self, r: Request, fail_alone: bool = False) -> _Settings:
        """r checked (its types here, its ranges by the core) and tokenized. With fail_alone, a
        prompt too long for a sequence gives settings that fail as that request's sequence would
        fail it (the others still run)."""
        seed = self.seed if r.seed is None else r.seed
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        req = self._steering(r.concept, r.flowtime, r.n_steps)
        req.max_tokens = c_int(r.max_tokens, "max_tokens")
        sampling_from(r, req.sampling)
        req.sampling.seed = seed & 0xFFFFFFFF
        if not isinstance(r.telemetry, bool):
            raise ValueError(f"telemetry must be true or false, got {r.telemetry!r}")
        req.telemetry = r.telemetry
        req.logprobs = -1 if r.logprobs is None else c_int(r.logprobs, "logprobs")  # its range: the core's
        check_request(req)
        stops = stop_list(r.stop)
        if r.raw and (not isinstance(r.prompt, str) or r.messages is not None):
            raise ValueError("a raw request takes a prompt string and no messages")
        error = None
        try:
            if isinstance(r.prompt, (list, tuple)):  # token ids, as they are (llama-cpp-python's List[int])
                req.prompt = self._token_prompt(r)
            elif r.raw:  # the prompt as it is, control tokens parsed, as llama.cpp's completions
                req.prompt = self._m.text_tokens(check_text(r.prompt, "the prompt"), True)
            else:
                req.prompt = self.prompt_tokens(r.prompt, r.messages, r.parse_special)
        except ContextLengthError as e:
            if not fail_alone:
                raise
            error = str(e)
        return _Settings(req, stops, error)

    def _steering(self, concept: str | None, flowtime: Flowtime, n_steps: int | None) -> Any:
        """An extension Request holding this steering, checked (its types here, its ranges by the
        core); a request's, or a running request's change (Handle.steer)."""
        n_steps = self.flow_info["n_steps"] if n_steps is None else n_steps
        schedule = check_steering(concept, flowtime, n_steps)
        req = core().Request()
        req.concept = "" if concept is None or (schedule is None and flowtime == 0) else concept
        if schedule is None:
            req.flowtime = c_float(flowtime)
        else:
            req.schedule = schedule
        req.n_steps = n_steps
        if req.concept:
            n_concept, limit = len(self._m.tokenize(req.concept, True, True)), self.flow_info["concept_max_len"]
            if n_concept > limit:
                warnings.warn(f"the concept is {n_concept} tokens; only the first {limit} are used, as in training",
                              stacklevel=5)
        return req

    @staticmethod
    def _token_prompt(r: Request) -> list[int]:
        """Type checks only: the core checks the ids against the vocabulary and the length against a sequence."""
        if r.messages is not None:
            raise ValueError("a prompt of token ids takes no messages")
        if not r.prompt or any(isinstance(t, bool) or not isinstance(t, int) for t in r.prompt):
            raise ValueError("a prompt of token ids is a non-empty list of integers")
        return list(r.prompt)

    def _submit_one(self, req: Request) -> Handle:
        """A single generation: a prompt too long for a sequence is a ValueError here, before it runs."""
        return self._start([self._settings(req)])[0]

    def _submit_all(self, requests: Iterable[Request | dict]) -> list[Handle]:
        if isinstance(requests, (str, dict, Request)):
            raise ValueError("requests must be a list of Requests or dicts; use generate() for one")
        settings = []
        for i, r in enumerate(requests):
            try:
                settings.append(self._settings(Request.of(r, i), fail_alone=True))
            except (ValueError, TypeError) as e:
                msg = str(e)
                raise ValueError(msg if msg.startswith(f"request {i}:") else f"request {i}: {msg}") from None
        return self._start(settings)

    def _start(self, settings: list[_Settings]) -> list[Handle]:
        """Queue them together: free sequences take them in the same decode step."""
        ids = iter(self._m.submit_many([s.request for s in settings if s.error is None]))
        return [Handle(self, s, next(ids) if s.error is None else 0) for s in settings]

    def _stream(self, handle: Handle) -> Iterator[Any]:
        if handle._s.request.telemetry:
            yield from ((p.text, p.telemetry) for p in handle.pieces())
        else:
            yield from handle
        raise_if_failed(handle.result())

"""What a generation asks for (Request), what it gives back (Generation), and the handle of a
request running on the engine (Handle)."""

from __future__ import annotations

import codecs
import dataclasses
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from .prompting import Message

# How long one wait inside the C++ engine lasts before Python looks at signals (Ctrl-C) again.
_WAIT_MS = 100


class ContextLengthError(ValueError):
    """A prompt longer than one sequence of the model holds."""


class DeviceLostError(RuntimeError):
    """An RPC server the model uses stopped answering: the model cannot be used any more (close
    it and load a new one; the process is fine)."""


@dataclass
class Request:
    """One generation: the keyword arguments of FlasModel.generate() as an object."""
    prompt: str | None = None
    concept: str | None = None
    flowtime: float = 2.0
    n_steps: int | None = None        # None: the flow's default
    max_tokens: int = 128
    temperature: float = 0.7
    top_k: int = 64
    top_p: float = 0.95
    seed: int = 0
    messages: Sequence[Message] | None = None
    raw: bool = False                 # the prompt as it is (BOS added), without the chat template

    @classmethod
    def of(cls, request: "Request | dict", index: int | None = None) -> "Request":
        """A Request from a Request or a dict of its fields; unknown fields are a ValueError."""
        if isinstance(request, Request):
            return request
        where = "" if index is None else f"request {index}: "
        if not isinstance(request, dict):
            raise ValueError(f"{where}a request is a dict of generate()'s keyword arguments or a flas_cpp.Request, "
                             f"got {type(request).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(request) - known)
        if unknown:
            raise ValueError(f"{where}unknown field {unknown[0]!r}; the fields are {', '.join(sorted(known))}")
        return cls(**request)


@dataclass
class Generation:
    """One generated reply."""
    text: str
    tokens: list[int]                 # generated tokens (the end-of-generation token excluded)
    n_prompt_tokens: int
    concept: str | None
    flowtime: float
    n_steps: int
    stop_reason: str                  # "eog", "max_tokens", "context", "cancelled" or "error"
    seconds: float = 0.0              # wall time of prefill + generation (waiting for a sequence excluded)
    prompt_seconds: float = 0.0       # of which prefill
    n_cached_tokens: int = 0          # prompt tokens its sequence already held (same steering)
    error: str | None = None          # why, when stop_reason is "error"

    @property
    def tokens_per_second(self) -> float:
        gen = self.seconds - self.prompt_seconds
        return len(self.tokens) / gen if gen > 0 else 0.0


@dataclass
class _Settings:
    """A validated request: tokens and the values the engine takes."""
    tokens: list[int]
    concept: str | None
    flowtime: float
    n_steps: int
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    trace: bool = False

    def engine_request(self, core: Any) -> Any:
        r = core.Request()
        r.prompt, r.concept, r.flowtime, r.n_steps = self.tokens, self.concept or "", self.flowtime, self.n_steps
        r.max_tokens, r.temperature, r.top_k, r.top_p = self.max_tokens, self.temperature, self.top_k, self.top_p
        r.seed, r.trace = self.seed & 0xFFFFFFFF, self.trace
        return r


class Handle:
    """A request submitted to the model's engine. Iterate it for the text pieces as they decode,
    or call result(); cancel() frees its sequence within one decode step. One consumer per handle."""

    def __init__(self, model: Any, settings: _Settings, id: int):
        self._m, self._s = model, settings
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tokens: list[int] = []
        self._text: list[str] = []
        self._final: dict | None = None
        self._lock = threading.Lock()
        self.id = id

    def __del__(self) -> None:
        try:  # an abandoned request stops decoding, and the engine forgets it
            self._m.release(self.id)
        except Exception:
            pass

    @property
    def done(self) -> bool:
        return self._final is not None

    def cancel(self) -> None:
        if self._final is None:
            try:
                self._m.cancel(self.id)
            except RuntimeError:  # the model is closed or its device lost: the request is over anyway
                pass

    def poll(self, timeout_ms: int = _WAIT_MS) -> str:
        """The text decoded since the last poll (waiting up to timeout_ms for some)."""
        with self._lock:
            if self._final is not None:
                return ""
            update = self._m.poll(self.id, timeout_ms)
            pieces = []
            for tok in update["tokens"]:
                self._tokens.append(tok)
                pieces.append(self._utf8.decode(self._m.token_to_piece(tok)))
            if update["done"]:
                pieces.append(self._utf8.decode(b"", final=True))
                self._final = update
            piece = "".join(pieces)
            if piece:
                self._text.append(piece)
            return piece

    def __iter__(self) -> Iterator[str]:
        try:
            while self._final is None:
                piece = self.poll()
                if piece:
                    yield piece
        finally:
            self.cancel()  # a consumer that stops early ends the request

    def result(self) -> Generation:
        """Waits for the end; the Generation (stop_reason "error" with .error when it failed)."""
        try:
            while self._final is None:
                self.poll()
        except BaseException:
            self.cancel()
            raise
        f, s = self._final, self._s
        return Generation("".join(self._text), list(self._tokens), len(s.tokens), s.concept,
                          s.flowtime if s.concept else 0.0, s.n_steps, f["finish"], f["seconds"], f["prompt_seconds"],
                          f["n_cached"], f["error"] or None)

    def trace(self) -> dict[str, np.ndarray]:
        """Layer-L rows before/after steering and the prompt's logits (traced requests, once done)."""
        self.result()
        return self._m.trace(self.id)

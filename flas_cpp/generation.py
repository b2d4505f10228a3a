"""What a generation asks for (Request), what it gives back (Generation), and the handle of a
request running on the engine (Handle)."""

from __future__ import annotations

import codecs
import dataclasses
import threading
from types import SimpleNamespace
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from .prompting import Flowtime, Message

# How long one wait inside the C++ engine lasts before Python looks at signals (Ctrl-C) again.
_WAIT_MS = 100


class ContextLengthError(ValueError):
    """A prompt longer than one sequence of the model holds."""


class RequestNotFoundError(ValueError):
    """An unknown request, or one that has ended (a change of steering that came too late)."""


class DeviceLostError(RuntimeError):
    """An RPC server the model uses stopped answering: the model cannot be used any more (close
    it and load a new one; the process is fine)."""


@dataclass
class Request:
    """One generation: the keyword arguments of FlasModel.generate() as an object."""
    prompt: str | Sequence[int] | None = None  # a list of token ids: the prompt as it is (no template, no BOS added)
    concept: str | None = None
    # T, or a schedule over the generated tokens: [(token, T), ...], linear between, the last held
    # (flowtime=[(0, 0.5), (32, 2.0)] ramps from 0.5 to 2 over the first 32 tokens)
    flowtime: float | Sequence[tuple[int, float]] = 2.0
    n_steps: int | None = None        # None: the flow's default
    max_tokens: int = 128
    temperature: float = 0.7
    top_k: int = 64
    top_p: float = 0.95
    seed: int | None = None           # None: the model's seed (FlasModel(seed=...), 0 by default)
    messages: Sequence[Message] | None = None
    raw: bool = False                 # the prompt as it is (BOS added), without the chat template
    stop: str | Sequence[str] | None = None  # the reply ends before the first of these strings
    parse_special: bool = False       # control-token text in the prompt/messages is a control token (else text)
    telemetry: bool = False           # measure each token's displacement: Generation.telemetry, stream() pairs
    logprobs: int | None = None       # k: each token's log-probability and its k most likely alternatives (0..20)
    # The other fields of flas.h's struct flas_sampling_params by name, each off unless set, e.g.
    # min_p, typical_p, repeat_penalty, repeat_last_n (the core's defaults and ranges); keyword
    # arguments of these names land here, so a new sampler in the core needs no field here.
    sampling: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.sampling, dict):
            raise ValueError(f"sampling must be a dict of flas_sampling_params fields, got {self.sampling!r}")
        others = other_sampling_fields()
        for name in self.sampling:
            if name not in others:
                raise ValueError(f"sampling: unknown field {name!r}; it takes {', '.join(sorted(others))}")

    @classmethod
    def make(cls, request: "Request | dict | str | None", fields: dict) -> "Request":
        """The request of submit(), generate() and stream(): a Request, a dict of its fields, or its
        fields as keyword arguments (a string first is the prompt)."""
        if request is None or isinstance(request, str):
            if request is not None:
                if "prompt" in fields:
                    raise ValueError("the prompt is given twice: first and as prompt=")
                fields = {"prompt": request, **fields}
            return cls.of(fields)
        if fields:
            raise ValueError("give a Request (or a dict of its fields) or keyword arguments, not both")
        return cls.of(request)

    @classmethod
    def of(cls, request: "Request | dict", index: int | None = None) -> "Request":
        """A Request from a Request or a dict of its fields; unknown fields are a ValueError."""
        if isinstance(request, Request):
            return request
        where = "" if index is None else f"request {index}: "
        if not isinstance(request, dict):
            raise ValueError(f"{where}a request is a dict of generate()'s keyword arguments or a flas_cpp.Request, "
                             f"got {type(request).__name__}")
        own = {f.name for f in dataclasses.fields(cls)}
        sampling = other_sampling_fields()
        unknown = sorted(set(request) - own - sampling)
        if unknown:
            raise ValueError(f"{where}unknown field {unknown[0]!r}; the fields are {', '.join(sorted(own | sampling))}")
        fields = {k: v for k, v in request.items() if k in own}
        extra = {k: v for k, v in request.items() if k in sampling}
        if extra:
            fields["sampling"] = {**(fields.get("sampling") or {}), **extra}
        return cls(**fields)


def other_sampling_fields() -> set[str]:
    """The fields of flas.h's struct flas_sampling_params (as the extension binds it) that Request
    does not name itself: they go in Request.sampling (min_p, typical_p, repeat_penalty, ...)."""
    from ._native import core, record

    return set(record(core().SamplingParams())) - {f.name for f in dataclasses.fields(Request)}


class TokenTelemetry(NamedTuple):
    """What one generated token was decoded with (flas.h's struct flas_token_data)."""
    flowtime: float                   # the strength of the forward pass that sampled it (0: unsteered)
    displacement: float               # ||h' - h|| / ||h|| of that pass's layer-L row: how far the flow moved it


class TokenLogprob(NamedTuple):
    """A generated token's log-probability under the forward pass that sampled it (log-softmax of
    its logits, before temperature and penalties) and the most likely tokens there, most likely first."""
    token: int
    logprob: float
    top: list[tuple[int, float]]      # (token, logprob)


class Piece(NamedTuple):
    """Text as it streams, with what its tokens were decoded with (each empty unless asked for)."""
    text: str
    telemetry: list[TokenTelemetry]
    logprobs: list[TokenLogprob]


@dataclass
class Generation:
    """One generated reply."""
    text: str                         # the tokens' bytes as UTF-8 (invalid bytes dropped, as llama-cpp-python does)
    tokens: list[int]                 # generated tokens (the end-of-generation token excluded)
    n_prompt_tokens: int
    concept: str | None
    flowtime: float | list[tuple[int, float]]  # the request's (0 unsteered)
    n_steps: int
    stop_reason: str                  # "eog", "stop" (a stop string), "max_tokens", "context", "cancelled" or "error"
    seconds: float = 0.0              # wall time of prefill + generation (waiting for a sequence excluded)
    prompt_seconds: float = 0.0       # of which prefill
    n_cached_tokens: int = 0          # prompt tokens its sequence already held (same steering)
    error: str | None = None          # why, when stop_reason is "error"
    error_status: int = 0             # and flas.h's status of that error (raise_if_failed raises its exception)
    # Handle.steer's changes while it ran, in order: {"token": the first generated token each
    # steered, "concept", "flowtime", "n_steps"} (concept, flowtime and n_steps above: as submitted)
    changes: list[dict] = dataclasses.field(default_factory=list)
    telemetry: list[TokenTelemetry] | None = None  # one per token, for a request with telemetry=True
    logprobs: list[TokenLogprob] | None = None     # one per token, for a request with logprobs=k

    @property
    def tokens_per_second(self) -> float:
        gen = self.seconds - self.prompt_seconds
        return len(self.tokens) / gen if gen > 0 else 0.0


@dataclass
class _Settings:
    """A checked request: the extension's Request (flas_request_params, prompt tokens included) and
    what Python adds to it."""
    request: Any
    stops: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None          # fails without running (a prompt too long for a sequence)


def raise_if_failed(g: Generation) -> Generation:
    """g, or the exception of a generation that failed: by its status, DeviceLostError when its
    device is gone, ContextLengthError when its prompt did not fit, RuntimeError otherwise."""
    if g.stop_reason == "error":
        from ._native import core

        core().raise_status(g.error_status, g.error or "")
    return g


class StopMatcher:
    """Cuts the text at the first stop string, holding back what could be the start of one.

    An Aho-Corasick automaton over the stop strings: each character fed costs O(1) amortized
    whatever the strings' lengths (checking the held text against every prefix of every stop
    string cost O(length^2) per token). The state is the longest end of the text that begins a
    stop string, which is exactly what must be held back."""

    def __init__(self, stops: Sequence[str]):
        self.stops, self.held, self.stopped = list(stops), "", False
        self._goto: list[dict[str, int]] = [{}]
        depth, longest = [0], [0]  # longest: of the stop strings ending at this state, the longest
        for stop in self.stops:
            state = 0
            for ch in stop:
                if ch not in self._goto[state]:
                    self._goto.append({})
                    depth.append(depth[state] + 1)
                    longest.append(0)
                    self._goto[state][ch] = len(self._goto) - 1
                state = self._goto[state][ch]
            longest[state] = len(stop)
        fail = [0] * len(self._goto)
        queue = list(self._goto[0].values())
        for state in queue:  # breadth first: a state's fallback is shallower, so already done
            for ch, nxt in self._goto[state].items():
                f = fail[state]
                while f and ch not in self._goto[f]:
                    f = fail[f]
                fail[nxt] = self._goto[f].get(ch, 0) if self._goto[f].get(ch, 0) != nxt else 0
                longest[nxt] = max(longest[nxt], longest[fail[nxt]])
                queue.append(nxt)
        self._fail, self._depth, self._longest, self._state = fail, depth, longest, 0

    def feed(self, piece: str) -> str:
        """The text that is safe to send now."""
        if self.stopped or not self.stops:
            return "" if self.stopped else piece
        goto, fail, state, first = self._goto, self._fail, self._state, -1
        base = len(self.held)
        for k, ch in enumerate(piece):
            while state and ch not in goto[state]:
                state = fail[state]
            state = goto[state].get(ch, 0)
            if self._longest[state]:  # a stop string ends here; keep looking for one starting earlier
                start = base + k + 1 - self._longest[state]
                first = start if first < 0 else min(first, start)
        text = self.held + piece
        if first >= 0:
            self.stopped, self.held = True, ""
            return text[:first]
        self._state, keep = state, self._depth[state]
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out


class Handle:
    """A request submitted to the model's engine. Iterate it for the text pieces as they decode,
    or call result(); steer() changes its steering from the next token on, cancel() frees its
    sequence within one decode step (both from any thread). One consumer per handle."""

    def __init__(self, owner: Any, settings: _Settings, id: int):
        self._owner, self._m, self._s = owner, owner._m, settings  # the FlasModel and its extension model
        self._changes: list[dict] = []
        # bytes that are not UTF-8 (a model's stray byte tokens) are dropped, as llama-cpp-python does
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._tokens: list[int] = []
        self._telemetry: list[TokenTelemetry] = []
        self._logprobs: list[TokenLogprob] = []
        self._text: list[str] = []
        self._final: Any = None  # the extension's Result (flas_result), once the request has ended
        self._lock = threading.Lock()
        self._stop = StopMatcher(settings.stops)
        self._n_prompt = len(settings.request.prompt)
        self._n_at_stop: int | None = None  # tokens when a stop string appeared (more may follow until cancelled)
        self._cancelled = False             # no more text is made: its tokens are only drained
        self.id = id
        if settings.error is not None:  # never submitted
            from ._native import core

            self._final = SimpleNamespace(finish=core().Finish.ERROR, status=core().ERR_CONTEXT_LENGTH,
                                          error=settings.error, n_cached=0, prompt_seconds=0.0, seconds=0.0)

    def __del__(self) -> None:
        try:  # an abandoned request stops decoding, and the engine forgets it
            if self.id:
                self._m.release(self.id)
        except Exception:
            pass

    @property
    def done(self) -> bool:
        return self._final is not None

    def cancel(self) -> None:
        self._cancelled = True
        if self._final is None:
            try:
                self._m.cancel(self.id)
            except RuntimeError:  # the model is closed or its device lost: the request is over anyway
                pass

    def steer(self, concept: str | None = None, flowtime: Flowtime | None = None, n_steps: int | None = None) -> int:
        """Steer the rest of the reply with these settings (as generate() takes them; flowtime
        None: 2 with a concept; concept None or flowtime 0: unsteered from here); the text so far
        stays. A schedule counts its tokens from the change. Waits until the change is in force (at most a decode step and the new
        concept's encoding) and returns the index of the first generated token it steers.

        ValueError: bad settings, or a change this flow cannot make (with self-attention in the
        flow: steering a request that started unsteered, or a new n_steps); the request goes on
        as it was. RequestNotFoundError: the request has ended (or ends before the change)."""
        if flowtime is None:
            flowtime = 2.0 if concept is not None else 0.0
        req = self._owner._steering(concept, flowtime, n_steps)
        if not self.id:
            raise RequestNotFoundError("this request never started (its prompt did not fit a sequence)")
        at = self._m.steer(self.id, req)
        self._changes.append({"token": at, "concept": req.concept or None, "flowtime": flowtime if req.concept else 0.0,
                              "n_steps": req.n_steps})
        return at

    def poll(self, timeout_ms: int = _WAIT_MS) -> str:
        """The text decoded since the last poll (waiting up to timeout_ms for some)."""
        return self.poll_piece(timeout_ms).text

    def poll_piece(self, timeout_ms: int = _WAIT_MS) -> Piece:
        """poll(), with the telemetry and log-probabilities of the tokens decoded since (each empty
        unless the request asked for it)."""
        with self._lock:
            if self._final is not None:
                return Piece("", [], [])
            tokens, flowtimes, displacements, logprobs, end = self._m.poll(self.id, timeout_ms)
            new = list(map(TokenTelemetry, flowtimes, displacements)) if self._s.request.telemetry else []
            self._telemetry += new
            new_logprobs = ([TokenLogprob(t, lp, top) for t, (lp, top) in zip(tokens, logprobs)]
                            if self._s.request.logprobs >= 0 else [])
            self._logprobs += new_logprobs
            pieces = []
            for tok in tokens:
                self._tokens.append(tok)
                if self._cancelled:  # tokens decoded before the cancel reached the engine
                    continue
                pieces.append(self._stop.feed(self._utf8.decode(self._m.token_to_piece(tok))))
                if self._stop.stopped and self._n_at_stop is None:
                    self._n_at_stop = len(self._tokens)
                    self.cancel()
            if end is not None and not self._cancelled:
                pieces.append(self._stop.feed(self._utf8.decode(b"", final=True)))
                pieces.append(self._stop.flush())
            self._final = end
            piece = "".join(pieces)
            if piece:
                self._text.append(piece)
            return Piece(piece, new, new_logprobs)

    def __iter__(self) -> Iterator[str]:
        for piece in self.pieces():
            if piece.text:
                yield piece.text

    def pieces(self) -> Iterator[Piece]:
        """Pieces as they decode (text, and its tokens' telemetry and log-probabilities when asked
        for); the text may be "" when a stop string or an unfinished UTF-8 character holds it back
        while its tokens' data still comes."""
        try:
            while self._final is None:
                piece = self.poll_piece()
                if piece.text or piece.telemetry or piece.logprobs:
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
        f, r = self._final, self._s.request
        tokens = self._tokens[:self._n_at_stop] if self._n_at_stop is not None else self._tokens
        failed = f.finish == f.finish.ERROR
        reason = "stop" if self._n_at_stop is not None and not failed else f.finish.name.lower()
        telemetry = self._telemetry[:len(tokens)] if r.telemetry else None
        logprobs = self._logprobs[:len(tokens)] if r.logprobs >= 0 else None
        return Generation("".join(self._text), list(tokens), self._n_prompt, r.concept or None,
                          r.flowtime if r.concept else 0.0, r.n_steps, reason, f.seconds, f.prompt_seconds,
                          f.n_cached, f.error or None, f.status, list(self._changes), telemetry, logprobs)

    def trace(self) -> dict[str, np.ndarray]:
        """Layer-L rows before/after steering and the prompt's logits (traced requests, once done)."""
        self.result()
        return self._m.trace(self.id)

"""OpenAI's request and response shapes: a body checked field by field into a flas_cpp.Request,
errors in OpenAI's form, and the response and stream-chunk objects."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from .. import completions
from .._native import core, record
from ..generation import Generation, Piece, Request, other_sampling_fields
from ..prompting import check_steering

ROLES = ("system", "user", "assistant")

# Bounds on what a body may ask for, so that every value reaches the core in range and no field
# costs more than its worth (each is a 400 naming the field and its range).
INT32_MAX = 2**31 - 1    # the C API's counts
MAX_FLOWTIME = 100.0     # T: the paper steers at 2, 0.5 to 4 is reported stable
MAX_STOPS = 4            # OpenAI's limit
MAX_STOP_CHARS = 1000
MAX_CONCEPT_CHARS = 2000  # the flow reads a concept's first 64 tokens; this is far beyond them
MAX_BREAKPOINTS = 64     # of a flowtime schedule; a slider's few points are far below
MAX_TOP_LOGPROBS = 20    # alternatives per token (flas.h's FLAS_MAX_TOP_LOGPROBS, OpenAI's chat limit)


class ApiError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Steering:
    """What a request is steered by; concept None (or flowtime 0) is the unsteered model."""
    concept: str | None = None
    flowtime: float | list[tuple[int, float]] = 2.0  # T, or a schedule [(token, T), ...]
    n_steps: int | None = None
    telemetry: bool = False           # each token's flowtime and displacement in the chunks and the response

    @property
    def active(self) -> bool:
        peak = self.flowtime if isinstance(self.flowtime, (int, float)) else max(t for _, t in self.flowtime)
        return self.concept is not None and peak > 0

    def as_dict(self, default_steps: int) -> dict | None:
        if not self.active:
            return None
        return {"concept": self.concept, "flowtime": self.flowtime, "n_steps": self.n_steps or default_steps}

    @classmethod
    def parse_preset(cls, text: str) -> tuple[str, "Steering"]:
        """NAME=CONCEPT[@T[:N]] -> (NAME, Steering); ValueError when malformed."""
        name, sep, rest = text.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise ValueError(f"--preset {text!r}: expected NAME=CONCEPT[@T[:N]], e.g. pirate=\"Talk like a pirate\"@2:3")
        concept, at, strength = rest.rpartition("@") if "@" in rest else (rest, "", "")
        flowtime, n_steps = 2.0, None
        if at:
            t, colon, n = strength.partition(":")
            try:
                flowtime = float(t)
                n_steps = int(n) if colon else None
            except ValueError:
                raise ValueError(f"--preset {text!r}: T must be a number and N an integer (NAME=CONCEPT@T:N)") from None
        if not concept.strip():
            raise ValueError(f"--preset {text!r}: needs a concept before @")
        try:  # the core's steering rules (N defaults to the flow's, which meets them)
            core().check_steering(concept.strip(), flowtime, 1 if n_steps is None else n_steps)
        except ValueError as e:
            raise ValueError(f"--preset {text!r}: {e}") from None
        return name.strip(), cls(concept.strip(), flowtime, n_steps)


@dataclass
class Completion:
    """A checked request body."""
    request: Request
    model: str
    steering: Steering
    stream: bool = False
    include_usage: bool = False


# ---- field checks ------------------------------------------------------------------------------

def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param)


def _shown(v: Any) -> str:
    """A value in a message, cut short: a 4,000-digit number is not echoed whole."""
    text = repr(v) if not isinstance(v, int) or abs(v) < 10**30 else f"an integer of {len(str(abs(v)))} digits"
    return text if len(text) <= 60 else text[:57] + "..."


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False,
            where: str = "") -> float:
    """body[name], a finite number in range; where: the object holding it ("steering.")."""
    v = body.get(name)
    name = where + name
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise _bad(name, f"must be a finite number, got {_shown(v)}")
    if v < lo or (lo_open and v == lo) or v > hi:  # exact for integers of any size: no float overflow
        raise _bad(name, f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {_shown(v)}")
    return float(v)


def _integer(body: dict, name: str, default: int | None, lo: int, hi: int = INT32_MAX, where: str = "") -> int | None:
    v = body.get(name)
    name = where + name
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, f"must be an integer, got {_shown(v)}")
    if not lo <= v <= hi:
        raise _bad(name, f"must be in {lo}..{hi}, got {_shown(v)}")
    return v


def parse_json(body: bytes) -> Any:
    """The body as JSON, refused (400) when it is not JSON, is nested too deeply for the parser, or
    holds a string that is not Unicode text (a lone surrogate escape such as "\\ud800")."""
    try:
        obj = json.loads(body)
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    stack = [(obj, "")]  # iterative: a deep body must not exhaust the stack here either
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                where = path or "the body"
                raise ApiError(400, f"{where}: contains a lone surrogate ({value[e.start]!r}), which is not Unicode "
                                    "text", param=path or None) from None
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((k, path))
                stack.append((v, f"{path}.{k}" if path else str(k)))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
    return obj


def _text(content: Any, param: str) -> str:
    """A message content: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise _bad(param, "must be a string or a list of text parts")


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages", "must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _bad(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {m.get('role') if isinstance(m, dict) else m!r}")
        out.append({"role": m["role"], "content": _text(m.get("content"), f"messages[{i}].content")})
    if out[-1]["role"] != "user":
        raise _bad("messages", "must end with a user message (the model answers it)")
    return out


def _schedule(points: list) -> list[tuple[int, float]]:
    """steering.flowtime as [[token, T], ...]: each pair's types and the server's caps."""
    name = "steering.flowtime"
    if not 1 <= len(points) <= MAX_BREAKPOINTS:
        raise _bad(name, f"a schedule holds 1..{MAX_BREAKPOINTS} breakpoints [token, flowtime], got {len(points)}")
    out = []
    for i, p in enumerate(points):
        if not isinstance(p, list) or len(p) != 2 or None in p:
            raise _bad(name, f"breakpoint {i} must be a pair [token, flowtime], got {_shown(p)}")
        out.append((_integer({"token": p[0]}, "token", None, -INT32_MAX, where=f"{name}[{i}]."),
                    _number({"flowtime": p[1]}, "flowtime", 0.0, -math.inf, MAX_FLOWTIME, where=f"{name}[{i}].")))
    return out


def _steering(body: dict, base: Steering) -> Steering:
    s = body.get("steering")
    if s is None:
        return base
    if not isinstance(s, dict):
        raise _bad("steering", "must be an object {\"concept\", \"flowtime\", \"n_steps\", \"telemetry\"}")
    telemetry = s.get("telemetry", base.telemetry)
    if not isinstance(telemetry, bool):
        raise _bad("steering.telemetry", f"must be true or false, got {_shown(telemetry)}")
    concept = s.get("concept", base.concept)
    if concept is not None and (not isinstance(concept, str) or not concept.strip()):
        raise _bad("steering.concept", "must be a non-empty string (or null for no steering)")
    if concept is not None and len(concept) > MAX_CONCEPT_CHARS:
        raise _bad("steering.concept", f"is {len(concept)} characters; at most {MAX_CONCEPT_CHARS} (the flow reads "
                                       "a concept's first 64 tokens)")
    # types and the server's own caps here; the steering rules are the core's (flas_check_steering,
    # flas_check_request for a schedule)
    if isinstance(s.get("flowtime"), list):
        flowtime = _schedule(s["flowtime"])
    else:
        flowtime = _number(s, "flowtime", base.flowtime if concept == base.concept else 2.0, -math.inf, MAX_FLOWTIME,
                           where="steering.")
    n_steps = _integer(s, "n_steps", base.n_steps, -INT32_MAX, where="steering.")
    try:
        check_steering(concept, flowtime, 1 if n_steps is None else n_steps)
    except ValueError as e:
        field = str(e).split(" ", 1)[0]
        raise _bad(f"steering.{field if field in ('flowtime', 'n_steps') else 'concept'}", str(e)) from None
    return Steering(concept, flowtime, n_steps, telemetry)


def parse_steering(body: Any, current: Steering) -> Steering:
    """The body of POST /v1/steering/{id}: a steering object (a completion's "steering"), the
    fields it omits those of the steering in force; ApiError otherwise."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object {\"concept\", \"flowtime\", \"n_steps\"}")
    if "telemetry" in body:
        raise _bad("telemetry", "is set when a completion starts; a change of steering keeps it")
    return _steering({"steering": body}, current)


def parse_completion(body: Any, chat: bool, models: dict[str, Steering], default_model: str,
                     default_max_tokens: int) -> Completion:
    """The body of /v1/chat/completions (chat) or /v1/completions as a Completion; ApiError otherwise.
    Without max_tokens a reply may fill its sequence's context (default_max_tokens)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model") or default_model
    if not isinstance(model, str) or model not in models:
        raise ApiError(404, f"model {_shown(model)} does not exist; GET /v1/models lists them ({', '.join(models)})",
                       param="model", code="model_not_found")
    if _integer(body, "n", 1, 1) != 1:
        raise _bad("n", "only n = 1 is supported")
    steering = _steering(body, models[model])
    max_tokens = _integer(body, "max_completion_tokens", None, 1)
    max_tokens = _integer(body, "max_tokens", max_tokens, 1)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    top_k = _integer(body, "top_k", 0, 0)
    # llama-server's extensions: the other sampling fields by flas_sampling_params' names (min_p,
    # typical_p, repeat_penalty, repeat_last_n), types here, ranges the core's (a 400 with its message)
    others = other_sampling_fields()
    sampling = {name: (_integer(body, name, None, -2**63, 2**63) if isinstance(default, int)
                       else _number(body, name, None, -math.inf, math.inf))
                for name, default in record(core().SamplingParams()).items()
                if name in others and body.get(name) is not None}
    # logprobs: chat's "logprobs": true with "top_logprobs" 0..20; completions' "logprobs" 0..20 (the
    # number of alternatives; OpenAI's own limit there is 5)
    if chat:
        wants = body.get("logprobs", False)
        if wants is not None and not isinstance(wants, bool):
            raise _bad("logprobs", f"must be true or false, got {_shown(wants)}")
        top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
        if top is not None and not wants:
            raise _bad("top_logprobs", "needs \"logprobs\": true")
        logprobs = (top or 0) if wants else None
    else:
        logprobs = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    seed = _integer(body, "seed", None, -2**63, 2**64 - 1)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop)
                             or len(stop) > MAX_STOPS):
        raise _bad("stop", f"must be a string or a list of at most {MAX_STOPS} non-empty strings")
    if stop is not None and any(len(x) > MAX_STOP_CHARS for x in stop):
        raise _bad("stop", f"a stop string is {max(len(x) for x in stop)} characters; at most {MAX_STOP_CHARS}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", f"must be true or false, got {stream!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", "must be an object")
    if chat:
        prompt_fields = dict(messages=_messages(body))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise _bad("prompt", "must be a non-empty string")
        prompt_fields = dict(prompt=prompt, raw=True)
    request = Request(concept=steering.concept if steering.active else None,
                      flowtime=steering.flowtime if steering.active else 0.0, n_steps=steering.n_steps,
                      max_tokens=max_tokens or default_max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      sampling=sampling,
                      seed=seed if seed is not None else int.from_bytes(os.urandom(4), "little"), stop=stop,
                      telemetry=steering.telemetry, logprobs=logprobs, **prompt_fields)
    return Completion(request, model, steering, stream, bool(options.get("include_usage")))


def telemetry_json(items: list) -> list[dict]:
    """Telemetry in a chunk or a response: one object per token."""
    return [{"flowtime": round(t.flowtime, 6), "displacement": round(t.displacement, 6)} for t in items]


def prompt_offset(c: Completion, chat: bool) -> int:
    """Where a completion's text starts for its logprobs' text_offset (after the prompt, as llama-cpp-python)."""
    return 0 if chat else len(c.request.prompt)


def response(c: Completion, chat: bool, rid: str, text: str, g: Generation, steering: dict | None,
             model: Any) -> dict:
    extra = {"telemetry": telemetry_json(g.telemetry or [])} if c.steering.telemetry else {}
    logprobs = (completions.logprobs_json(model, chat, g.logprobs or [], prompt_offset(c, chat))
                if c.request.logprobs is not None else None)
    return completions.response(chat, rid, c.model, text, g, logprobs, steering=steering, **extra)


def chunk(c: Completion, chat: bool, rid: str, created: int, steering: dict | None, text: str | None = None,
          role: bool = False, finish: str | None = None, piece: Piece | None = None, model: Any = None,
          offset: int = 0) -> dict:
    """A stream chunk: of a piece (its text, and its tokens' telemetry and logprobs when asked for),
    or the role's or the end's."""
    if piece is not None:
        text = piece.text
    extra = {"telemetry": telemetry_json(piece.telemetry if piece else [])} if c.steering.telemetry else {}
    logprobs = (completions.logprobs_json(model, chat, piece.logprobs, offset)
                if piece is not None and c.request.logprobs is not None else None)
    return completions.chunk(chat, rid, created, c.model, text=text, role=role, finish=finish, logprobs=logprobs,
                             steering=steering, **extra)


def usage_chunk(c: Completion, chat: bool, rid: str, created: int, g: Generation) -> dict:
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": c.model, "choices": [], "usage": completions.usage(g.n_prompt_tokens, len(g.tokens))}

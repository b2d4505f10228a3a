"""Prompts as the flow was trained on them (FLAS_SPEC.md section 5), and checks of user input."""

from __future__ import annotations

import math
from typing import Any, Sequence, Tuple, Union

from ._native import core, record

Message = dict  # {"role": "user" | "assistant" | "model" | "system", "content": str}


def check_text(text: str, what: str) -> str:
    """text, if the core can take it: UTF-8 without NUL (a C string ends there)."""
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL character ('\\0'), where a C string ends; remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} contains a lone surrogate ({text[e.start]!r} at character {e.start}), "
                         "which is not Unicode text") from None
    return text


def normalize_messages(prompt: str | None, messages: Sequence[Message] | None) -> list[tuple[str, str]]:
    """(role, content) pairs for the chat template: one user turn, or a conversation ending in one."""
    if (prompt is None) == (messages is None):
        raise ValueError("pass either a prompt or messages=[...], not both or neither")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        return [("user", check_text(prompt, "the prompt"))]
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "user", "assistant", "model", "system"):
            raise ValueError(f"messages[{i}] must be {{'role': 'user'|'assistant'|'system', 'content': str}}, got {m!r}")
        out.append(("assistant" if m["role"] == "model" else m["role"], check_text(m["content"], f"messages[{i}]")))
    if not out or out[-1][0] != "user":
        raise ValueError("messages must end with a user turn (the model answers it)")
    return out


INT32_MAX = 2**31 - 1  # the C API's counts are int32_t


def _finite(v: object) -> bool:
    """A real number that a C float holds: not bool, not NaN or Inf, not an integer past a double."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _int32(v: object, lo: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and lo <= v <= INT32_MAX


Flowtime = Union[float, Sequence[Tuple[int, float]]]  # T, or a schedule [(token, T), ...]


def schedule_of(flowtime: Flowtime) -> list[tuple[int, float]] | None:
    """A flowtime's schedule, its types checked (None: a number); the rules on its tokens and
    values are the core's (flas.h, struct flas_request_params)."""
    if isinstance(flowtime, (int, float)) and not isinstance(flowtime, bool):
        return None
    bad = ValueError(f"flowtime must be a number or a schedule of (token, flowtime) pairs, e.g. [(0, 0.5), (32, 2.0)], "
                     f"got {flowtime!r}")
    if isinstance(flowtime, (str, bytes)) or not isinstance(flowtime, Sequence) or not flowtime:
        raise bad
    points = []
    for p in flowtime:
        if (isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or len(p) != 2 or not _int32(p[0], -INT32_MAX)
                or isinstance(p[1], bool) or not isinstance(p[1], (int, float))):
            raise bad
        points.append((p[0], c_float(p[1])))
    return points


def check_steering(concept: str | None, flowtime: Flowtime, n_steps: int) -> list[tuple[int, float]] | None:
    """Types here; the ranges and the concept rule are the core's (flas_check_steering, for each
    flowtime of a schedule), with the messages every interface gives. Returns the schedule (None:
    a number), as schedule_of."""
    schedule = schedule_of(flowtime)
    if not _int32(n_steps, -INT32_MAX):
        raise ValueError(f"n_steps must be an integer, got {n_steps!r}")
    if concept is not None and (not isinstance(concept, str) or not concept.strip()):
        raise ValueError("concept is empty; describe it in words, e.g. concept=\"Talk like a pirate\"")
    if concept is not None:
        check_text(concept, "the concept")
    if schedule is None:
        core().check_steering(concept or "", c_float(flowtime), n_steps)
    else:  # the core's rules on a schedule's points, and on each flowtime in it
        r = core().Request()
        r.concept, r.schedule, r.n_steps = concept or "", schedule, n_steps
        core().check_request(r)
    return schedule


def check_request(r: Any) -> Any:
    """r (the extension's Request, flas_request_params) if the core's rules accept its settings
    (flas_check_request: steering, max_tokens, sampling; each rule said once, in the core)."""
    core().check_request(r)
    return r


def sampling_from(request: Any, sampling: Any) -> None:
    """Sets the extension's SamplingParams from a Request: its own sampling fields (temperature,
    top_k, top_p) and its .sampling dict (the other flas_sampling_params fields by name, checked
    by Request), checking their types; the seed is the caller's, the ranges are the core's."""
    for name, current in record(sampling).items():
        if name == "seed":
            continue
        if hasattr(request, name):
            value = getattr(request, name)
        elif name in request.sampling:
            value = request.sampling[name]
        else:
            continue
        setattr(sampling, name, c_int(value, name) if isinstance(current, int) else c_number(value, name))


def c_int(v: object, name: str) -> int:
    """v if a C int32_t takes it (its range is the core's rule)."""
    if not _int32(v, -INT32_MAX - 1):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    return v  # type: ignore[return-value]


def c_number(v: object, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{name} must be a number, got {v!r}")
    return c_float(v)


def c_float(v: float) -> float:
    """v as a C float takes it: a number past a double's range is infinite (the core then says so)."""
    try:
        return float(v)
    except OverflowError:  # an integer past a double
        return math.inf if v > 0 else -math.inf

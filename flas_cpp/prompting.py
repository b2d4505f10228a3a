"""Prompts as the flow was trained on them (FLAS_SPEC.md section 5), and checks of user input."""

from __future__ import annotations

import math
from typing import Sequence

from ._native import core

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


def check_steering(concept: str | None, flowtime: float, n_steps: int) -> None:
    """Types here; the ranges and the concept rule are the core's (flas_check_steering), with the
    messages every interface gives."""
    if isinstance(flowtime, bool) or not isinstance(flowtime, (int, float)):
        raise ValueError(f"flowtime must be a number, got {flowtime!r}")
    if not _int32(n_steps, -INT32_MAX):
        raise ValueError(f"n_steps must be an integer, got {n_steps!r}")
    if concept is not None and (not isinstance(concept, str) or not concept.strip()):
        raise ValueError("concept is empty; describe it in words, e.g. concept=\"Talk like a pirate\"")
    if concept is not None:
        check_text(concept, "the concept")
    core().check_steering(concept or "", float(flowtime) if _finite(flowtime) else math.inf, n_steps)


def check_sampling(max_tokens: int, temperature: float, top_k: int, top_p: float, min_p: float = 0.0,
                   repeat_penalty: float = 1.0) -> None:
    if not _int32(max_tokens, 1):
        raise ValueError(f"max_tokens must be an integer in 1..{INT32_MAX}, got {max_tokens!r}")
    if not _finite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if not _int32(top_k, 0):
        raise ValueError(f"top_k must be an integer in 0..{INT32_MAX} (0 = off), got {top_k!r}")
    if not _finite(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not _finite(min_p) or not 0 <= min_p <= 1:
        raise ValueError(f"min_p must be in [0, 1] (0 = off), got {min_p!r}")
    if not _finite(repeat_penalty) or repeat_penalty <= 0:
        raise ValueError(f"repeat_penalty must be a finite number > 0 (1 = off), got {repeat_penalty!r}")

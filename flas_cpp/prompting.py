"""Prompts as the flow was trained on them (FLAS_SPEC.md section 5), and checks of user input."""

from __future__ import annotations

import math
from typing import Sequence

from ._native import core

Message = dict  # {"role": "user" | "assistant" | "model" | "system", "content": str}


def normalize_messages(prompt: str | None, messages: Sequence[Message] | None) -> list[tuple[str, str]]:
    """(role, content) pairs for the chat template: one user turn, or a conversation ending in one."""
    if (prompt is None) == (messages is None):
        raise ValueError("pass either a prompt or messages=[...], not both or neither")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        return [("user", prompt)]
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "user", "assistant", "model", "system"):
            raise ValueError(f"messages[{i}] must be {{'role': 'user'|'assistant'|'system', 'content': str}}, got {m!r}")
        out.append(("assistant" if m["role"] == "model" else m["role"], m["content"]))
    if not out or out[-1][0] != "user":
        raise ValueError("messages must end with a user turn (the model answers it)")
    return out


def check_steering(concept: str | None, flowtime: float, n_steps: int) -> None:
    if isinstance(flowtime, bool) or not isinstance(flowtime, (int, float)) or not math.isfinite(flowtime) or flowtime < 0:
        raise ValueError(f"flowtime must be a finite number >= 0 (0 = no steering, 2 = the paper's strength), got {flowtime!r}")
    max_steps = core().MAX_STEPS  # FLAS_MAX_STEPS of flas.h
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or not 1 <= n_steps <= max_steps:
        raise ValueError(f"n_steps must be an integer in 1..{max_steps} (the flow's default is usually 3), got {n_steps!r}")
    if concept is not None and (not isinstance(concept, str) or not concept.strip()):
        raise ValueError("concept is empty; describe it in words, e.g. concept=\"Talk like a pirate\"")
    if concept is not None and "\0" in concept:
        raise ValueError("the concept contains a NUL character ('\\0'), where a C string ends; remove it")
    if flowtime > 0 and concept is None:
        raise ValueError("steering (flowtime > 0) needs a concept, e.g. concept=\"Talk like a pirate\"; "
                         "use flowtime=0 for the unsteered model")


def check_sampling(max_tokens: int, temperature: float, top_k: int, top_p: float, min_p: float = 0.0,
                   repeat_penalty: float = 1.0) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(min_p, bool) or not isinstance(min_p, (int, float)) or not 0 <= min_p <= 1:
        raise ValueError(f"min_p must be in [0, 1] (0 = off), got {min_p!r}")
    if isinstance(repeat_penalty, bool) or not isinstance(repeat_penalty, (int, float)) or \
            not math.isfinite(repeat_penalty) or repeat_penalty <= 0:
        raise ValueError(f"repeat_penalty must be a number > 0 (1 = off), got {repeat_penalty!r}")

"""Completions in the shapes of OpenAI's API and llama-cpp-python's Llama.create_completion /
create_chat_completion: the response and stream-chunk dicts, stop strings, and the two calls
themselves on a FlasModel (so code written for llama-cpp-python works with steering added).
The HTTP server (flas_cpp.server) builds its bodies with the same functions."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .generation import Generation, Request, raise_if_failed

if TYPE_CHECKING:
    from .model import FlasModel


def stop_list(stop: str | Sequence[str] | None) -> list[str]:
    """llama-cpp-python's and OpenAI's `stop`: a string, a list of strings, or nothing."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return stops


def finish_reason(g: Generation) -> str:
    return "stop" if g.stop_reason in ("eog", "stop") else "length"


def usage(n_prompt: int, n_completion: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


def logprobs_json(model: "FlasModel", chat: bool, items: list, offset: int = 0) -> dict:
    """A choice's "logprobs" for these tokens (TokenLogprob): chat's {"content": [{"token",
    "logprob", "bytes", "top_logprobs"}]} (OpenAI's), or completions' {"tokens", "text_offset",
    "token_logprobs", "top_logprobs"} (llama-cpp-python's, the sampled token among the top)
    with text offsets from `offset` on (the prompt's length, for the first token)."""
    def piece(t: int) -> bytes:
        return model.detokenize([t])

    if chat:
        return {"content": [{"token": piece(x.token).decode("utf-8", "ignore"), "logprob": x.logprob,
                             "bytes": list(piece(x.token)),
                             "top_logprobs": [{"token": piece(t).decode("utf-8", "ignore"), "logprob": lp,
                                               "bytes": list(piece(t))} for t, lp in x.top]} for x in items]}
    tokens, offsets, top = [], [], []
    for x in items:
        text = piece(x.token).decode("utf-8", "ignore")
        offsets.append(offset)
        offset += len(text)
        tokens.append(text)
        top.append({**{piece(t).decode("utf-8", "ignore"): lp for t, lp in x.top}, text: x.logprob})
    return {"tokens": tokens, "text_offset": offsets, "token_logprobs": [x.logprob for x in items], "top_logprobs": top}


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def response(chat: bool, rid: str, model: str, text: str, g: Generation, logprobs: dict | None = None,
             **extra) -> dict:
    choice: dict = {"index": 0, "logprobs": logprobs, "finish_reason": finish_reason(g)}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage(g.n_prompt_tokens, len(g.tokens)), **extra}


def chunk(chat: bool, rid: str, created: int, model: str, text: str | None = None, role: bool = False,
          finish: str | None = None, logprobs: dict | None = None, **extra) -> dict:
    if chat:
        delta: dict = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model, "choices": [choice], **extra}


def create(model: "FlasModel", chat: bool, stream: bool, max_tokens: int | None, **fields: Any) -> dict | Iterator[dict]:
    """FlasModel.create_completion (chat False: the prompt as it is) and create_chat_completion:
    fields are a Request's (seed None: the model's, as llama-cpp-python's Llama(seed=...))."""
    if max_tokens is None or max_tokens <= 0:  # llama-cpp-python: until the context is full
        n_prompt = len(model.prompt_tokens(messages=fields["messages"]) if chat
                       else model.tokenize(fields["prompt"] or "", special=True))
        max_tokens = max(1, model.n_ctx_seq - n_prompt)
    if not fields.get("concept"):
        fields["flowtime"] = 0.0
    handle = model.submit(Request.of({**fields, "raw": not chat, "max_tokens": max_tokens}))
    rid, name = new_id(chat), model.model_path
    wants = fields.get("logprobs") is not None
    start = 0 if chat else len(fields["prompt"])  # llama-cpp-python's text offsets count the prompt's characters
    if not stream:
        g = raise_if_failed(handle.result())
        return response(chat, rid, name, g.text, g, logprobs_json(model, chat, g.logprobs, start) if wants else None)

    def chunks() -> Iterator[dict]:
        created, offset = int(time.time()), start
        if chat:
            yield chunk(chat, rid, created, name, role=True)
        for piece in handle.pieces():
            lp = logprobs_json(model, chat, piece.logprobs, offset) if wants else None
            offset += len(piece.text)
            yield chunk(chat, rid, created, name, text=piece.text, logprobs=lp)
        g = raise_if_failed(handle.result())
        yield chunk(chat, rid, created, name, text=None if chat else "", finish=finish_reason(g))

    return chunks()

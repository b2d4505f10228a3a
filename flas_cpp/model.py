"""FlasModel: steered generation from a base GGUF and a flow GGUF."""

from __future__ import annotations

import codecs
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ._native import core
from .prompting import Message, alpaca_prompt, check_sampling, check_steering, normalize_messages


def physical_cores() -> int:
    """Cores this process may run on, hyper-thread siblings counted once (llama.cpp's default)."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo / "physical_package_id").read_text().strip() + ":" + (topo / "core_id").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


@dataclass
class Generation:
    """One generated reply."""
    text: str
    tokens: list[int]                 # generated tokens (the end-of-generation token excluded)
    n_prompt_tokens: int
    concept: str | None
    flowtime: float
    n_steps: int
    stop_reason: str                  # "eog", "max_tokens" or "context"
    seconds: float = 0.0              # wall time of prefill + generation
    prompt_seconds: float = 0.0       # of which prefill
    n_cached_tokens: int = 0          # prompt tokens reused from the previous generation (same steering)

    @property
    def tokens_per_second(self) -> float:
        gen = self.seconds - self.prompt_seconds
        return len(self.tokens) / gen if gen > 0 else 0.0


@dataclass
class _Settings:
    concept: str | None
    flowtime: float
    n_steps: int
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int


class FlasModel:
    """A Gemma-2 base model (GGUF) steered by a FLAS flow (GGUF) inside llama.cpp's forward pass.

    `exact=True` selects a float32 KV cache and no flash attention, for parity with a float32
    reference; the default uses llama.cpp's fast settings. `n_threads=None` uses one thread per
    physical core, as llama.cpp does.
    """

    def __init__(self, base: str | os.PathLike, flow: str | os.PathLike, n_ctx: int = 4096, n_gpu_layers: int = 0,
                 n_threads: int | None = None, exact: bool = False, n_batch: int = 512, verbose: bool = False):
        for path, what in ((base, "base model GGUF"), (flow, "flow GGUF")):
            if not Path(path).is_file():
                raise ValueError(f"{what} not found: {path}")
        if n_ctx < 16:
            raise ValueError(f"n_ctx must be >= 16, got {n_ctx}")
        self._rt = core().Runtime(str(base), str(flow), n_ctx=n_ctx, n_batch=min(n_batch, n_ctx),
                                  n_gpu_layers=n_gpu_layers, n_threads=n_threads or physical_cores(), exact=exact,
                                  verbose=verbose)
        self.flow_info: dict = dict(self._rt.flow_hparams)
        self.n_ctx: int = self._rt.n_ctx
        self._concept: str | None = None
        self._lock = threading.RLock()
        self._epoch = 0  # bumped by every new generation; a paused stream checks it before going on
        # the tokens llama.cpp's sequence (and the flow caches) hold, valid under these steering settings
        self._seq: list[int] = []
        self._seq_key: tuple | None = None

    # ---- prompts and tokens ----------------------------------------------------------------

    def prompt_tokens(self, prompt: str | None = None, messages: Sequence[Message] | None = None) -> list[int]:
        """The prompt as trained: the chat template with the generation prompt (or alpaca), BOS first."""
        turns = normalize_messages(prompt, messages)
        if self.flow_info["prompt_format"] == "alpaca":
            text = alpaca_prompt(turns)
        else:
            text = self._rt.apply_chat_template(turns)
        return self._rt.tokenize(text, True, True)

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self._rt.tokenize(text, add_bos, special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self._rt.token_to_piece(t) for t in tokens).decode("utf-8", errors="replace")

    # ---- generation --------------------------------------------------------------------------

    def generate(self, prompt: str | None = None, concept: str | None = None, flowtime: float = 2.0,
                 n_steps: int | None = None, max_tokens: int = 128, temperature: float = 0.7, top_k: int = 64,
                 top_p: float = 0.95, seed: int = 0, messages: Sequence[Message] | None = None) -> Generation:
        """Generate one reply. `flowtime=0` (or no concept) is the unsteered base model."""
        pieces = []
        gen = self._generate(prompt, messages, self._settings(concept, flowtime, n_steps, max_tokens, temperature,
                                                               top_k, top_p, seed), pieces)
        for _ in gen:
            pass
        return pieces[0]

    def stream(self, prompt: str | None = None, concept: str | None = None, flowtime: float = 2.0,
               n_steps: int | None = None, max_tokens: int = 128, temperature: float = 0.7, top_k: int = 64,
               top_p: float = 0.95, seed: int = 0, messages: Sequence[Message] | None = None) -> Iterator[str]:
        """Text pieces as they decode; stop early by breaking out of the loop (or closing it)."""
        s = self._settings(concept, flowtime, n_steps, max_tokens, temperature, top_k, top_p, seed)
        return self._generate(prompt, messages, s, [])

    def compare(self, prompt: str | None = None, concept: str | None = None, flowtime: float = 2.0,
                **kwargs) -> tuple[Generation, Generation]:
        """(baseline, steered): the same prompt, sampling settings and seed, with and without steering."""
        check_steering(concept, flowtime, kwargs.get("n_steps") or self.flow_info["n_steps"])
        if concept is None:
            raise ValueError("compare needs a concept, e.g. concept=\"Talk like a pirate\"")
        baseline = self.generate(prompt, concept=None, flowtime=0.0, **kwargs)
        steered = self.generate(prompt, concept=concept, flowtime=flowtime, **kwargs)
        return baseline, steered

    def generate_batch(self, prompts: Sequence[str], concept: str, flowtimes: Sequence[float] = (0.5, 1.0, 2.0),
                       **kwargs) -> list[list[Generation]]:
        """Every prompt at every flowtime, like the reference's batch generation: result[i][j] is
        prompts[i] at flowtimes[j]. The concept is encoded once."""
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of strings; use generate() for one prompt")
        for ft in flowtimes:
            check_steering(concept, ft, kwargs.get("n_steps") or self.flow_info["n_steps"])
        return [[self.generate(p, concept=concept, flowtime=ft, **kwargs) for ft in flowtimes] for p in prompts]

    def trace(self, prompt: str | None = None, concept: str | None = None, flowtime: float = 2.0,
              n_steps: int | None = None, n_decode: int = 0, messages: Sequence[Message] | None = None) -> dict:
        """Layer-L rows before and after the flow for the prompt (and n_decode greedy steps).

        Returns tokens (every token processed), generated, unsteered and steered ([n_rows, H]
        float32 arrays), and logits (the prompt's last-token logits).
        """
        s = self._settings(concept, flowtime, n_steps, max(n_decode, 1), 0.0, 0, 1.0, 0)
        with self._lock:
            tokens = self._check_prompt(self.prompt_tokens(prompt, messages))
            self._rt.set_trace(True)
            try:
                self._prepare(s, reuse=False)  # every row is recorded: start from an empty sequence
                self._seq_key = None  # and leave none to reuse (the trace's decode steps are not tracked)
                self._rt.decode(tokens)
                logits = self._rt.logits()
                self._rt.sampler_init(0.0, 0, 1.0, 0)
                generated = []
                for _ in range(n_decode):
                    generated.append(self._rt.sample())
                    self._rt.decode([generated[-1]])
                return {"tokens": tokens + generated, "generated": generated,
                        "unsteered": self._rt.trace_unsteered(), "steered": self._rt.trace_steered(),
                        "logits": np.asarray(logits, dtype=np.float32)}
            finally:
                self._rt.set_trace(False)

    def set_steer_hook(self, fn: Callable[[np.ndarray, int], np.ndarray] | None) -> None:
        """Advanced: replace the flow by fn(rows [n, H], first_position) -> steered rows, called in
        llama.cpp's forward pass for every batch of layer-L rows (testing, research). None restores the flow."""
        with self._lock:
            self._rt.set_steer_hook(fn)
            self._seq_key = None

    # ---- internals -----------------------------------------------------------------------------

    def _settings(self, concept, flowtime, n_steps, max_tokens, temperature, top_k, top_p, seed) -> _Settings:
        n_steps = self.flow_info["n_steps"] if n_steps is None else n_steps
        check_steering(concept, flowtime, n_steps)
        check_sampling(max_tokens, temperature, top_k, top_p)
        if flowtime == 0:
            concept = None
        return _Settings(concept, float(flowtime), n_steps, max_tokens, float(temperature), top_k, float(top_p), int(seed))

    def _check_prompt(self, tokens: list[int]) -> list[int]:
        if len(tokens) >= self.n_ctx:
            raise ValueError(f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}; "
                             "shorten it or load the model with a larger n_ctx")
        return tokens

    def _prepare(self, s: _Settings, reuse: bool = True) -> None:
        """Concept (encoded once, re-encoded on change) and (T, N). Changing either empties the
        sequence (its caches no longer apply); otherwise the sequence is kept for prefix reuse."""
        self._epoch += 1
        key = (s.concept, s.flowtime if s.concept is not None else 0.0, s.n_steps)
        if reuse and key == self._seq_key:
            return
        self._seq_key = None  # until the runtime holds the new settings
        if s.concept is not None and s.concept != self._concept:
            n_total = self._rt.set_concept(s.concept)
            self._concept = s.concept
            limit = self.flow_info["concept_max_len"]
            if n_total > limit:
                warnings.warn(f"the concept is {n_total} tokens; only the first {limit} are used, as in training",
                              stacklevel=4)
        self._rt.set_steering(key[1], s.n_steps)
        self._seq, self._seq_key = [], key

    def _feed(self, tokens: list[int]) -> int:
        """Make the sequence hold `tokens`: keep the common prefix (rewinding llama.cpp's cache and,
        with it, the flow caches), decode the rest. At least the last token is decoded, for its logits.
        Returns how many tokens were kept."""
        keep = 0
        limit = min(len(self._seq), len(tokens) - 1)
        while keep < limit and self._seq[keep] == tokens[keep]:
            keep += 1
        try:
            if keep < len(self._seq):
                self._rt.rewind(keep)
                del self._seq[keep:]
            self._rt.decode(tokens[keep:])
        except BaseException:
            self._seq_key = None  # the sequence is in an unknown state: start afresh next time
            raise
        self._seq += tokens[keep:]
        return keep

    def _generate(self, prompt, messages, s: _Settings, result: list) -> Iterator[str]:
        with self._lock:
            tokens = self._check_prompt(self.prompt_tokens(prompt, messages))
            start = time.perf_counter()
            self._prepare(s)
            epoch = self._epoch
            n_cached = self._feed(tokens)
            prompt_seconds = time.perf_counter() - start
            self._rt.sampler_init(s.temperature, s.top_k, s.top_p, s.seed)
            utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
            out: list[int] = []
            text: list[str] = []
            stop = "max_tokens"
            try:
                while len(out) < s.max_tokens:
                    tok = self._rt.sample()
                    if self._rt.is_eog(tok):
                        stop = "eog"
                        break
                    out.append(tok)
                    piece = utf8.decode(self._rt.token_to_piece(tok))
                    if piece:
                        text.append(piece)
                        yield piece
                    if len(out) == s.max_tokens:
                        break
                    if self._rt.n_past >= self.n_ctx:
                        stop = "context"
                        break
                    if self._epoch != epoch:
                        raise RuntimeError("another generation ran on this model while this stream was paused; "
                                           "finish or close a stream before starting the next generation")
                    self._feed(self._seq + [tok])
                tail = utf8.decode(b"", final=True)
                if tail:
                    text.append(tail)
                    yield tail
            finally:
                result.append(Generation("".join(text), out, len(tokens), s.concept, s.flowtime if s.concept else 0.0,
                                         s.n_steps, stop, time.perf_counter() - start, prompt_seconds, n_cached))

"""The C API's sequences driven directly, as plain llama.cpp is: each call runs inside
flas_exclusive (the scheduler idle between steps) with the flas_seq_* functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from flas_cpp._native import core, model_params


class DirectModel:
    """A flas_model whose sequences the benchmark steers and decodes itself."""

    def __init__(self, base: Path, flow: Path, **params: Any):
        self.m = core().Model(model_params(base=str(base), flow=str(flow), **params))
        self.n_vocab: int = self.m.n_vocab

    def _exclusive(self, fn: Callable[[], Any]) -> Any:
        out: list[Any] = []
        self.m.exclusive(lambda: out.append(fn()))
        return out[0]

    def set_steering(self, seq: int, concept: str, flowtime: float, n_steps: int) -> int:
        return self._exclusive(lambda: self.m.seq_set_steering(seq, concept, flowtime, n_steps))

    def set_flowtime(self, seq: int, flowtime: float) -> None:
        self._exclusive(lambda: self.m.seq_set_flowtime(seq, flowtime))

    def set_telemetry(self, seq: int, on: bool) -> None:
        self._exclusive(lambda: self.m.seq_set_telemetry(seq, on))

    def displacement(self, seq: int) -> float:
        return self._exclusive(lambda: self.m.seq_displacement(seq))

    def decode(self, entries: list[tuple[int, list[int]]]) -> None:
        self._exclusive(lambda: self.m.seq_decode(entries))

    def reset(self, seq: int = 0) -> None:
        self._exclusive(lambda: self.m.seq_reset(seq))

    def memory(self) -> list[dict]:
        return self.m.memory()

    def reserve(self, n_steps: int) -> None:
        self.m.reserve(n_steps)

    def close(self) -> None:
        self.m.close()

"""Placement on a memory budget: the most layers (and the flow, with layer L) that fit a device."""

from __future__ import annotations

import re
from pathlib import Path

from gguf import GGUFReader

from ._native import core, model_params, record

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(size: str | int | float) -> int:
    """Bytes of "6GiB", "6 GB", "512MiB", 6e9 or 6442450944."""
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        value, unit = float(size), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(size))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"gpu_memory {size!r} is not a size such as \"6GiB\", \"6GB\" or \"512MiB\"")
        value, unit = float(m.group(1)), m.group(2).lower()
    n = int(value * _UNITS[unit])
    if n <= 0:
        raise ValueError(f"gpu_memory must be > 0, got {size!r}")
    return n


def gib(n: int) -> str:
    """Bytes for people: GiB from 1 GiB up, MiB below."""
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def device_total(rows: list[dict]) -> int:
    """The most any offload device holds (0 with everything on the CPU)."""
    return max((r["total"] for r in rows if r["device"] != "CPU"), default=0)


def base_layer_count(flow: str | Path) -> int:
    field = GGUFReader(flow).get_field("flas.base_block_count")
    if field is None:
        raise ValueError(f"the flow {flow} does not say how many layers its base model has (flas.base_block_count)")
    return int(field.contents())


def estimate_memory(base: str | Path, flow: str | Path, n_steps: int, **params) -> list[dict]:
    """FlasModel.memory()'s rows for a model of these FlasModel parameters with every sequence
    steered at n_steps, from llama.cpp's simulated buffers (nothing allocated; flow_compute 0)."""
    return [record(r) for r in core().estimate_memory(model_params(base=str(base), flow=str(flow), **params), n_steps)]


def fit_gpu_layers(base: str, flow: str, budget: int, n_steps: int, **params) -> tuple[int, list[dict]]:
    """The largest n_gpu_layers whose offload device, by llama.cpp's simulated buffers and the
    flow's tensor sizes (every sequence steered with n_steps), holds at most `budget` bytes;
    with its estimate. The flow's compute buffer is not in the estimate: FlasModel checks the
    real total once loaded."""
    n_layer = base_layer_count(flow)

    def estimate(ngl: int) -> list[dict]:
        return estimate_memory(base, flow, n_steps, n_gpu_layers=ngl, **params)

    lo, hi = 0, n_layer + 1  # n_layer + 1: every layer and the output layer
    best = estimate(0)
    while lo < hi:  # the device total grows with the layers offloaded
        mid = (lo + hi + 1) // 2
        rows = estimate(mid)
        if device_total(rows) <= budget:
            lo, best = mid, rows
        else:
            hi = mid - 1
    return lo, best

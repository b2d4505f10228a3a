"""Command-line options for devices (llama.cpp's names) and the memory table, shared by
flas-demo, flas-chat and flas-server."""

from __future__ import annotations

import argparse

PARTS = [("base_weights", "base weights"), ("kv_cache", "KV cache"), ("base_compute", "base compute"),
         ("flow_weights", "flow weights"), ("flow_caches", "flow caches"), ("flow_compute", "flow compute"),
         ("total", "total")]


def add_device_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("devices")
    g.add_argument("--n-gpu-layers", "-ngl", type=int, default=0,
                   help="layers on the offload devices (GPUs, RPC servers); -1: all (default 0)")
    g.add_argument("--rpc", metavar="HOST:PORT[,HOST:PORT]",
                   help="ggml RPC servers to offload to (start one with python -m flas_cpp.rpc_server)")
    g.add_argument("--main-gpu", "-mg", type=int, default=0, help="llama.cpp's main_gpu (default 0)")
    g.add_argument("--tensor-split", "-ts", metavar="P0,P1,...", help="proportions of the layers per device")
    g.add_argument("--gpu-memory", metavar="SIZE",
                   help="instead of --n-gpu-layers: the most layers (and the flow) that fit SIZE, e.g. 6GiB")


def device_kwargs(a: argparse.Namespace) -> dict:
    """FlasModel keyword arguments of add_device_args' options."""
    split = None
    if a.tensor_split:
        try:
            split = [float(x) for x in a.tensor_split.split(",")]
        except ValueError:
            raise ValueError(f"--tensor-split {a.tensor_split!r} is not comma-separated numbers") from None
    return dict(n_gpu_layers=a.n_gpu_layers, rpc_servers=a.rpc, main_gpu=a.main_gpu, tensor_split=split,
                gpu_memory=a.gpu_memory)


def memory_table(rows: list[dict]) -> str:
    """Bytes per device and part, in MiB, as a fixed-width table."""
    def mib(n: int) -> str:
        return f"{n / 1024**2:.1f}"
    names = [f"{r['device']} ({r['description']})" if r["description"] and r["device"] != "CPU" else r["device"]
             for r in rows]
    first = max(len("MiB"), max((len(n) for n in names), default=0))
    widths = [max(len(title), 8) for _, title in PARTS]
    lines = [f"{'MiB':<{first}}  " + "  ".join(f"{t:>{w}}" for (_, t), w in zip(PARTS, widths))]
    for name, r in zip(names, rows):
        lines.append(f"{name:<{first}}  " + "  ".join(f"{mib(r[k]):>{w}}" for (k, _), w in zip(PARTS, widths)))
    return "\n".join(lines)

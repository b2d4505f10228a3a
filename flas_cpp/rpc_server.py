"""Serve this machine's ggml backend to flas-cpp and llama.cpp over ggml's RPC protocol.

    python -m flas_cpp.rpc_server --host 127.0.0.1 --port 50052

A thin launcher for ggml's own RPC server (``ggml_backend_rpc_start_server``): clients load
layers onto it with ``FlasModel(..., n_gpu_layers=-1, rpc_servers=["127.0.0.1:50052"])`` or
llama.cpp's ``--rpc``. ggml's RPC protocol has no authentication and no encryption: anyone who
can reach the port can run code-shaped workloads and read the memory it serves, so keep it on
loopback or a trusted network.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys

from ._native import core


def _is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flas_cpp.rpc_server",
                                 description="Serve this machine's ggml backend (its GPUs, else its CPU) over ggml RPC.")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=50052, help="TCP port (default 50052)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for the CPU backend")
    ap.add_argument("--cache-dir", default="", help="ggml's local tensor cache directory (default: none)")
    args = ap.parse_args(argv)
    if not 1 <= args.port <= 65535:
        ap.error(f"--port must be in 1..65535, got {args.port}")
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if not _is_loopback(args.host):
        print(f"WARNING: serving on {args.host}, which is not a loopback address. ggml RPC has NO authentication: "
              "anyone who can reach this port can use this machine's device and read its memory. Use it only on a "
              "trusted network.", file=sys.stderr, flush=True)
    host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
    # the server blocks in C++ without the GIL: let Ctrl-C and SIGTERM end the process at once
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        core().rpc_serve(f"{host}:{args.port}", args.threads, args.cache_dir)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`flas-server`: an OpenAI-compatible server with steering per request and a web page that
shows baseline and steered replies side by side. Flags follow llama-server's names."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import sys
import threading

from ..bundled import add_model_args, check_model_args, chosen_models
from ..devices import add_device_args, device_kwargs
from .app import ServerConfig, create_app
from .openai_api import Steering


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="flas-server", description=__doc__.split("\n\n")[0])
    add_model_args(ap)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--parallel", "-np", type=int, default=4, help="sequences decoded together (default 4)")
    ap.add_argument("--n-ctx", "-c", type=int, default=None,
                    help="llama.cpp's whole context, shared by the sequences (default 4096 per sequence)")
    ap.add_argument("--threads", "-t", type=int, default=None, help="CPU threads (default: one per physical core)")
    add_device_args(ap)
    ap.add_argument("--api-key", default=os.environ.get("FLAS_API_KEY"),
                    help="require Authorization: Bearer KEY on /v1 and /metrics (default $FLAS_API_KEY)")
    ap.add_argument("--model-alias", "-a", default="flas", help="the model id of unpreset requests (default flas)")
    ap.add_argument("--concept", help="steering of requests that name none (default: unsteered)")
    ap.add_argument("--flowtime", type=float, default=2.0, help="T of --concept and of a body's concept without one")
    ap.add_argument("--n-steps", type=int, default=None, help="N of --concept (default: the flow's)")
    ap.add_argument("--preset", action="append", default=[], metavar="NAME=CONCEPT[@T[:N]]",
                    help="a model id that steers, listed by /v1/models (repeatable)")
    ap.add_argument("--cors", action="append", default=[], metavar="ORIGIN", help="allow this web origin (repeatable)")
    ap.add_argument("--queue", type=int, default=64, help="requests waiting for a sequence before 503 (default 64)")
    ap.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (default 1 MB)")
    ap.add_argument("--read-timeout", type=float, default=30.0,
                    help="seconds a client has to send a request's head, and again its body (default 30)")
    ap.add_argument("--exact", action="store_true", help="f32 KV caches, no flash attention (parity tests)")
    return ap.parse_args(argv)


def config_from(a: argparse.Namespace, ap_error) -> ServerConfig:
    check_model_args(a, ap_error)
    if a.parallel < 1 or a.queue < 0 or a.max_body < 1 or not 0 < a.read_timeout < 86400:
        ap_error("--parallel must be >= 1, --queue >= 0, --max-body >= 1 and --read-timeout in (0, 86400)")
    if a.concept is not None and not a.concept.strip():
        ap_error("--concept is empty")
    presets = {}
    for text in a.preset:
        try:
            name, steering = Steering.parse_preset(text)
        except ValueError as e:
            ap_error(str(e))
        if name == a.model_alias or name in presets:
            ap_error(f"--preset {name!r}: the name is already taken")
        presets[name] = steering
    default = Steering(a.concept, a.flowtime if a.concept else 0.0, a.n_steps)
    return ServerConfig(model_alias=a.model_alias, default_steering=default, presets=presets,
                        api_key=a.api_key or None, queue=a.queue, max_body=a.max_body, cors=a.cors,
                        read_timeout=a.read_timeout)


def fix_mmap_threshold() -> None:
    """glibc raises its mmap threshold each time a large block is freed (up to 32 MB); from then
    on, request bodies of up to --max-body, parsed in worker threads, are carved from per-thread
    arenas that glibc keeps: under abusive load RSS grew by ~50 MB every 3 minutes
    (docs/HARDENING.md). A fixed threshold (glibc's default, 128 KiB) gives every large block
    back to the system when it is freed. Elsewhere than glibc there is nothing to do."""
    try:
        ctypes.CDLL(None).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, from glibc's malloc.h
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    fix_mmap_threshold()

    def error(msg: str) -> None:
        print(f"flas-server: error: {msg}", file=sys.stderr)
        raise SystemExit(2)

    config = config_from(a, error)
    try:
        import uvicorn
    except ImportError:
        error("the server needs FastAPI and uvicorn: pip install \"flas-cpp[server]\"")

    from .protocol import with_head_timeout

    app = create_app(config)
    state = app.state.flas

    def load() -> None:
        from ..model import FlasModel

        try:
            base, flow = chosen_models(a)
            n_ctx = a.n_ctx or 4096 * a.parallel
            state.model = FlasModel(base, flow, n_ctx=n_ctx, n_seq=a.parallel, n_threads=a.threads, exact=a.exact,
                                    **device_kwargs(a))
            m = state.model
            print(f"flas-server: loaded base {base}\n             flow {flow} (layer {m.flow_info['layer']}, "
                  f"N = {m.flow_info['n_steps']}, on {m.flow_device}); {m.n_seq} sequences of "
                  f"{m.n_ctx_seq} tokens", file=sys.stderr, flush=True)
            names = ", ".join(f"{k} ({'steered: ' + repr(s.concept) if s.active else 'unsteered'})"
                              for k, s in state.models.items())
            print(f"flas-server: models {names}", file=sys.stderr, flush=True)
        except Exception as e:  # a bad file: /health says so, the server stays up to say it
            state.load_error = str(e)
            print(f"flas-server: error: {e}", file=sys.stderr, flush=True)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            # end the running requests first: each stream sends its last event and [DONE] well
            # within uvicorn's grace period, instead of being cut off mid-body after it
            state.shutdown()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            # Ctrl-C and SIGTERM end serving gracefully; unlike uvicorn, the signal is not raised
            # again afterwards, so a clean shutdown exits with status 0.
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    url = f"http://{a.host}:{a.port}"
    print(f"flas-server: listening on {url} (web page {url}/, API {url}/v1); loading the model ...",
          file=sys.stderr, flush=True)
    loader = threading.Thread(target=load, name="flas-load", daemon=True)
    loader.start()
    Server(uvicorn.Config(app, host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=10,
                          http=with_head_timeout(a.read_timeout))).run()
    if loader.is_alive():  # stopped while llama.cpp loads: nothing to close, and nothing waits for it
        print("flas-server: stopped while loading", file=sys.stderr, flush=True)
        os._exit(0)
    if state.model is not None:
        state.model.close()  # the engine's thread ends; a request still polled ends as closed
    print("flas-server: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

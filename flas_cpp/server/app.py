"""The HTTP application: OpenAI-compatible endpoints over FlasModel's engine, the web page,
/health and /metrics. Everything that may take long runs in worker threads (reading the body
as JSON, the chat template and tokenization, waits on the engine), so the event loop serves
/health and every stream while one request is prepared and the engine decodes them together."""

from __future__ import annotations

import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import AsyncIterator

import anyio
from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..completions import finish_reason, new_id
from ..generation import ContextLengthError, Generation, Handle, RequestNotFoundError
from ..model import FlasModel
from .openai_api import (ApiError, Completion, Steering, chunk, parse_completion, parse_json, parse_steering,
                         prompt_offset, response, usage_chunk)

WAIT_MS = 100  # one blocking wait on the engine; the loop checks for disconnects between them
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}  # metrics labels (and "steering")
DISCONNECTED = 499  # the status counted for a client that went away (nginx's convention)
log = logging.getLogger("flas-server")


@dataclass
class ServerConfig:
    model_alias: str = "flas"
    default_steering: Steering = field(default_factory=lambda: Steering(None, 0.0, None))
    presets: dict[str, Steering] = field(default_factory=dict)
    api_key: str | None = None
    queue: int = 64                 # requests waiting for a sequence
    max_body: int = 1 << 20         # bytes
    cors: list[str] = field(default_factory=list)
    read_timeout: float = 30.0      # seconds for a request's head, and again for its body
    preparing: int = 2              # requests whose prompt is tokenized at once (the rest wait their turn)


@dataclass
class Metrics:
    requests: dict[str, int] = field(default_factory=dict)   # by endpoint and status
    prompt_tokens: int = 0
    generated_tokens: int = 0
    rejected_full: int = 0

    def count(self, endpoint: str, status: int) -> None:
        key = f'endpoint="{endpoint}",status="{status}"'
        self.requests[key] = self.requests.get(key, 0) + 1


@dataclass
class Running:
    """A completion on the engine, by its id: POST /v1/steering/{id} changes its steering."""
    handle: Handle
    steering: Steering                # in force now: the request's, then each change's


class State:
    """What the routes share: the model (None while loading), the configuration, counters."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.model: FlasModel | None = None
        self.load_error: str | None = None
        self.metrics = Metrics()
        self.running: dict[str, Running] = {}  # requests on the engine by completion id, ended at shutdown
        self.stopping = False
        self.preparing = anyio.CapacityLimiter(config.preparing)

    def shutdown(self) -> None:
        """Ends every running request (each stream then sends its last event and [DONE]) and
        refuses new ones. Called from the signal handler, before uvicorn waits for the streams."""
        self.stopping = True
        for run in list(self.running.values()):
            run.handle.cancel()

    @property
    def models(self) -> dict[str, Steering]:
        return {self.config.model_alias: self.config.default_steering, **self.config.presets}

    def ready(self) -> FlasModel:
        if self.stopping:
            raise ApiError(503, "the server is shutting down", type="server_error", code="server_shutdown")
        if self.model is None:
            msg = f"the model failed to load: {self.load_error}" if self.load_error else "the model is loading"
            raise ApiError(503, msg, type="server_error", code="model_loading", headers={"Retry-After": "1"})
        return self.model


def create_app(config: ServerConfig) -> FastAPI:
    app = FastAPI(title="flas-server", docs_url=None, redoc_url=None, openapi_url=None)
    state = State(config)
    app.state.flas = state
    if config.cors:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=config.cors, allow_methods=["*"], allow_headers=["*"])

    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(404)
    async def not_found(request: HttpRequest, e: Exception) -> JSONResponse:
        return JSONResponse(ApiError(404, f"no route {request.method} {request.url.path}", code="not_found").body(),
                            status_code=404)

    @app.exception_handler(405)
    async def bad_method(request: HttpRequest, e: Exception) -> JSONResponse:
        return JSONResponse(ApiError(405, f"{request.method} is not allowed on {request.url.path}").body(),
                            status_code=405)

    app.add_middleware(InternalErrors, metrics=state.metrics)

    def authorize(request: HttpRequest) -> None:
        key = config.api_key
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        if key and not hmac.compare_digest(given, f"Bearer {key}".encode()):  # no timing hint at the key
            raise ApiError(401, "missing or wrong API key: send the header Authorization: Bearer <key>",
                           type="authentication_error", code="invalid_api_key")

    async def read_body(request: HttpRequest) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_body:
            raise ApiError(413, f"the body is {length} bytes; the limit is {config.max_body} (--max-body)")
        body = bytearray()
        with anyio.move_on_after(config.read_timeout) as scope:
            async for part in request.stream():
                body += part
                if len(body) > config.max_body:
                    raise ApiError(413, f"the body is over the limit of {config.max_body} bytes (--max-body)")
        if scope.cancelled_caught:
            raise ApiError(408, f"the body did not arrive within {config.read_timeout:g} s", code="timeout")
        return bytes(body)

    # ---- pages and facts --------------------------------------------------------------------

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8"))

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        if state.model is None:
            return JSONResponse({"status": "error" if state.load_error else "loading", "error": state.load_error},
                                status_code=503)
        return JSONResponse({"status": "ok"})

    @app.api_route("/v1/models", methods=["GET", "HEAD"])
    async def models(request: HttpRequest) -> JSONResponse:
        authorize(request)
        m = state.ready()
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "flas-cpp",
                 "steering": s.as_dict(m.flow_info["n_steps"])} for name, s in state.models.items()]
        return JSONResponse({"object": "list", "data": data})

    @app.api_route("/v1/props", methods=["GET", "HEAD"])
    async def props(request: HttpRequest) -> JSONResponse:
        """What the page needs: sequences, context, the flow's defaults, whether a key is required."""
        authorize(request)
        m = state.model
        return JSONResponse({"ready": m is not None, "api_key_required": bool(config.api_key),
                             "parallel": m.n_seq if m else None, "n_ctx_seq": m.n_ctx_seq if m else None,
                             "n_steps": m.flow_info["n_steps"] if m else None, "model": config.model_alias,
                             "prompt_format": m.flow_info["prompt_format"] if m else None})

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def metrics(request: HttpRequest) -> PlainTextResponse:
        authorize(request)
        st = state.model.stats() if state.model else {}
        lines = ["# HELP flas_requests_total Completion requests answered, by endpoint and status.",
                 "# TYPE flas_requests_total counter"]
        lines += [f"flas_requests_total{{{k}}} {v}" for k, v in sorted(state.metrics.requests.items())]
        for name, kind, help_, value in [
            ("flas_prompt_tokens_total", "counter", "Prompt tokens of answered requests.", state.metrics.prompt_tokens),
            ("flas_generated_tokens_total", "counter", "Tokens generated.", state.metrics.generated_tokens),
            ("flas_rejected_full_total", "counter", "Requests answered 503 because the queue was full.",
             state.metrics.rejected_full),
            ("flas_queue_length", "gauge", "Requests waiting for a sequence.", st.get("n_queued", 0)),
            ("flas_busy_slots", "gauge", "Sequences decoding.", st.get("n_active", 0)),
            ("flas_slots", "gauge", "Sequences (--parallel).", state.model.n_seq if state.model else 0),
            ("flas_concepts_encoded_total", "counter", "Concept encodings run.", st.get("concepts_encoded", 0)),
            ("flas_tokens_decoded_total", "counter", "Tokens through llama_decode.", st.get("n_decoded", 0))]:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    # ---- completions ------------------------------------------------------------------------

    async def complete(request: HttpRequest, chat: bool) -> Response:
        endpoint = "chat" if chat else "completions"
        try:
            authorize(request)
            m = state.ready()
            body = await read_body(request)
            st = m.stats()
            if st["n_active"] + st["n_queued"] >= m.n_seq + config.queue:
                state.metrics.rejected_full += 1
                raise ApiError(503, f"the server is full ({m.n_seq} decoding, {config.queue} waiting); retry shortly",
                               type="server_error", code="server_busy", headers={"Retry-After": "1"})

            def prepare() -> tuple[Completion, Handle]:
                # JSON, the checks, the chat template and tokenization: off the event loop (the
                # tokenizer runs without the GIL); a prompt that cannot fit is refused from its bytes
                c = parse_completion(parse_json(body), chat, state.models, config.model_alias, m.n_ctx_seq)
                try:
                    return c, m.submit(c.request)
                except ContextLengthError as e:
                    raise ApiError(400, str(e), param="messages" if chat else "prompt",
                                   code="context_length_exceeded") from None
                except ValueError as e:
                    raise ApiError(400, str(e)) from None

            c, handle = await anyio.to_thread.run_sync(prepare, limiter=state.preparing)
        except ClientDisconnect:  # gone while sending its body: nobody to answer
            log.warning("flas-server: a client went away while sending its request body")
            state.metrics.count(endpoint, DISCONNECTED)
            return Response(status_code=400)
        except ApiError as e:
            state.metrics.count(endpoint, e.status)
            raise
        rid = new_id(chat)
        run = state.running[rid] = Running(handle, c.steering)
        if state.stopping:  # the signal came while it was prepared: end it with the others
            handle.cancel()
        if c.stream:
            return StreamingResponse(stream(rid, run, c, chat, endpoint), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            text = []  # ends before a stop string (the Handle cuts it and cancels the request)
            while not handle.done:
                text.append(await anyio.to_thread.run_sync(handle.poll, WAIT_MS))
                if await request.is_disconnected():
                    handle.cancel()
                    state.metrics.count(endpoint, DISCONNECTED)
                    return Response(status_code=400)  # nobody reads it
            g = await anyio.to_thread.run_sync(handle.result)
            if g.stop_reason == "cancelled" and state.stopping:
                e = ApiError(503, "the server is shutting down; the reply was cut short", type="server_error",
                             code="server_shutdown")
                state.metrics.count(endpoint, e.status)
                raise e
            fail(g, endpoint)
            account(g, endpoint)
            return JSONResponse(response(c, chat, rid, "".join(text), g, shown(run), m))
        finally:
            handle.cancel()
            state.running.pop(rid, None)

    def shown(run: Running) -> dict | None:
        """The steering in force, as the responses show it."""
        return run.steering.as_dict(state.model.flow_info["n_steps"]) if state.model else None

    async def stream(rid: str, run: Running, c: Completion, chat: bool, endpoint: str) -> AsyncIterator[str]:
        handle, created = run.handle, int(time.time())
        counted = False

        def event(obj: dict) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        try:
            if chat:
                yield event(chunk(c, chat, rid, created, shown(run), text="", role=True))
            offset = prompt_offset(c, chat)  # of the text so far, for completions' logprobs
            while not handle.done:
                piece = await anyio.to_thread.run_sync(handle.poll_piece, WAIT_MS)
                if piece.text or piece.telemetry or piece.logprobs:
                    yield event(chunk(c, chat, rid, created, shown(run), piece=piece, model=state.model,
                                      offset=offset))
                    offset += len(piece.text)
            g = await anyio.to_thread.run_sync(handle.result)
            counted = True
            if g.stop_reason == "cancelled" and state.stopping:
                state.metrics.count(endpoint, 503)
                yield event(ApiError(503, "the server is shutting down; the reply was cut short", type="server_error",
                                     code="server_shutdown").body())
            elif g.stop_reason == "error":
                account(g, endpoint, 500)
                yield event(ApiError(500, f"generation failed: {g.error}", type="server_error").body())
            else:
                account(g, endpoint)
                yield event(chunk(c, chat, rid, created, shown(run), text=None if chat else "",
                                  finish=finish_reason(g)))
                if c.include_usage:
                    yield event(usage_chunk(c, chat, rid, created, g))
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away: its sequence is freed within one decode step
            handle.cancel()  # (a stream never started is cancelled when its Handle is collected)
            state.running.pop(rid, None)
            if not counted:
                state.metrics.count(endpoint, DISCONNECTED)

    def fail(g: Generation, endpoint: str) -> None:
        if g.stop_reason == "error":
            state.metrics.count(endpoint, 500)
            raise ApiError(500, f"generation failed: {g.error}", type="server_error")

    def account(g: Generation, endpoint: str, status: int = 200) -> None:
        state.metrics.count(endpoint, status)
        state.metrics.prompt_tokens += g.n_prompt_tokens
        state.metrics.generated_tokens += len(g.tokens)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest) -> Response:
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest) -> Response:
        return await complete(request, chat=False)

    @app.post("/v1/steering/{rid}")
    async def steer(rid: str, request: HttpRequest) -> JSONResponse:
        """A running completion's steering from its next token on: the body is a steering object
        as a completion's "steering" takes it, its missing fields those in force."""
        try:
            authorize(request)
            m = state.ready()
            body = await read_body(request)
            run = state.running.get(rid)
            if run is None:
                raise ApiError(404, f"no running completion {_short(rid)}: unknown, or it has ended", code="not_found")
            steering = parse_steering(parse_json(body), run.steering)
            try:
                at = await anyio.to_thread.run_sync(
                    lambda: run.handle.steer(steering.concept if steering.active else None,
                                             steering.flowtime if steering.active else 0.0, steering.n_steps))
            except RequestNotFoundError:
                raise ApiError(404, f"completion {rid} ended before the change took effect", code="not_found") from None
            except ValueError as e:
                raise ApiError(400, str(e), param="steering") from None
        except ApiError as e:
            state.metrics.count("steering", e.status)
            raise
        run.steering = steering
        state.metrics.count("steering", 200)
        return JSONResponse({"id": rid, "object": "steering.change", "token": at,
                             "steering": steering.as_dict(m.flow_info["n_steps"])})

    return app


def _short(text: str) -> str:
    return repr(text if len(text) <= 64 else text[:64] + "...")


class InternalErrors:
    """An error of the server's own (not of the request) as a generic 500, answered here: its
    details go to the log in one line, never to the client, and it is counted. Unlike an
    exception handler for Exception (which Starlette answers and then raises again, so that
    uvicorn logs a traceback and drops the connection), the connection stays usable."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as e:  # noqa: BLE001 (the point: nothing of it escapes)
            log.error("flas-server: internal error on %s %s: %s: %s", scope.get("method"), scope.get("path"),
                      type(e).__name__, e)
            self.metrics.count(ENDPOINTS.get(scope.get("path", ""), "other"), 500)
            if not started:
                body = ApiError(500, "internal server error", type="server_error").body()
                await JSONResponse(body, status_code=500)(scope, receive, send)

"""The FastAPI app: OpenAI's /v1/models, /v1/completions, /v1/chat/completions, plus /health, /metrics.

    app = create_app(load("smollm2-135m"), drafter="recycling", config=ServerConfig(api_key="k"))
    with running(app) as base_url:   # uvicorn in a thread on a free loopback port
        OpenAI(base_url=base_url + "/v1", api_key="k").chat.completions.create(...)

A handler validates the request, tokenizes it, turns each choice into a `queue.Sequence` and waits
for the engine thread's events; it never runs the model itself. Every failure a client can cause is
an OpenAI error object with a 4xx status (`schemas.ApiError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import AsyncIterator, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import clmkit
from clmkit.engine import Engine
from clmkit.errors import ClmkitError
from clmkit.models import Model
from clmkit.sampling import Sampling
from clmkit.server import schemas as s
from clmkit.server.metrics import Metrics
from clmkit.server.queue import DrafterPool, Event, Scheduler, Sequence

log = logging.getLogger("clmkit.server")


@dataclass
class ServerConfig:
    api_key: str | None = None  # None: no auth (the CLI then allows loopback binds only)
    max_body_bytes: int = 1 << 20
    max_n: int = 8  # choices per request (n x prompts)
    max_tokens: int | None = None  # per-request ceiling; None: the model's context
    default_max_tokens: int = 256  # when the request gives none (capped by the context left)
    max_active: int = 8  # sequences decoding at once
    max_waiting: int = 256  # sequences queued beyond those; more gets a 429
    batching: bool = True  # plain sequences share batched forwards; False: interleave one at a time


def create_app(model: Model | Engine, *, drafter: str | Callable | None = None, drafter_options: dict | None = None,
               config: ServerConfig | None = None, name: str | None = None) -> FastAPI:
    """An app serving `model` (a loaded Model, or an Engine). `drafter`: a registered drafter name or
    a zero-argument factory; each decoding sequence gets its own instance (drafters keep state)."""
    config = config or ServerConfig()
    engine = model if isinstance(model, Engine) else Engine(model)
    name = name or engine.model.name
    metrics = Metrics(name)
    pool = None
    if drafter is not None:
        from clmkit.drafters import make_drafter

        factory = drafter if callable(drafter) else (lambda: make_drafter(drafter, engine.model, **(drafter_options or {})))
        pool = DrafterPool(factory)
    scheduler = Scheduler(engine, metrics, pool, config.max_active, config.max_waiting, config.batching)

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="clmkit", version=clmkit.__version__, lifespan=lifespan)
    app.state.scheduler, app.state.metrics, app.state.engine = scheduler, metrics, engine
    handlers = _Handlers(engine, scheduler, config, name)

    async def authorized(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise s.ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise s.ApiError(401, "incorrect API key", code="invalid_api_key")

    auth = [Depends(authorized)]

    @app.get("/health")
    async def health():
        if scheduler.thread is None or not scheduler.thread.is_alive():
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return {"status": "ok", "model": name}

    @app.get("/metrics", dependencies=auth)
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=auth)
    async def models() -> s.ModelList:
        return s.ModelList(data=[s.ModelCard(id=name, created=int(handlers.started), max_model_len=engine.model.context_length)])

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: s.CompletionRequest, request: Request):
        return await handlers.serve(body, request, chat=False)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: s.ChatCompletionRequest, request: Request):
        return await handlers.serve(body, request, chat=True)

    @app.exception_handler(s.ApiError)
    async def api_error(request, e: s.ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        return JSONResponse(_validation_error(e).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(s.ApiError(e.status_code, str(e.detail), type=kind).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def bug(request, e: Exception):
        log.exception("internal error", exc_info=e)
        return JSONResponse(s.ApiError(500, f"internal error: {type(e).__name__}", type="server_error").body(), status_code=500)

    return RequestGate(app, config.max_body_bytes, metrics)


def _validation_error(e: RequestValidationError) -> s.ApiError:
    first = e.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return s.ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", code="invalid_json")
    param = ".".join(loc) or None
    where = f"{param}: " if param else "body: "
    return s.ApiError(400, where + first["msg"], param=param, code="invalid_value")


class RequestGate:
    """ASGI middleware: refuse bodies over the limit (413) before the app parses them, count requests by status.

    It reads the whole body (at most the limit) up front and replays it to the app; later receive
    calls go straight through, so the app still hears a client's disconnect."""

    def __init__(self, app: FastAPI, max_body_bytes: int, metrics: Metrics):
        self.app, self.limit, self.metrics = app, max_body_bytes, metrics
        self.state = app.state  # tests reach the scheduler through the app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 0}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            body = await self._read(scope, receive)
            if body is None:
                err = s.ApiError(413, f"the body is larger than the server's limit of {self.limit} bytes", code="body_too_large")
                await JSONResponse(err.body(), status_code=413)(scope, receive, counting_send)
                return
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, counting_send)
        finally:
            self.metrics.request(scope["path"] if scope["path"] in _ENDPOINTS else "other", status["code"] or 499)

    async def _read(self, scope, receive) -> bytes | None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return None
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return None
        return bytes(body)


DISCONNECT_CHECK_S = 0.25  # how often a non-streaming handler asks whether its client is still there
_ENDPOINTS = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"}


class ClientGone(Exception):
    pass


class _Handlers:
    """What the two generation endpoints share: validation, tokenizing, queueing, response shapes."""

    def __init__(self, engine: Engine, scheduler: Scheduler, config: ServerConfig, name: str):
        self.engine, self.scheduler, self.config, self.name = engine, scheduler, config, name
        self.context = engine.model.context_length
        self.started = time.time()
        tokenizer = engine.model.tokenizer
        self.token_text = lru_cache(maxsize=65536)(
            lambda i: tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False))

    # -- request -> sequences ---------------------------------------------------------------------

    async def serve(self, body: s.CompletionRequest | s.ChatCompletionRequest, request: Request, chat: bool):
        if body.model is not None and body.model != self.name:
            raise s.ApiError(404, f"the model {body.model!r} does not exist; this server serves {self.name!r}",
                             type="not_found_error", param="model", code="model_not_found")
        body.check_supported()
        stop = body.stop_list()
        prompts = [self._encode_chat(body.messages)] if chat else [self._encode_text(p) for p in body.prompts()]
        if len(prompts) * body.n > self.config.max_n:
            raise s.ApiError(400, f"n x prompts is {len(prompts) * body.n}, over this server's limit of {self.config.max_n}", param="n")
        limit = body.token_limit if chat else body.max_tokens
        param = "max_completion_tokens" if chat and body.max_completion_tokens is not None else "max_tokens"
        ceiling = self.config.max_tokens or self.context
        if limit is not None and limit > ceiling:
            raise s.ApiError(400, f"{param} is {limit}, over this server's limit of {ceiling}", param=param)
        guides = await self._guides(body.response_format, len(prompts) * body.n, body.ignore_eos) if chat else None
        logprobs_k = body.logprobs_k if chat else body.logprobs
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        sequences = []
        for p, ids in enumerate(prompts):
            room = self.context - len(ids)
            if room < 1:
                raise s.ApiError(400, f"the prompt is {len(ids)} tokens but the model's context is {self.context} tokens",
                                 param="messages" if chat else "prompt", code="context_length_exceeded")
            if limit is not None and limit > room:
                raise s.ApiError(400, f"the model's context is {self.context} tokens; the prompt takes {len(ids)}, "
                                      f"so {param} can be at most {room}, got {limit}", param=param, code="context_length_exceeded")
            max_new = limit if limit is not None else min(self.config.default_max_tokens, room)
            for j in range(body.n):
                seed = None if body.seed is None else body.seed + j  # n choices: n different, reproducible draws
                try:
                    sampling = Sampling(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, seed=seed)
                except ClmkitError as e:
                    raise s.ApiError(400, str(e)) from None
                options = dict(max_new_tokens=max_new, sampling=sampling, stop=stop, ignore_eos=body.ignore_eos)
                if guides:
                    options["guide"] = guides[p * body.n + j]
                sequences.append(Sequence(ids, options, loop, logprobs_k, events=events, index=p * body.n + j))
        self.scheduler.submit(sequences)
        usage = _UsageCounter(sum(len(ids) for ids in prompts))
        shape = _ChatShape(self, body) if chat else _CompletionShape(self, body)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return SequenceStream(self._sse(sequences, events, shape, usage, include_usage), sequences)
        try:
            results = await self._collect(request, sequences, events)
        except ClientGone:
            return Response(status_code=499)
        finally:
            for seq in sequences:
                seq.cancel()  # a no-op for finished ones; stops the rest if the client left
        return shape.response(results, usage.of(results))

    def _encode_text(self, prompt: str | list[int]) -> list[int]:
        try:
            return self.engine.encode(prompt, chat=False)
        except ClmkitError as e:
            raise s.ApiError(400, str(e), param="prompt") from None

    def _encode_chat(self, messages: list[s.Message]) -> list[int]:
        try:
            return self.engine.encode([m.as_template_message() for m in messages])
        except ClmkitError as e:
            raise s.ApiError(400, str(e), param="messages") from None
        except Exception as e:  # noqa: BLE001 — a chat template may raise anything on odd message orders
            raise s.ApiError(400, f"the model's chat template rejected the messages: {e}", param="messages") from None

    async def _guides(self, fmt: s.ResponseFormat | None, count: int, ignore_eos: bool) -> list | None:
        """One grammar guide per choice (guides keep per-sequence state), or None for free text."""
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            schema = {"type": "object"}  # any JSON object, as OpenAI's JSON mode promises
        else:
            schema = (fmt.json_schema or {}).get("schema")
            if not isinstance(schema, (dict, bool)):
                raise s.ApiError(400, "response_format.json_schema.schema must be a JSON schema object",
                                 param="response_format.json_schema.schema")
        if ignore_eos:
            raise s.ApiError(400, "ignore_eos cannot be combined with response_format: a structured output ends with EOS",
                             param="ignore_eos")
        try:
            from clmkit.guide import make_guide
        except ImportError:
            raise s.ApiError(400, f"response_format type {fmt.type!r} is not supported by this server: it needs "
                                  "guided decoding (clmkit.guide), which is not installed",
                             param="response_format", code="unsupported_response_format") from None
        try:  # compiling a grammar takes milliseconds to a second: keep the event loop free meanwhile
            return [await asyncio.to_thread(make_guide, "grammar", self.engine.model, json_schema=schema) for _ in range(count)]
        except ClmkitError as e:
            raise s.ApiError(400, f"response_format: {e}", param="response_format") from None

    # -- events -> responses ----------------------------------------------------------------------

    async def _collect(self, request: Request, sequences: list[Sequence], events: asyncio.Queue) -> list["_Result"]:
        results = [_Result() for _ in sequences]
        open_, loop = len(sequences), asyncio.get_running_loop()
        next_check = loop.time() + DISCONNECT_CHECK_S
        while open_:
            try:
                event = await asyncio.wait_for(events.get(), timeout=DISCONNECT_CHECK_S)
            except asyncio.TimeoutError:
                event = None
            if loop.time() >= next_check:  # by the clock: events may arrive faster than any timeout
                if await request.is_disconnected():
                    raise ClientGone
                next_check = loop.time() + DISCONNECT_CHECK_S
            if event is None:
                continue
            if event.error is not None:
                raise _as_api_error(event.error)
            results[event.index].add(event)
            open_ -= event.finish_reason is not None
        return results

    async def _sse(self, sequences, events: asyncio.Queue, shape, usage: "_UsageCounter", include_usage: bool) -> AsyncIterator[str]:
        results = [_Result() for _ in sequences]
        for chunk in shape.opening(len(sequences)):
            yield _sse(chunk)
        open_ = len(sequences)
        while open_:
            event = await events.get()
            if event.error is not None:
                yield _sse(_as_api_error(event.error).body())
                break
            results[event.index].add(event)
            open_ -= event.finish_reason is not None
            if event.text or event.finish_reason or event.logprobs:
                yield _sse(shape.chunk(event, results[event.index]))
        else:
            if include_usage:
                yield _sse(shape.usage_chunk(usage.of(results)))
        yield "data: [DONE]\n\n"

    def logprob_entries(self, scores) -> list[s.TokenLogprob]:
        def entry(token_id: int, logprob: float) -> dict:
            text = self.token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return [s.TokenLogprob(**entry(t.token_id, t.logprob), top_logprobs=[s.TopLogprob(**entry(i, lp)) for i, lp in t.top])
                for t in scores]


def _sse(payload) -> str:
    data = payload.model_dump_json() if hasattr(payload, "model_dump_json") else json.dumps(payload)
    return f"data: {data}\n\n"


def _as_api_error(error: Exception) -> s.ApiError:
    if isinstance(error, s.ApiError):
        return error
    if isinstance(error, ClmkitError):
        return s.ApiError(400, str(error))
    return s.ApiError(500, f"internal error: {type(error).__name__}", type="server_error")


class _Result:
    """One choice, accumulated from its events."""

    def __init__(self):
        self.text, self.scores, self.finish_reason, self.completion_tokens = "", [], None, 0

    def add(self, event: Event) -> None:
        self.text += event.text
        self.scores += event.logprobs or []
        self.finish_reason = event.finish_reason
        self.completion_tokens = event.completion_tokens


@dataclass
class _UsageCounter:
    prompt_tokens: int  # OpenAI counts each prompt once, whatever n is

    def of(self, results: list[_Result]) -> s.Usage:
        completion = sum(r.completion_tokens for r in results)
        return s.Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion, total_tokens=self.prompt_tokens + completion)


class _ChatShape:
    def __init__(self, handlers: _Handlers, body: s.ChatCompletionRequest):
        self.h, self.logprobs = handlers, body.logprobs
        self.id, self.created = s.new_id(chat=True), int(time.time())
        self.common = dict(id=self.id, created=self.created, model=handlers.name, system_fingerprint=_FINGERPRINT)

    def _logprobs(self, scores):
        return s.ChatLogprobs(content=self.h.logprob_entries(scores)) if self.logprobs else None

    def response(self, results: list[_Result], usage: s.Usage) -> s.ChatCompletion:
        choices = [s.ChatChoice(index=i, message=s.ChatMessage(content=r.text), logprobs=self._logprobs(r.scores),
                                finish_reason=r.finish_reason) for i, r in enumerate(results)]
        return s.ChatCompletion(choices=choices, usage=usage, **self.common)

    def opening(self, n: int) -> list[s.ChatCompletionChunk]:
        return [s.ChatCompletionChunk(choices=[s.ChatChunkChoice(index=i, delta={"role": "assistant", "content": ""})], **self.common)
                for i in range(n)]

    def chunk(self, event: Event, result: _Result) -> s.ChatCompletionChunk:
        delta = {"content": event.text} if event.text else {}
        choice = s.ChatChunkChoice(index=event.index, delta=delta, logprobs=self._logprobs(event.logprobs or []),
                                   finish_reason=event.finish_reason)
        return s.ChatCompletionChunk(choices=[choice], **self.common)

    def usage_chunk(self, usage: s.Usage) -> s.ChatCompletionChunk:
        return s.ChatCompletionChunk(choices=[], usage=usage, **self.common)


class _CompletionShape:
    def __init__(self, handlers: _Handlers, body: s.CompletionRequest):
        self.h, self.logprobs = handlers, body.logprobs
        self.common = dict(id=s.new_id(chat=False), created=int(time.time()), model=handlers.name,
                           system_fingerprint=_FINGERPRINT)

    def _logprobs(self, scores, offset: int) -> s.CompletionLogprobs | None:
        if self.logprobs is None:
            return None
        entries = self.h.logprob_entries(scores)
        offsets, at = [], offset
        for e in entries:
            offsets.append(at)
            at += len(e.token)
        return s.CompletionLogprobs(tokens=[e.token for e in entries], token_logprobs=[e.logprob for e in entries],
                                    top_logprobs=[{t.token: t.logprob for t in e.top_logprobs} for e in entries],
                                    text_offset=offsets)

    def response(self, results: list[_Result], usage: s.Usage) -> s.Completion:
        choices = [s.CompletionChoice(index=i, text=r.text, logprobs=self._logprobs(r.scores, 0), finish_reason=r.finish_reason)
                   for i, r in enumerate(results)]
        return s.Completion(choices=choices, usage=usage, **self.common)

    def opening(self, n: int) -> list:
        return []

    def chunk(self, event: Event, result: _Result) -> s.Completion:
        offset = len(result.text) - len(event.text)
        choice = s.CompletionChoice(index=event.index, text=event.text, logprobs=self._logprobs(event.logprobs or [], offset),
                                    finish_reason=event.finish_reason)
        return s.Completion(choices=[choice], **self.common)

    def usage_chunk(self, usage: s.Usage) -> s.Completion:
        return s.Completion(choices=[], usage=usage, **self.common)


_FINGERPRINT = f"clmkit-{clmkit.__version__}"


class SequenceStream(StreamingResponse):
    """An SSE response that cancels its sequences however it ends: finished, client gone, or error."""

    def __init__(self, content: AsyncIterator[str], sequences: list[Sequence]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.sequences = sequences

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            for seq in self.sequences:
                seq.cancel()


# -- running a server in-process (tests, load test, benchmarks) ----------------------------------------


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket; port 0: a free port chosen by the OS (no fixed ports, no races)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1", log_level: str = "warning"):
    """Serve `app` with uvicorn in a thread on a free port; yield its base URL; stop it after."""
    import uvicorn

    sock = listening_socket(host)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, http="h11", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="clmkit-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()

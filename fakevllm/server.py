"""aiohttp server speaking vLLM's OpenAI-compatible HTTP API over the simulated engine."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from aiohttp import web

from fakevllm import apis, realtime
from fakevllm import protocol as p
from fakevllm.engine import Engine, Seq, block_hashes
from fakevllm.lora import Loras
from fakevllm.metrics import VLLMCollector, make_registry, orca_header, render

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# None is healthy. "down": connections are cut without a response (/fake/* still answers);
# "refuse": the port stops listening; "error500"/"busy429": every /v1 request fails while
# /health stays 200; "unhealthy": only /health fails (503); "slow": 10x step time (or `factor`);
# "hang": the engine freezes (streams stall, new requests queue), /health stays 200 as
# with a wedged vLLM V1 engine.
FAULT_MODES = (None, "down", "refuse", "error500", "unhealthy", "slow", "hang", "busy429")
SLOWDOWN = 10.0
ORCA_FORMAT_HEADER = "endpoint-load-metrics-format"
INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}) | apis.INFERENCE_PATHS
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


class ApiError(Exception):
    """An error answered with vLLM's error JSON."""

    def __init__(self, status: int, err_type: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.err_type, self.param = status, err_type, param

    def response(self) -> web.Response:
        headers = {"Retry-After": "1"} if self.status == 429 else None
        return web.Response(status=self.status, content_type="application/json", headers=headers,
                            body=p.error_body(str(self), self.err_type, self.status, self.param))


class _Unauthorized(ApiError):
    """vLLM's auth middleware answers a bare {"error": "Unauthorized"}, not its usual shape."""

    def __init__(self) -> None:
        super().__init__(401, "Unauthorized", "Unauthorized")

    def response(self) -> web.Response:
        return web.json_response({"error": "Unauthorized"}, status=401)


@dataclass
class ServerStats:
    requests_received: int = 0  # inference requests, including those refused by a fault
    completed: int = 0
    cancelled: int = 0  # the client went away first
    dropped: int = 0  # cut by the "down"/"refuse" fault or by stop()
    rejected: int = 0  # answered with an error status
    in_flight: int = 0


class FakeServer:
    """One fake vLLM endpoint; every method runs on the event loop that started it."""

    def __init__(
        self,
        models: Sequence[str] = ("fake-model",),
        *,
        speed: float = 1.0,
        max_num_seqs: int = 16,
        kv_tokens: int = 16 * 4096,
        step_time: float = 0.02,
        prefill_time_per_token: float = 0.0002,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        metrics_style: str = "v1",
        max_model_len: int | None = None,
        default_max_tokens: int = 16,
        embedding_dim: int = 64,
        responses_store: bool | None = None,
        lora_modules: dict[str, str] | None = None,
        max_loras: int = 1,
        runtime_lora_updating: bool = False,
    ) -> None:
        self.models = [models] if isinstance(models, str) else list(models)
        if not self.models:
            raise ValueError("at least one model name is required")
        self.engine = Engine(max_num_seqs=max_num_seqs, kv_tokens=kv_tokens, step_time=step_time,
                             prefill_time_per_token=prefill_time_per_token, speed=speed)
        self.host, self.port = host, port
        self.api_key = api_key
        self.max_model_len = min(max_model_len or 32768, kv_tokens)
        self.default_max_tokens = default_max_tokens
        self.embedding_dim = embedding_dim
        self.fault: str | None = None
        # None: as vLLM, VLLM_ENABLE_RESPONSES_API_STORE=1 in the environment turns the store on.
        self.apis = apis.Apis(self, responses_store)
        self.counters = ServerStats()
        self.loras = Loras(lora_modules, self.models[0], max_loras=max_loras,
                           runtime_updating=runtime_lora_updating)
        self._registry = make_registry(VLLMCollector(self.engine, self.models[0], metrics_style,
                                                     extra=self.loras.collect))
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._stopping = False
        self._fault_generation = 0
        self._timers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen; after a stop() this serves again on the same port, like a restarted server."""
        self._stopping = False
        self.apis.reset()
        app = web.Application(middlewares=[self._gate], client_max_size=64 * 2**20)
        app.add_routes([
            web.post("/v1/chat/completions", self._chat),
            web.post("/v1/completions", self._completions),
            web.post("/v1/embeddings", self._embeddings),
            web.get("/v1/models", self._models),
            *self.apis.routes(),
            web.get("/v1/realtime", self._realtime),
            *self.loras.routes(),
            web.get("/health", self._health),
            web.get("/metrics", self._metrics),
            web.get("/load", self._load),
            web.post("/fake/fault", self._fault),
            web.get("/fake/stats", self._stats),
        ])
        # handler_cancellation makes a client disconnect cancel its handler at once.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        self.engine.start()
        self._apply_fault(None)
        await self._listen()

    async def stop(self) -> None:
        self._stopping = True
        for task in self._timers:
            task.cancel()
        self._cut_connections()
        if self._runner:
            await self._runner.cleanup()
        await self.engine.stop()

    async def set_fault(self, mode: str | None, duration: float | None = None,
                        keep: web.Request | None = None, factor: float | None = None) -> None:
        """Switch fault mode; after `duration` seconds it reverts to healthy.
        `factor` is how many times slower "slow" makes the engine (default 10)."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {FAULT_MODES}")
        if duration is not None and (not isinstance(duration, (int, float)) or duration < 0):
            raise ValueError(f"duration must be a number of seconds, got {duration!r}")
        if factor is not None:
            if mode != "slow":
                raise ValueError(f"factor applies to the 'slow' mode only, not {mode!r}")
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 <= factor <= 1000:
                raise ValueError(f"factor must be a number from 1 to 1000, got {factor!r}")
        previous = self.fault
        self._apply_fault(mode, SLOWDOWN if factor is None else float(factor))
        if mode in ("down", "refuse"):
            self._cut_connections(keep)
        if mode == "refuse" and self._site:
            await self._site.stop()
            self._site = None
        elif previous == "refuse" and mode != "refuse" and not self._stopping:
            await self._listen()
        if duration:
            self._schedule_clear(duration, self._fault_generation)

    def stats(self) -> dict[str, Any]:
        e = self.engine
        return {
            **asdict(self.counters),
            "running": len(e.running),
            "waiting": len(e.waiting),
            "kv_cache_usage": e.kv.usage(),
            "prefix_cache_queries": e.counters.prefix_queries,
            "prefix_cache_hits": e.counters.prefix_hits,
            "prompt_tokens": e.counters.prompt_tokens,
            "generation_tokens": e.counters.generation_tokens,
            "fault": self.fault,
            "url": self.url,
            "models": self.models,
        }

    # -- plumbing -------------------------------------------------------------------

    def _apply_fault(self, mode: str | None, slowdown: float = SLOWDOWN) -> None:
        self.fault = mode
        self._fault_generation += 1
        self.engine.slowdown = slowdown if mode == "slow" else 1.0
        self.engine.set_paused(mode == "hang")

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, backlog=4096, reuse_address=True)
        await self._site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]

    def _cut_connections(self, keep: web.Request | None = None) -> None:
        if self._runner is None or self._runner.server is None:
            return
        kept = keep.transport if keep is not None else None
        for conn in self._runner.server.connections:
            if conn.transport is not None and conn.transport is not kept:
                conn.transport.abort()

    def _schedule_clear(self, duration: float, generation: int) -> None:
        async def clear() -> None:
            await asyncio.sleep(duration)
            if generation == self._fault_generation:
                await self.set_fault(None)

        task = asyncio.get_running_loop().create_task(clear())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/fake/"):
            return await handler(request)
        inference = path in INFERENCE_PATHS
        self.counters.requests_received += inference
        if self.fault in ("down", "refuse"):
            self.counters.dropped += inference
            if request.transport is not None:
                request.transport.abort()
            await asyncio.Future()  # the lost connection cancels this handler
        try:
            if path.startswith("/v1"):
                self._check_v1(request)
            return await handler(request)
        except ApiError as err:
            self.counters.rejected += inference
            return err.response()
        except p.BadRequest as err:
            self.counters.rejected += inference
            return ApiError(400, "BadRequestError", str(err)).response()

    def _check_v1(self, request: web.Request) -> None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise _Unauthorized()
        if self.fault == "error500":
            raise ApiError(500, "InternalServerError", "Simulated engine failure.")
        if self.fault == "busy429":
            raise ApiError(429, "TooManyRequestsError", "The server is at capacity, retry later.")

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], str]:
        try:
            body = await request.json()
        except ValueError as err:
            raise p.BadRequest(f"Invalid JSON body: {err}") from None
        if not isinstance(body, dict):
            raise p.BadRequest("The request body must be a JSON object")
        model = body.get("model") or self.models[0]
        if not isinstance(model, str):  # vLLM's request models refuse it (pydantic)
            raise p.BadRequest("model: Input should be a valid string")
        if not self._serves(model):
            raise ApiError(404, "NotFoundError", f"The model `{model}` does not exist.", param="model")
        return body, model

    def _serves(self, model: str) -> bool:
        return model in self.models or model in self.loras.modules

    def _new_seqs(self, prompts: list[list[Any]], n_out: int, salt: Any,
                  model: str | None = None) -> tuple[list[Seq], asyncio.Event]:
        for tokens in prompts:
            if len(tokens) + n_out > self.max_model_len:
                raise p.BadRequest(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                    f"requested {len(tokens) + n_out} tokens ({len(tokens)} in the messages, {n_out} in "
                    "the completion). Please reduce the length of the messages or completion.")
        wake = asyncio.Event()
        salt = salt if isinstance(salt, str) else None
        seqs = [Seq(len(t), n_out, block_hashes(t, salt), wake) for t in prompts]
        if model is not None:
            self.loras.track(seqs, model)
        return seqs, wake

    @contextlib.contextmanager
    def _track(self, seqs: list[Seq]) -> Iterator[None]:
        """Run `seqs` in the engine for the duration of a request; abort what is left."""
        self.counters.in_flight += 1
        for seq in seqs:
            self.engine.submit(seq)
        try:
            yield
        except (asyncio.CancelledError, ConnectionError):
            if self._stopping or self.fault in ("down", "refuse"):
                self.counters.dropped += 1
            else:
                self.counters.cancelled += 1
            raise
        finally:
            self.counters.in_flight -= 1
            self.loras.forget(seqs)
            for seq in seqs:
                self.engine.abort(seq)

    @staticmethod
    async def _until_done(seqs: list[Seq], wake: asyncio.Event) -> None:
        while not all(s.done for s in seqs):
            wake.clear()
            await wake.wait()
        if any(s.aborted for s in seqs):
            raise ApiError(500, "InternalServerError", "The engine stopped.")

    def _json(self, obj: Any, request: web.Request | None = None) -> web.Response:
        headers = None
        if request is not None and (fmt := request.headers.get(ORCA_FORMAT_HEADER)):
            headers = orca_header(fmt, self.engine)
        return web.Response(body=p.dumps(obj), content_type="application/json", headers=headers)

    # -- OpenAI routes ----------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, model = await self._body(request)
        prompts = [p.render_chat(body.get("messages"))]
        return await self._generate(request, body, model, prompts, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, model = await self._body(request)
        prompts = p.prompt_list(body.get("prompt"))
        return await self._generate(request, body, model, prompts, chat=False)

    async def _generate(self, request: web.Request, body: dict[str, Any], model: str,
                        prompts: list[list[Any]], chat: bool) -> web.StreamResponse:
        n_out = p.max_tokens(body, self.default_max_tokens)
        seqs, wake = self._new_seqs(prompts, n_out, body.get("cache_salt"), model)
        rid = ("chatcmpl-" if chat else "cmpl-") + (request.headers.get("X-Request-Id") or uuid.uuid4().hex)
        created = int(time.time())
        if body.get("stream"):
            opts = body.get("stream_options")
            opts = opts if isinstance(opts, dict) else {}
            include_usage = bool(opts.get("include_usage"))
            writer = p.ChunkWriter(rid, created, model, chat, include_usage and
                                   bool(opts.get("continuous_usage_stats")))
            return await self._stream(request, seqs, wake, writer, include_usage)
        with self._track(seqs):
            await self._until_done(seqs, wake)
        build = p.chat_response if chat else p.completion_response
        prompt_tokens = sum(s.prompt_len for s in seqs)
        obj = build(rid, created, model, [p.filler_text(n_out, chat)] * len(seqs), prompt_tokens,
                    n_out * len(seqs))
        self.counters.completed += 1
        # vLLM attaches the load report to non-streaming responses only.
        return self._json(obj, request)

    async def _stream(self, request: web.Request, seqs: list[Seq], wake: asyncio.Event,
                      writer: p.ChunkWriter, include_usage: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers=SSE_HEADERS)
        with self._track(seqs):
            await resp.prepare(request)  # vLLM sends the headers before the first token
            out = [writer.role(i, s.prompt_len) for i, s in enumerate(seqs)] if writer.chat else []
            sent = [0] * len(seqs)
            while True:
                for i, seq in enumerate(seqs):
                    for k in range(sent[i], seq.generated):
                        out.append(writer.token(i, k, k + 1 == seq.max_tokens, seq.prompt_len))
                    sent[i] = seq.generated
                if out:
                    await resp.write(b"".join(out))
                    out.clear()
                if all(s.done for s in seqs):
                    break
                wake.clear()
                await wake.wait()
            if any(s.aborted for s in seqs):
                raise ConnectionResetError("engine stopped mid-stream")
            if include_usage:
                out.append(writer.final_usage(sum(s.prompt_len for s in seqs), sum(sent)))
            out.append(p.SSE_DONE)
            await resp.write(b"".join(out))
            await resp.write_eof()
        self.counters.completed += 1
        return resp

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, model = await self._body(request)
        prompts = p.prompt_list(body.get("input"), "input")
        dim = body.get("dimensions") or self.embedding_dim
        if not isinstance(dim, int) or dim < 1:
            raise p.BadRequest("'dimensions' must be a positive integer")
        seqs, wake = self._new_seqs(prompts, 0, body.get("cache_salt"))
        with self._track(seqs):
            await self._until_done(seqs, wake)
        vectors = [p.embedding(tokens, dim) for tokens in prompts]
        obj = p.embeddings_response("embd-" + uuid.uuid4().hex, int(time.time()), model, vectors,
                                    sum(s.prompt_len for s in seqs), body.get("encoding_format") or "float")
        self.counters.completed += 1
        return self._json(obj)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        created = int(time.time())
        data = [{"id": m, "object": "model", "created": created, "owned_by": "vllm", "root": self.models[0],
                 "parent": None, "max_model_len": self.max_model_len,
                 "permission": [p.model_permission(created)]} for m in self.models]
        return self._json({"object": "list", "data": data + self.loras.cards(created)})

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        return await realtime.serve(request, self._serves)

    # -- operational routes ------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=503 if self.fault == "unhealthy" else 200)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=render(self._registry), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _load(self, request: web.Request) -> web.StreamResponse:
        return self._json({"server_load": self.counters.in_flight})

    async def _fault(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            await self.set_fault(body.get("mode"), body.get("duration"), keep=request, factor=body.get("factor"))
        except (ValueError, AttributeError, TypeError) as err:
            return web.json_response({"error": str(err)}, status=400)
        return web.json_response({"mode": self.fault})

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())


class FakeVLLM:
    """A FakeServer on its own event loop in a background thread, for synchronous tests."""

    def __init__(self, models: Sequence[str] = ("fake-model",), **kwargs: Any) -> None:
        self.server = FakeServer(models, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> FakeVLLM:
        """Start serving; returns once the port is listening."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fakevllm-{id(self):x}",
                                        daemon=True)
        self._thread.start()
        try:
            self._call(self.server.start())
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    def stop(self) -> None:
        """Stop serving, cutting in-flight requests, and join the thread."""
        if self._thread is None:
            return
        try:
            self._call(self.server.stop())
        finally:
            self._shutdown_loop()

    def set_fault(self, mode: str | None, duration: float | None = None, factor: float | None = None) -> None:
        self._call(self.server.set_fault(mode, duration, factor=factor))

    def stats(self) -> dict[str, Any]:
        return self._call(self._async(self.server.stats))

    def __enter__(self) -> FakeVLLM:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        if self._loop is None:
            raise RuntimeError("FakeVLLM is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    @staticmethod
    async def _async(fn: Callable[[], T]) -> T:
        return fn()

    def _shutdown_loop(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop, self._thread = None, None

"""`create_app(settings)`: the FastAPI application serving docs/DESIGN.md §6.

    app = create_app(ServerSettings(bundle="out/bundle"))          # uvicorn.run(app, ...)
    app = create_app(settings, runner_factory=lambda s: runner)    # tests: any ModelRunner

The app is live at once: loading and warm-up run in a background thread, and /health and /v1 answer 503 until both
are done. One Engine (server/engine.py) owns the model on its own thread; shutdown stops admitting, lets in-flight
requests finish for `drain_timeout` seconds, then aborts the rest. Every response carries X-Request-Id (made by the
server; a client's own X-Request-Id is logged and kept in the debug record, never used as a key), and every request is
logged as one JSON line (logger `brainstacks.access`).

Security (docs/DESIGN.md §6): `GuardMiddleware`, a pure ASGI layer in front of every route, checks the bearer key before
any byte of the body is read, then reads the body up to `max_body_bytes` (413 beyond). /v1 and /metrics need the API key
(or the admin key) when one is set; /admin and /debug need the admin key when set, else the API key when set, else
they answer loopback clients only (403 for others). /health*, / and the OpenAPI pages are open.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from server import api
from server.engine import Engine, Event, GenRequest
from server.errors import (
    ERROR_RESPONSES,
    APIError,
    forbidden,
    install_error_handlers,
    invalid,
    not_found,
    not_ready,
    payload_too_large,
    unauthorized,
)
from server.metrics import Metrics
from server.registry import Registry, load_runner, watch
from server.runner import ModelRunner
from server.sampling import SamplingParams
from server.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
    ModelObject,
    RouteRequest,
    finish_openapi,
)
from server.settings import ServerSettings
from server.textstream import encode_prompt, render_chat

log = logging.getLogger("brainstacks.server")
access_log = logging.getLogger("brainstacks.access")

_RID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# GET / (the playground): a public page with no data in it; it may load only its own files and call this origin
STATIC_DIR = Path(__file__).parent / "static"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                           "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


class ServerState:
    """Everything the routes share: settings, metrics, and (once loaded) runner, engine and registry."""

    def __init__(self, settings: ServerSettings, runner_factory: Callable[[ServerSettings], ModelRunner]):
        self.settings = settings
        self.runner_factory = runner_factory
        self.metrics = Metrics()
        self.runner: ModelRunner | None = None
        self.engine: Engine | None = None
        self.registry: Registry | None = None
        self.ready = False
        self.load_error: str | None = None
        self.loaded = threading.Event()
        self.history: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self.on_load_error: Callable[[str], None] | None = None
        # under Ray Serve (server/ray_serve.py): this replica's view of the others; /admin answers for all of them
        self.cluster: Any = None

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Load, start the engine and warm up (background thread)."""
        try:
            t0 = time.perf_counter()
            if self.settings.threads:
                import torch

                torch.set_num_threads(self.settings.threads)
            runner = self.runner_factory(self.settings)
            s = self.settings
            engine = Engine(runner, max_batch=s.max_batch, max_waiting=s.max_waiting,
                            max_prefill_tokens=s.max_prefill_tokens, metrics=self.metrics,
                            kv_token_budget=s.kv_token_budget, max_queue_wait=s.max_queue_wait,
                            ready_failed_steps=s.ready_failed_steps, ready_stuck_seconds=s.ready_stuck_seconds)
            engine.start()
            self.runner, self.engine = runner, engine
            self.registry = Registry(runner, engine, self.metrics, call_timeout=s.engine_call_timeout)
            self.registry.update_gauges()
            if self.settings.warmup:
                self._warmup()
            self.ready = True
            log.info("ready: bundle version %d, domains %s, loaded in %.1fs", runner.bundle_version, runner.domains,
                     time.perf_counter() - t0)
        except Exception as e:  # reported by /health and, under the CLI, ends the process
            self.load_error = f"{type(e).__name__}: {e}"
            log.exception("loading failed")
            if self.on_load_error is not None:
                self.on_load_error(self.load_error)
        finally:
            self.loaded.set()

    def _warmup(self) -> None:
        """One short routed generation through every code path (router, prefill, decode)."""
        done = threading.Event()
        errors: list[str] = []

        def sink(ev: Event) -> None:
            if ev.kind == "error":
                errors.append(ev.message)
                done.set()
            elif ev.kind == "finish":
                done.set()

        tok = self.runner.tokenizer
        ids = encode_prompt(tok, "hello") or [0]
        self.engine.submit(GenRequest("warmup", ids, SamplingParams(max_tokens=2, temperature=0.0), sink))
        if not done.wait(timeout=600):
            raise RuntimeError("warm-up generation did not finish")
        if errors:
            raise RuntimeError(f"warm-up failed: {errors[0]}")

    def drain(self) -> None:
        """First step of a graceful shutdown (SIGTERM; server.cli.DrainingServer runs it before uvicorn waits for
        open connections): stop admitting, let in-flight requests finish for drain_timeout, then end the rest with
        an error (a 503; in a stream: an error event, then [DONE]), so no stream is cut without a word."""
        self.ready = False
        if self.engine is not None:
            self.engine.drain(self.settings.drain_timeout)

    def shutdown(self) -> None:
        self.ready = False
        if self.engine is not None:
            self.engine.stop(self.settings.drain_timeout)

    # ------------------------------------------------------------------ debug history
    def finish_generation(self, g: api.Generation) -> None:
        """Record a finished (or cancelled) generation: metrics and the bounded debug history."""
        if getattr(g, "_recorded", False):
            return
        g._recorded = True
        m = self.metrics
        r = self.runner
        now = time.monotonic()
        usage = api.usage(g)
        m.prompt_tokens.inc(usage["prompt_tokens"])
        m.generation_tokens.inc(usage["completion_tokens"])
        q0 = g.reqs[0] if g.reqs else None
        timings: dict[str, float | None] = {}
        if q0 is not None:
            arrival = min(q.arrival for q in g.reqs)
            firsts = [q.first_token_at for q in g.reqs if q.first_token_at is not None]
            admitted = [q.admitted_at for q in g.reqs if q.admitted_at is not None]
            if admitted:
                m.queue.observe(min(admitted) - arrival)
            if firsts:
                m.ttft.observe(min(firsts) - arrival)
                n_out = max(c.n_tokens for c in g.choices) if g.choices else 0
                if n_out > 1:
                    m.tpot.observe((now - min(firsts)) / (n_out - 1))
            m.e2e.observe(now - arrival)
            for q in g.reqs:
                if q.route_ms:
                    m.route_time.observe(q.route_ms / 1000)
            ms = lambda t: None if t is None else round((t - arrival) * 1000, 3)  # noqa: E731
            timings = {"queue_ms": ms(min(admitted)) if admitted else None,
                       "route_ms": round(sum(q.route_ms for q in g.reqs), 3),
                       "prefill_ms": round(max(q.prefill_ms for q in g.reqs), 3),
                       "ttft_ms": ms(min(firsts)) if firsts else None,
                       "e2e_ms": ms(now)}
        if g.prep.weights is None:  # routed: the router's choice per domain
            for w in g.weights:
                for d, v in (w or {}).items():
                    m.router_weight.labels(domain=d).observe(v)
        ext = api.brainstacks_ext(self, g)
        active = []
        stacks = r.stacked.stacks if r.stacked is not None else []
        for d, v in ext["weights"].items():
            if v > 0:
                active += [f"{dd}/{k}" for dd, k in stacks if dd == d]
        rec = {"id": g.id, "object": "debug.request", "request_id": g.request_id,
               "client_request_id": g.client_request_id, "model": g.prep.model, "user": g.prep.user,
               "created": g.created, "routed": g.prep.weights is None, "weights": ext["weights"],
               "prompt_weights": ext.get("prompt_weights"), "active_stacks": active,
               "bundle_version": g.bundle_version, "usage": usage,
               "finish_reasons": [c.finish_reason or "cancelled" for c in g.choices],
               "timings": timings, "error": g.error}
        # keyed only by ids the server made (the completion id and the server's request id), so no client header
        # can overwrite or shadow another request's record
        self.history[g.id] = rec
        if g.request_id:
            self.history[g.request_id] = rec
        while len(self.history) > 2 * self.settings.debug_history:
            self.history.popitem(last=False)


def _bearer(scope) -> str | None:
    for k, v in scope.get("headers", []):
        if k == b"authorization":
            h = v.decode("latin-1")
            return h[7:].strip() if h[:7].lower() == "bearer " else None
    return None


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped forms; False for anything else (names, None)."""
    if not host:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def security_warnings(settings: ServerSettings) -> list[str]:
    """What is exposed by binding `settings.host` with the keys set (logged loudly at startup)."""
    if settings.host == "localhost" or is_loopback(settings.host):
        return []
    out = []
    if settings.api_key is None:
        out.append(f"binding {settings.host} with no BRAINSTACKS_API_KEY: /v1 and /metrics are open to every client "
                   "that can reach this address")
    if settings.api_key is None and settings.admin_key is None:
        out.append("no BRAINSTACKS_ADMIN_KEY or BRAINSTACKS_API_KEY: /admin and /debug answer loopback clients only "
                   "(set a key to use them remotely)")
    return out


def _check(token: str | None, *keys: str | None) -> bool:
    if token is None:
        return False
    return any(k is not None and hmac.compare_digest(token.encode(), k.encode()) for k in keys)


def create_app(settings: ServerSettings | None = None,
               runner_factory: Callable[[ServerSettings], ModelRunner] | None = None) -> FastAPI:
    """The app for `settings` (default: from the environment). `runner_factory` replaces bundle loading (tests)."""
    settings = settings or ServerSettings()
    state = ServerState(settings, runner_factory or load_runner)
    for w in security_warnings(settings):
        log.warning("SECURITY: %s", w)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = threading.Thread(target=state.load, name="brainstacks-loader", daemon=True)
        loader.start()
        stop = asyncio.Event()
        watcher = None

        async def start_watch():
            await asyncio.to_thread(state.loaded.wait)
            if state.ready and settings.watch and state.registry is not None:
                await watch(state.registry, settings.watch_interval, stop)

        if settings.watch:
            watcher = asyncio.create_task(start_watch())
        try:
            yield
        finally:
            stop.set()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher
            await asyncio.to_thread(state.shutdown)

    app = FastAPI(title="Brainstacks", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible routed inference over frozen MoE-LoRA stacks (docs/DESIGN.md §6).")
    app.state.bs = state
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, settings=settings)  # inner: auth, then the body limit
    app.add_middleware(AccessMiddleware, state=state)  # outer: request id and access log, refusals included

    # ------------------------------------------------------------------ guards (the keys: GuardMiddleware)
    def need_ready() -> None:
        if not state.ready:
            if state.load_error:
                raise not_ready(f"The model failed to load: {state.load_error}")
            raise not_ready()

    v1 = [Depends(need_ready)]
    admin = [Depends(need_ready)]

    # ------------------------------------------------------------------ routes
    def engine_ready() -> None:
        """503 unless loaded and warmed, and the engine is healthy (thread alive, steps succeeding, not stuck)."""
        need_ready()
        h = state.engine.health() if state.engine is not None else {"ready": False, "reason": "no engine"}
        if not h["ready"]:
            raise not_ready(f"The engine is not healthy: {h['reason']}.")

    @app.get("/health", tags=["ops"], responses=ERROR_RESPONSES)
    async def health() -> dict:
        """200 once the bundle is loaded and warmed and the engine is healthy; 503 before, or if loading failed, or
        whenever /health/ready would answer 503."""
        engine_ready()
        return {"status": "ok", "bundle_version": state.runner.bundle_version, "domains": state.runner.domains}

    @app.get("/health/live", tags=["ops"])
    async def health_live() -> dict:
        """Liveness probe: 200 while the process serves HTTP (loading included); restart it only when this fails."""
        return {"status": "ok"}

    @app.get("/health/ready", tags=["ops"], responses=ERROR_RESPONSES)
    async def health_ready() -> dict:
        """Readiness probe: 200 when loaded, warmed and the engine is healthy; 503 (with the reason) while loading,
        or when the engine thread is dead, its last ready_failed_steps steps failed, or no step finished for
        ready_stuck_seconds while work waits."""
        engine_ready()
        h = state.engine.health()
        return {"status": "ok", "bundle_version": state.runner.bundle_version,
                "engine": {k: h[k] for k in ("steps", "running", "waiting", "failed_steps", "stalled_seconds")}}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        m = state.metrics
        if state.engine is not None:
            m.running.set(state.engine.running_rows)
            m.waiting.set(state.engine.waiting_rows)
        # Ray Serve: every replica's metrics, each sample labelled with its replica id
        text = await state.cluster.metrics(m.render()) if state.cluster is not None else m.render()
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", tags=["openai"], dependencies=v1, responses={**ERROR_RESPONSES, 200: {"model": ModelList}})
    async def models() -> dict:
        created = int(time.time())
        return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "brainstacks"}
                                           for m in api.model_ids(state.runner.domains)]}

    @app.get("/v1/models/{model_id}", tags=["openai"], dependencies=v1,
             responses={**ERROR_RESPONSES, 200: {"model": ModelObject}})
    async def model(model_id: str) -> dict:
        ids = api.model_ids(state.runner.domains)
        if model_id not in ids:
            raise not_found(f"The model {model_id!r} does not exist; available: {', '.join(ids)}.", "model",
                            "model_not_found")
        return {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "brainstacks"}

    def completion_responses(model: type) -> dict:
        return {**ERROR_RESPONSES, 200: {"model": model, "description": "The completion (JSON), or with stream=true "
                                         "server-sent events ending with `data: [DONE]`.",
                                         "content": {"text/event-stream": {"schema": SSE_EVENT}}}}

    @app.post("/v1/completions", tags=["openai"], dependencies=v1, responses=completion_responses(CompletionResponse))
    async def completions(body: CompletionRequest, request: Request):
        return await api.run(state, body, request)

    @app.post("/v1/chat/completions", tags=["openai"], dependencies=v1,
              responses=completion_responses(ChatCompletionResponse))
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await api.run(state, body, request)

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC_DIR / "playground.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/debug/requests", tags=["debug"], dependencies=admin, responses=ERROR_RESPONSES)
    async def debug_requests() -> dict:
        """The bounded history of recent completions, newest first (each also at /debug/requests/{id})."""
        recs = list({r["id"]: r for r in reversed(state.history.values())}.values())
        return {"object": "list", "data": recs[: settings.debug_history]}

    @app.get("/debug/requests/{request_id}", tags=["debug"], dependencies=admin, responses=ERROR_RESPONSES)
    async def debug_request(request_id: str) -> dict:
        rec = state.history.get(request_id)
        if rec is None:
            raise not_found(f"No recent request with id {request_id!r} (the history keeps the last "
                            f"{settings.debug_history}).", "request_id", "request_not_found")
        return rec

    @app.post("/debug/route", tags=["debug"], dependencies=admin, responses=ERROR_RESPONSES)
    async def debug_route(body: RouteRequest) -> dict:
        """The router's weights for a prompt, bounded like a completion: the same character and token caps,
        tokenizing off the event loop, and the request timeout."""
        r = state.runner

        def tokenize() -> list[int]:
            if (body.prompt is None) == (body.messages is None):
                raise invalid("give exactly one of prompt or messages.", "prompt")
            if body.messages is not None:
                api.check_messages_chars(settings.max_prompt_chars, body.messages)
                text = render_chat(r.tokenizer, [{"role": m.role, "content": m.text()} for m in body.messages])
            else:
                api.check_chars(settings.max_prompt_chars, [body.prompt], "prompt")
                text = body.prompt
            ids = encode_prompt(r.tokenizer, text) if text else []
            if not ids:
                raise invalid("prompt must not be empty.", "prompt", "empty_prompt")
            limit = min(settings.max_prompt_tokens, r.max_model_len)
            if len(ids) > limit:
                raise invalid(f"The prompt has {len(ids)} tokens; the limit is {limit}.", "prompt",
                              "context_length_exceeded")
            return ids

        t0 = time.perf_counter()
        ids = await asyncio.wait_for(asyncio.to_thread(tokenize), settings.request_timeout)
        n = r.router_tokens if r.router is not None else None
        fut = state.engine.call(lambda: r.route([ids]))
        try:
            w = (await asyncio.wait_for(asyncio.wrap_future(fut), max(0.0, settings.request_timeout
                                                                      - (time.perf_counter() - t0))))[0]
        except asyncio.TimeoutError:
            fut.cancel()
            raise APIError(503, f"Routing did not finish within request_timeout={settings.request_timeout}s.",
                           "server_error", None, "timeout", {"Retry-After": str(settings.retry_after)}) from None
        ms = (time.perf_counter() - t0) * 1000
        domains = r.domains
        return {"object": "route", "weights": {d: api.finite(round(w.get(d, 0.0), 6)) for d in domains},
                "routed": r.router is not None, "bundle_version": r.bundle_version, "prompt_tokens": len(ids),
                "router_tokens": min(len(ids), n) if n else 0, "elapsed_ms": round(ms, 3)}

    @app.get("/admin/stacks", tags=["admin"], dependencies=admin, responses=ERROR_RESPONSES)
    async def admin_stacks() -> dict:
        out = await asyncio.to_thread(state.registry.describe)
        if state.cluster is not None:  # Ray Serve: this replica's id and every replica's version
            out = await state.cluster.describe(out)
        return out

    @app.post("/admin/reload", tags=["admin"], dependencies=admin,
              responses={**ERROR_RESPONSES, 409: ERROR_RESPONSES[400]})
    async def admin_reload() -> JSONResponse:
        # Ray Serve: the reload reaches every replica, and the answer lists each one's result
        res = await (state.cluster.reload() if state.cluster is not None else state.registry.reload())
        body = {"object": "reload", "result": res.result, "bundle_version": res.bundle_version,
                "added": res.added, "removed": res.removed, "reasons": res.reasons}
        replicas = getattr(res, "replicas", None)
        if replicas is not None:
            body["replicas"] = replicas
        if res.result == "refused":
            err = APIError(409, "Bundle refused: " + "; ".join(res.reasons), "invalid_request_error", None,
                           "bundle_refused")
            payload = err.body()
            payload["error"]["reasons"] = res.reasons
            payload["error"]["bundle_version"] = res.bundle_version
            if replicas is not None:
                payload["error"]["replicas"] = replicas
            return JSONResponse(payload, status_code=409)
        return JSONResponse(body)

    openapi_cache: dict[tuple, dict] = {}

    def openapi() -> dict:
        """The OpenAPI document with the served limits and, once loaded, the model ids, domains and vocabulary
        (rebuilt when a reload changes them)."""
        from fastapi.openapi.utils import get_openapi

        r = state.runner if state.ready else None
        key = (tuple(r.domains), r.vocab_size) if r is not None else ()
        if key not in openapi_cache:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            doc = finish_openapi(doc, {
                "max_tokens": settings.max_tokens_limit, "n": min(settings.max_n, settings.max_batch),
                "logprobs": settings.max_logprobs, "prompts": settings.max_prompts,
                "prompt_chars": settings.max_prompt_chars, "vocab_size": r.vocab_size if r is not None else None,
                "prompt_tokens": min(settings.max_prompt_tokens, r.max_model_len) if r is not None else None,
                "model_ids": api.model_ids(r.domains) if r is not None else None,
                "domains": list(r.domains) if r is not None else None})
            if r is None:
                return doc
            openapi_cache.clear()
            openapi_cache[key] = doc
        return openapi_cache[key]

    app.openapi = openapi
    return app


class AccessMiddleware:
    """Pure ASGI (streams pass through untouched): request id, X-Request-Id header, JSON access log, request metrics."""

    ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/debug/route",
                 "/debug/requests", "/admin/stacks", "/admin/reload", "/", "/health/live", "/health/ready")

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    def _endpoint(self, path: str) -> str:
        if path in self.ENDPOINTS:
            return path
        if path.startswith("/debug/requests/"):
            return "/debug/requests/{id}"
        if path.startswith("/v1/models/"):
            return "/v1/models/{id}"
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = None
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                incoming = v.decode("latin-1")
        client_rid = incoming if incoming and _RID.match(incoming) else None
        rid = uuid.uuid4().hex  # always the server's own: debug records are keyed by it
        scope.setdefault("state", {})["request_id"] = rid
        scope["state"]["client_request_id"] = client_rid
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            self.state.metrics.requests.labels(endpoint=self._endpoint(path), status=str(status["code"])).inc()
            access_log.info(json.dumps({"event": "access", "request_id": rid, "client_request_id": client_rid,
                                        "method": scope.get("method"),
                                        "path": path, "status": status["code"],
                                        "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
                                        "client": (scope.get("client") or ["?"])[0]}))


# one server-sent event of a stream: `data:` is a JSON chunk, an error envelope, or the final "[DONE]"
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string", "description": "A chunk as JSON (OpenAI's shape), an error envelope, or [DONE]."},
    "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}

OPEN_PATHS = frozenset({"/", "/health", "/health/live", "/health/ready", "/openapi.json", "/docs",
                        "/docs/oauth2-redirect", "/redoc", "/favicon.ico"})


def path_policy(path: str) -> str:
    """"admin" (/admin*, /debug*), "open" (health, the page, its static files, the OpenAPI pages) or "api"
    (/v1, /metrics and anything else: an unknown path is guarded like /v1, so a new route is never open by accident)."""
    if path.startswith(("/admin", "/debug")):
        return "admin"
    if path in OPEN_PATHS or path.startswith("/static/"):
        return "open"
    return "api"


class GuardMiddleware:
    """Pure ASGI, in front of every route: the key check (from the headers alone), then the body read up to
    `max_body_bytes` and replayed to the app. A refused request never has a byte of its body read."""

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        self.settings = settings

    def refusal(self, scope) -> APIError | None:
        s = self.settings
        policy = path_policy(scope.get("path", ""))
        if policy == "open":
            return None
        token = _bearer(scope)
        if policy == "admin":
            if s.admin_key is not None:
                return None if _check(token, s.admin_key) else unauthorized("Missing or invalid admin bearer token.")
            if s.api_key is not None:
                return None if _check(token, s.api_key) else unauthorized()
            client = scope.get("client")
            if is_loopback(client[0] if client else None):
                return None
            return forbidden("/admin and /debug answer loopback clients only when neither BRAINSTACKS_ADMIN_KEY nor "
                             "BRAINSTACKS_API_KEY is set.")
        if s.api_key is not None and not _check(token, s.api_key, s.admin_key):
            return unauthorized()
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and self.refusal(scope) is not None:  # none is served; refuse like http
            await receive()  # websocket.connect
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        err = self.refusal(scope)
        if err is not None:
            return await err.response()(scope, receive, send)
        limit = self.settings.max_body_bytes
        length = None
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                length = v
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await payload_too_large(limit).response()(scope, receive, send)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                return await payload_too_large(limit).response()(scope, receive, send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

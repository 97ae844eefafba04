"""`create_app(settings)`: the FastAPI application serving DESIGN §6.

    app = create_app(ServerSettings(bundle="out/bundle"))          # uvicorn.run(app, ...)
    app = create_app(settings, runner_factory=lambda s: runner)    # tests: any ModelRunner

The app is live at once: loading and warm-up run in a background thread, and /health and /v1 answer 503 until both
are done. One Engine (server/engine.py) owns the model on its own thread; shutdown stops admitting, lets in-flight
requests finish for `drain_timeout` seconds, then aborts the rest. Every response carries X-Request-Id, and every
request is logged as one JSON line (logger `brainstacks.access`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from server import api
from server.engine import Engine, Event, GenRequest
from server.errors import ERROR_RESPONSES, APIError, install_error_handlers, invalid, not_found, not_ready, unauthorized
from server.metrics import Metrics
from server.registry import Registry, load_runner, watch
from server.runner import ModelRunner
from server.sampling import SamplingParams
from server.schemas import ChatCompletionRequest, CompletionRequest, RouteRequest, apply_limits
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

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Load, start the engine and warm up (background thread)."""
        try:
            t0 = time.perf_counter()
            if self.settings.threads:
                import torch

                torch.set_num_threads(self.settings.threads)
            runner = self.runner_factory(self.settings)
            engine = Engine(runner, max_batch=self.settings.max_batch, max_waiting=self.settings.max_waiting,
                            max_prefill_tokens=self.settings.max_prefill_tokens, metrics=self.metrics)
            engine.start()
            self.runner, self.engine = runner, engine
            self.registry = Registry(runner, engine, self.metrics)
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
        rec = {"id": g.id, "object": "debug.request", "request_id": g.request_id, "model": g.prep.model,
               "user": g.prep.user,
               "created": g.created, "routed": g.prep.weights is None, "weights": ext["weights"],
               "prompt_weights": ext.get("prompt_weights"), "active_stacks": active,
               "bundle_version": g.bundle_version, "usage": usage,
               "finish_reasons": [c.finish_reason or "cancelled" for c in g.choices],
               "timings": timings, "error": g.error}
        self.history[g.id] = rec
        if g.request_id:
            self.history[g.request_id] = rec
        while len(self.history) > 2 * self.settings.debug_history:
            self.history.popitem(last=False)


def _bearer(request: Request) -> str | None:
    h = request.headers.get("authorization", "")
    if h[:7].lower() == "bearer ":
        return h[7:].strip()
    return None


def _check(token: str | None, *keys: str | None) -> bool:
    if token is None:
        return False
    return any(k is not None and hmac.compare_digest(token.encode(), k.encode()) for k in keys)


def create_app(settings: ServerSettings | None = None,
               runner_factory: Callable[[ServerSettings], ModelRunner] | None = None) -> FastAPI:
    """The app for `settings` (default: from the environment). `runner_factory` replaces bundle loading (tests)."""
    settings = settings or ServerSettings()
    state = ServerState(settings, runner_factory or load_runner)

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
                  description="OpenAI-compatible routed inference over frozen MoE-LoRA stacks (DESIGN §6).")
    app.state.bs = state
    install_error_handlers(app)
    app.add_middleware(AccessMiddleware, state=state)

    # ------------------------------------------------------------------ guards
    def need_api_key(request: Request) -> None:
        if settings.api_key is not None and not _check(_bearer(request), settings.api_key, settings.admin_key):
            raise unauthorized()

    def need_admin_key(request: Request) -> None:
        if settings.admin_key is not None and not _check(_bearer(request), settings.admin_key):
            raise unauthorized("Missing or invalid admin bearer token.")

    def need_ready() -> None:
        if not state.ready:
            if state.load_error:
                raise not_ready(f"The model failed to load: {state.load_error}")
            raise not_ready()

    v1 = [Depends(need_api_key), Depends(need_ready)]
    admin = [Depends(need_admin_key), Depends(need_ready)]

    # ------------------------------------------------------------------ routes
    @app.get("/health", tags=["ops"], responses=ERROR_RESPONSES)
    async def health() -> dict:
        """200 once the bundle is loaded and warmed; 503 before (or if loading failed)."""
        need_ready()
        return {"status": "ok", "bundle_version": state.runner.bundle_version, "domains": state.runner.domains}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        m = state.metrics
        if state.engine is not None:
            m.running.set(state.engine.running_rows)
            m.waiting.set(state.engine.waiting_rows)
        return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", tags=["openai"], dependencies=v1, responses=ERROR_RESPONSES)
    async def models() -> dict:
        created = int(time.time())
        return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "brainstacks"}
                                           for m in api.model_ids(state.runner.domains)]}

    @app.post("/v1/completions", tags=["openai"], dependencies=v1, responses=ERROR_RESPONSES)
    async def completions(body: CompletionRequest, request: Request):
        return await api.run(state, body, request)

    @app.post("/v1/chat/completions", tags=["openai"], dependencies=v1, responses=ERROR_RESPONSES)
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
        r = state.runner
        if (body.prompt is None) == (body.messages is None):
            raise invalid("give exactly one of prompt or messages.", "prompt")
        if body.messages is not None:
            text = render_chat(r.tokenizer, [{"role": m.role, "content": m.text()} for m in body.messages])
        else:
            text = body.prompt
        if not text:
            raise invalid("prompt must not be empty.", "prompt", "empty_prompt")
        ids = encode_prompt(r.tokenizer, text)
        if not ids:
            raise invalid("prompt must not be empty.", "prompt", "empty_prompt")
        n = r.router_tokens if r.router is not None else None
        t0 = time.perf_counter()
        w = (await asyncio.wrap_future(state.engine.call(lambda: r.route([ids]))))[0]
        ms = (time.perf_counter() - t0) * 1000
        domains = r.domains
        return {"object": "route", "weights": {d: round(w.get(d, 0.0), 6) for d in domains},
                "routed": r.router is not None, "bundle_version": r.bundle_version, "prompt_tokens": len(ids),
                "router_tokens": min(len(ids), n) if n else 0, "elapsed_ms": round(ms, 3)}

    @app.get("/admin/stacks", tags=["admin"], dependencies=admin, responses=ERROR_RESPONSES)
    async def admin_stacks() -> dict:
        return await asyncio.to_thread(state.registry.describe)

    @app.post("/admin/reload", tags=["admin"], dependencies=admin,
              responses={**ERROR_RESPONSES, 409: ERROR_RESPONSES[400]})
    async def admin_reload() -> JSONResponse:
        res = await state.registry.reload()
        body = {"object": "reload", "result": res.result, "bundle_version": res.bundle_version,
                "added": res.added, "removed": res.removed, "reasons": res.reasons}
        if res.result == "refused":
            err = APIError(409, "Bundle refused: " + "; ".join(res.reasons), "invalid_request_error", None,
                           "bundle_refused")
            payload = err.body()
            payload["error"]["reasons"] = res.reasons
            payload["error"]["bundle_version"] = res.bundle_version
            return JSONResponse(payload, status_code=409)
        return JSONResponse(body)

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            tok_max = {"maximum": settings.max_tokens_limit}
            app.openapi_schema = apply_limits(doc, {
                "max_tokens": tok_max, "max_completion_tokens": tok_max,
                "n": {"maximum": min(settings.max_n, settings.max_batch)},
                "logprobs": {"maximum": settings.max_logprobs}, "top_logprobs": {"maximum": settings.max_logprobs},
                "prompt": {"maxItems": settings.max_prompts}})
        return app.openapi_schema

    app.openapi = openapi
    return app


class AccessMiddleware:
    """Pure ASGI (streams pass through untouched): request id, X-Request-Id header, JSON access log, request metrics."""

    ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/debug/route",
                 "/debug/requests", "/admin/stacks", "/admin/reload", "/")

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    def _endpoint(self, path: str) -> str:
        if path in self.ENDPOINTS:
            return path
        if path.startswith("/debug/requests/"):
            return "/debug/requests/{id}"
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = None
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                incoming = v.decode("latin-1")
        rid = incoming if incoming and _RID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        t0 = time.perf_counter()
        status = {"code": 500}
        limit = self.state.settings.max_body_bytes
        length = dict(scope.get("headers", [])).get(b"content-length")
        too_big = length is not None and (not length.isdigit() or int(length) > limit)
        if not too_big:
            receive = _limited(receive, limit)

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if too_big:
                resp = APIError(413, f"The request body exceeds {limit} bytes.", "invalid_request_error", None,
                                "payload_too_large").response()
                await resp(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            self.state.metrics.requests.labels(endpoint=self._endpoint(path), status=str(status["code"])).inc()
            access_log.info(json.dumps({"event": "access", "request_id": rid, "method": scope.get("method"),
                                        "path": path, "status": status["code"],
                                        "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
                                        "client": (scope.get("client") or ["?"])[0]}))


def _limited(receive, limit: int):
    """A receive that stops a chunked body at `limit` bytes (what is cut off then fails to parse: a 400)."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                return {"type": "http.request", "body": b"", "more_body": False}
        return message

    return wrapped

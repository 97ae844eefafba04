"""`create_app(settings)`: the FastAPI application serving docs/DESIGN.md §6.

    app = create_app(ServerSettings(bundle="out/bundle"))          # uvicorn.run(app, ...)
    app = create_app(settings, runner_factory=lambda s: runner)    # tests: any ModelRunner

The app is live at once: loading and warm-up run in a background thread, and /health and /v1 answer 503 until both
are done. One Engine (server/engine.py) owns the model on its own thread; shutdown stops admitting, lets in-flight
requests finish for `drain_timeout` seconds, then aborts the rest. Every response carries X-Request-Id (made by the
server; a client's own X-Request-Id is logged and kept in the debug record, never used as a key), and every request is
logged as one JSON line (logger `brainstacks.access`).

Security (docs/DESIGN.md §6): `GuardMiddleware` (server/middleware.py), a pure ASGI layer in front of every route,
checks the bearer key before any byte of the body is read, then reads the body up to `max_body_bytes` (413 beyond).

This module holds the factory and the routes; what they share at runtime is `ServerState` (server/state.py), the
OpenAI endpoints are server/api.py, their responses server/responses.py, the debug records server/history.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from brainstacks.text import encode_prompt
from server import api, tokenizing
from server.errors import (
    ERROR_RESPONSES,
    RELOAD_RESPONSES,
    bundle_refused,
    install_error_handlers,
    invalid,
    not_found,
    not_ready,
    timed_out,
)
from server.generation import finite
from server.middleware import AccessMiddleware, GuardMiddleware, security_warnings
from server.registry import load_runner, watch
from server.responses import SSE_EVENT
from server.runner import ModelRunner
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
from server.state import ServerState

log = logging.getLogger("brainstacks.server")
# GET / (the playground): a public page with no data in it; it may load only its own files and call this origin
STATIC_DIR = Path(__file__).parent / "static"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                           "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


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
    app.add_middleware(AccessMiddleware, metrics=state.metrics)  # outer: request id and access log, refusals included

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
        return {"object": "list", "data": state.history.recent()}

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
            text = api.one_prompt_text(state, body.prompt, body.messages)
            ids = encode_prompt(r.tokenizer, text) if text else []
            if not ids:
                raise invalid("prompt must not be empty.", "prompt", "empty_prompt")
            api.check_prompt_tokens(state, ids)
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
            raise timed_out("Routing", settings.request_timeout, settings.retry_after) from None
        ms = (time.perf_counter() - t0) * 1000
        domains = r.domains
        return {"object": "route", "weights": {d: finite(round(w.get(d, 0.0), 6)) for d in domains},
                "routed": r.router is not None, "bundle_version": r.bundle_version, "prompt_tokens": len(ids),
                "router_tokens": min(len(ids), n) if n else 0, "elapsed_ms": round(ms, 3)}

    @app.get("/admin/stacks", tags=["admin"], dependencies=admin, responses=ERROR_RESPONSES)
    async def admin_stacks() -> dict:
        out = await asyncio.to_thread(state.registry.describe)
        if state.cluster is not None:  # Ray Serve: this replica's id and every replica's version
            out = await state.cluster.describe(out)
        return out

    @app.post("/admin/reload", tags=["admin"], dependencies=admin, responses=RELOAD_RESPONSES)
    async def admin_reload() -> JSONResponse:
        # Ray Serve: the reload reaches every replica, and the answer lists each one's result
        res = await (state.cluster.reload() if state.cluster is not None else state.registry.reload())
        body = {"object": "reload", "result": res.result, "bundle_version": res.bundle_version,
                "added": res.added, "removed": res.removed, "reasons": res.reasons}
        replicas = getattr(res, "replicas", None)
        if replicas is not None:
            body["replicas"] = replicas
        if res.result == "refused":
            raise bundle_refused(res.reasons, res.bundle_version, replicas)
        return JSONResponse(body)

    app.include_router(tokenizing.router)

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

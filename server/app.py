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

This module holds the factory; the routes are server/routes/ (one APIRouter per room, on a typed ServerState
dependency), what they share at runtime is `ServerState` (server/state.py), the OpenAI endpoints' work is
server/api.py, their responses server/responses.py, the debug records server/history.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from server import api
from server.errors import install_error_handlers
from server.loading import load_runner
from server.middleware import AccessMiddleware, GuardMiddleware, security_warnings
from server.openapi import finish_openapi
from server.registry import watch
from server.routes import adapters, admin, debug, ops, tokens, v1
from server.runner import ModelRunner
from server.settings import ServerSettings
from server.state import ServerState

log = logging.getLogger("brainstacks.server")

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

    for room in (ops, v1, tokens, debug, admin, adapters):  # keys: GuardMiddleware, before any of them runs
        app.include_router(room.router)
    app.mount("/static", StaticFiles(directory=ops.STATIC_DIR), name="static")

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

"""Operations: health probes, Prometheus metrics and the playground page (open, or guarded like /v1: /metrics)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, Response

from server.errors import ERROR_RESPONSES
from server.routes import app_state, healthy_state
from server.state import ServerState

router = APIRouter()

# GET / (the playground): a public page with no data in it; it may load only its own files and call this origin
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                           "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


@router.get("/health", tags=["ops"], responses=ERROR_RESPONSES)
async def health(state: ServerState = Depends(healthy_state)) -> dict:
    """200 once the bundle is loaded and warmed and the engine is healthy; 503 before, or if loading failed, or
    whenever /health/ready would answer 503."""
    return {"status": "ok", "bundle_version": state.runner.bundle_version, "domains": state.runner.domains}


@router.get("/health/live", tags=["ops"])
async def health_live() -> dict:
    """Liveness probe: 200 while the process serves HTTP (loading included); restart it only when this fails."""
    return {"status": "ok"}


@router.get("/health/ready", tags=["ops"], responses=ERROR_RESPONSES)
async def health_ready(state: ServerState = Depends(healthy_state)) -> dict:
    """Readiness probe: 200 when loaded, warmed and the engine is healthy; 503 (with the reason) while loading,
    or when the engine thread is dead, its last ready_failed_steps steps failed, or no step finished for
    ready_stuck_seconds while work waits."""
    h = state.engine.health()
    return {"status": "ok", "bundle_version": state.runner.bundle_version,
            "engine": {k: h[k] for k in ("steps", "running", "waiting", "failed_steps", "stalled_seconds")}}


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(state: ServerState = Depends(app_state)) -> Response:
    m = state.metrics
    if state.engine is not None:
        m.running.set(state.engine.running_rows)
        m.waiting.set(state.engine.waiting_rows)
    # Ray Serve: every replica's metrics, each sample labelled with its replica id
    text = await state.cluster.metrics(m.render()) if state.cluster is not None else m.render()
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(STATIC_DIR / "playground.html", headers=PAGE_HEADERS)

"""/debug: the bounded history of recent completions and the router's weights for a prompt (admin key rules)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends

from brainstacks.text import encode_prompt
from server import api
from server.errors import ERROR_RESPONSES, invalid, not_found, timed_out
from server.generation import finite
from server.routes import ready_state
from server.schemas import RouteRequest
from server.state import ServerState

router = APIRouter(tags=["debug"], responses=ERROR_RESPONSES)


@router.get("/debug/requests")
async def debug_requests(state: ServerState = Depends(ready_state)) -> dict:
    """The bounded history of recent completions, newest first (each also at /debug/requests/{id})."""
    return {"object": "list", "data": state.history.recent()}


@router.get("/debug/requests/{request_id}")
async def debug_request(request_id: str, state: ServerState = Depends(ready_state)) -> dict:
    rec = state.history.get(request_id)
    if rec is None:
        raise not_found(f"No recent request with id {request_id!r} (the history keeps the last "
                        f"{state.settings.debug_history}).", "request_id", "request_not_found")
    return rec


def route_ids(state: ServerState, body: RouteRequest) -> list[int]:
    """The prompt's ids as a completion would feed them, under the same caps."""
    text = api.one_prompt_text(state, body.prompt, body.messages)
    ids = encode_prompt(state.runner.tokenizer, text) if text else []
    if not ids:
        raise invalid("prompt must not be empty.", "prompt", "empty_prompt")
    api.check_prompt_tokens(state, ids)
    return ids


@router.post("/debug/route")
async def debug_route(body: RouteRequest, state: ServerState = Depends(ready_state)) -> dict:
    """The router's weights for a prompt, bounded like a completion: the same character and token caps,
    tokenizing off the event loop, and the request timeout."""
    r, timeout = state.runner, state.settings.request_timeout
    t0 = time.perf_counter()
    ids = await asyncio.wait_for(asyncio.to_thread(route_ids, state, body), timeout)
    n = r.router_tokens if r.router is not None else None
    fut = state.engine.call(lambda: r.route([ids]))
    try:
        w = (await asyncio.wait_for(asyncio.wrap_future(fut), max(0.0, timeout - (time.perf_counter() - t0))))[0]
    except asyncio.TimeoutError:
        fut.cancel()
        raise timed_out("Routing", timeout, state.settings.retry_after) from None
    ms = (time.perf_counter() - t0) * 1000
    return {"object": "route", "weights": {d: finite(round(w.get(d, 0.0), 6)) for d in r.domains},
            "routed": r.router is not None, "bundle_version": r.bundle_version, "prompt_tokens": len(ids),
            "router_tokens": min(len(ids), n) if n else 0, "elapsed_ms": round(ms, 3)}

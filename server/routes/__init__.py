"""The HTTP routes, one APIRouter per room (docs/DESIGN.md §6), each reading the app's `ServerState` through a typed
dependency instead of closures:

    ops.py      /health, /health/live, /health/ready, /metrics, the playground page
    v1.py       the OpenAI endpoints: /v1/models, /v1/completions, /v1/chat/completions
    tokens.py   /tokenize, /detokenize (vLLM's shapes)
    debug.py    /debug/requests, /debug/route
    admin.py    /admin/stacks, /admin/reload
    adapters.py runtime adapters: POST/DELETE /admin/stacks, /v1/load_lora_adapter, /v1/unload_lora_adapter

Keys are checked before any route runs (server/middleware.py); these dependencies only say whether the model is
there yet.
"""

from __future__ import annotations

from fastapi import Request

from server.errors import not_ready
from server.state import ServerState


def app_state(request: Request) -> ServerState:
    """The app's ServerState (server/app.py sets it), loaded or not."""
    return request.app.state.bs


def ready_state(request: Request) -> ServerState:
    """The app's ServerState once the bundle is loaded and warmed (503 before, with the load error if it failed)."""
    state = app_state(request)
    if not state.ready:
        if state.load_error:
            raise not_ready(f"The model failed to load: {state.load_error}")
        raise not_ready()
    return state


def healthy_state(request: Request) -> ServerState:
    """ready_state, and the engine is healthy (thread alive, steps succeeding, not stuck)."""
    state = ready_state(request)
    h = state.engine.health() if state.engine is not None else {"ready": False, "reason": "no engine"}
    if not h["ready"]:
        raise not_ready(f"The engine is not healthy: {h['reason']}.")
    return state

"""/admin: what is served, and the validated hot reload (admin key rules; under Ray Serve, every replica)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from server.errors import ERROR_RESPONSES, RELOAD_RESPONSES, bundle_refused
from server.routes import ready_state
from server.state import ServerState

router = APIRouter(tags=["admin"])


@router.get("/admin/stacks", responses=ERROR_RESPONSES)
async def admin_stacks(state: ServerState = Depends(ready_state)) -> dict:
    out = await asyncio.to_thread(state.registry.describe)
    if state.cluster is not None:  # Ray Serve: this replica's id and every replica's version
        out = await state.cluster.describe(out)
    return out


@router.post("/admin/reload", responses=RELOAD_RESPONSES)
async def admin_reload(state: ServerState = Depends(ready_state)) -> JSONResponse:
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

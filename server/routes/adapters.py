"""Runtime adapters (docs/DESIGN.md §6): add or remove a domain of the served bundle while it serves.

    POST   /admin/stacks {"domain", "path"}                 a PEFT LoRA directory or a stack directory
    DELETE /admin/stacks/{domain}
    POST   /v1/load_lora_adapter {"lora_name", "lora_path"} vLLM's names for the same (plain-text answers, as vLLM's)
    POST   /v1/unload_lora_adapter {"lora_name"}

Each change is a new bundle version, written by brainstacks/adapters.py (validated before its first write, so a
refused adapter leaves the disk as it was), then loaded as POST /admin/reload loads one: validated again and swapped
in between decode steps, with no request failing. So `--watch` servers and every Ray Serve replica see the same
change. All four follow the admin key rules (server/middleware.py), the two /v1 paths included. The embedded demo
bundle, which ships inside the installed package, is not changed: serve a copy with --bundle DIR.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from brainstacks.errors import AdapterError, BundleError
from server.errors import RELOAD_RESPONSES, APIError, bundle_refused, invalid, not_found
from server.routes import ready_state
from server.schemas import AddStackRequest, LoadLoraRequest, UnloadLoraRequest
from server.state import ServerState

router = APIRouter(tags=["admin"])


def _writable_root(state: ServerState) -> Path:
    from brainstacks.demo import DEMO_BUNDLE

    root = state.registry.bundle_root
    if root is None or state.runner.stacked is None:
        raise invalid("No bundle is being served (started with --base only): there is nothing to add a stack to.",
                      code="no_bundle")
    if Path(root).resolve() == DEMO_BUNDLE.resolve():
        raise invalid("The embedded demo bundle ships inside the installed package and is not changed at run time: "
                      "copy it (cp -r) and serve the copy with --bundle DIR.", code="bundle_read_only")
    return Path(root)


async def _change(state: ServerState, write) -> tuple[object, object]:
    """write(root) as a new version, then that version served (every replica's, under Ray Serve)."""
    root = _writable_root(state)
    try:
        if state.cluster is not None:  # the replicas share the bundle's storage: write once, roll out to all
            out = await asyncio.to_thread(write, root)
            return out, await state.cluster.reload()
        return await state.registry.write_version(write)
    except AdapterError as e:
        raise invalid(str(e), param="path", code="invalid_adapter") from None
    except BundleError as e:  # another writer holds the bundle, or the bundle on disk is unreadable
        raise APIError(409, str(e), "invalid_request_error", None, "bundle_busy") from None
    except OSError as e:  # a read-only mount, a full disk: nothing of the change was published
        raise APIError(409, f"{root}: the bundle directory cannot be written: {e}", "invalid_request_error", None,
                       "bundle_unwritable") from None


def _answer(res, body: dict) -> dict:
    if res.result == "refused":
        raise bundle_refused(res.reasons, res.bundle_version, getattr(res, "replicas", None))
    body.update(result=res.result, bundle_version=res.bundle_version, added=res.added, removed=res.removed)
    replicas = getattr(res, "replicas", None)
    if replicas is not None:
        body["replicas"] = replicas
    return body


async def add_stack(state: ServerState, domain: str, path: str, replace: bool) -> dict:
    from brainstacks.adapters import import_adapter

    imp, res = await _change(state, lambda root: import_adapter(root, domain, path, replace=replace))
    routed = state.runner.router is not None and domain in state.runner.router_domains
    return _answer(res, {"object": "stack", "domain": domain, "model": f"brainstacks:{domain}", "rank": imp.rank,
                         "parameters": imp.parameters, "routed": routed})


async def remove_stack(state: ServerState, domain: str) -> dict:
    from brainstacks.adapters import remove_domain_version

    if domain not in state.runner.domains:
        raise not_found(f"No domain {domain!r} is served (domains: {state.runner.domains}).", param="domain",
                        code="domain_not_found")
    _, res = await _change(state, lambda root: remove_domain_version(root, domain))
    return _answer(res, {"object": "stack", "domain": domain, "deleted": True})


@router.post("/admin/stacks", responses=RELOAD_RESPONSES)
async def admin_add_stack(body: AddStackRequest, state: ServerState = Depends(ready_state)) -> JSONResponse:
    return JSONResponse(await add_stack(state, body.domain, body.path, bool(body.replace)))


@router.delete("/admin/stacks/{domain}", responses=RELOAD_RESPONSES)
async def admin_remove_stack(domain: str, state: ServerState = Depends(ready_state)) -> JSONResponse:
    return JSONResponse(await remove_stack(state, domain))


# vLLM answers these two in plain text; their errors are JSON, as every error
TEXT_OK = {200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Success"}}


@router.post("/v1/load_lora_adapter", responses={**RELOAD_RESPONSES, **TEXT_OK})
async def load_lora_adapter(body: LoadLoraRequest, state: ServerState = Depends(ready_state)) -> PlainTextResponse:
    await add_stack(state, body.lora_name, body.lora_path, bool(body.load_inplace))
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter", responses={**RELOAD_RESPONSES, **TEXT_OK})
async def unload_lora_adapter(body: UnloadLoraRequest, state: ServerState = Depends(ready_state)
                              ) -> PlainTextResponse:
    await remove_stack(state, body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

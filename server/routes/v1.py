"""The OpenAI endpoints (docs/DESIGN.md §6): the model list and the two completion endpoints; the work is
server/api.py's."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request

from server import api
from server.errors import ERROR_RESPONSES, not_found
from server.responses import SSE_EVENT
from server.routes import ready_state
from server.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
    ModelObject,
)
from server.state import ServerState

router = APIRouter(tags=["openai"])


def model_object(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "brainstacks"}


@router.get("/v1/models", responses={**ERROR_RESPONSES, 200: {"model": ModelList}})
async def models(state: ServerState = Depends(ready_state)) -> dict:
    created = int(time.time())
    return {"object": "list", "data": [model_object(m, created) for m in api.model_ids(state.runner.domains)]}


@router.get("/v1/models/{model_id}", responses={**ERROR_RESPONSES, 200: {"model": ModelObject}})
async def model(model_id: str, state: ServerState = Depends(ready_state)) -> dict:
    ids = api.model_ids(state.runner.domains)
    if model_id not in ids:
        raise not_found(f"The model {model_id!r} does not exist; available: {', '.join(ids)}.", "model",
                        "model_not_found")
    return model_object(model_id, int(time.time()))


def completion_responses(model: type) -> dict:
    return {**ERROR_RESPONSES, 200: {"model": model, "description": "The completion (JSON), or with stream=true "
                                     "server-sent events ending with `data: [DONE]`.",
                                     "content": {"text/event-stream": {"schema": SSE_EVENT}}}}


@router.post("/v1/completions", responses=completion_responses(CompletionResponse))
async def completions(body: CompletionRequest, request: Request, state: ServerState = Depends(ready_state)):
    return await api.run(state, body, request)


@router.post("/v1/chat/completions", responses=completion_responses(ChatCompletionResponse))
async def chat_completions(body: ChatCompletionRequest, request: Request, state: ServerState = Depends(ready_state)):
    return await api.run(state, body, request)

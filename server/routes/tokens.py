"""`POST /tokenize` and `POST /detokenize` in vLLM's shapes (docs/DESIGN.md §6): clients count a prompt's tokens
against the context before they send it.

/tokenize gives exactly the ids a completion request with the same prompt (or chat request with the same messages)
would feed the model: the same chat template, the same special-token rule (brainstacks.text.encode_prompt), the same
character and token caps. `add_special_tokens: false` leaves the tokenizer's special tokens out;
`add_generation_prompt: false` renders the messages without the assistant turn's opening. Both run off the event
loop, under the API key rules of /v1.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from brainstacks.text import encode_prompt
from server import api
from server.errors import ERROR_RESPONSES
from server.routes import ready_state
from server.schemas import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.state import ServerState

router = APIRouter(tags=["tokens"])


def tokenize(state: ServerState, body: TokenizeRequest) -> dict:
    r = state.runner
    tok = r.tokenizer
    text = api.one_prompt_text(state, body.prompt, body.messages,
                               add_generation_prompt=body.add_generation_prompt is not False)
    if body.add_special_tokens is False:
        ids = list(tok(text, add_special_tokens=False)["input_ids"]) if text else []
    else:
        ids = encode_prompt(tok, text)
    api.check_prompt_tokens(state, ids)
    strs = tok.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": r.max_model_len, "tokens": ids, "token_strs": strs}


def detokenize(state: ServerState, body: DetokenizeRequest) -> dict:
    api.check_token_ids(state, body.tokens, "tokens")
    return {"prompt": state.runner.tokenizer.decode(body.tokens)}


@router.post("/tokenize", responses={**ERROR_RESPONSES, 200: {"model": TokenizeResponse}})
async def tokenize_route(body: TokenizeRequest, state: ServerState = Depends(ready_state)) -> dict:
    """A prompt's or a conversation's token ids, as a completion would feed them (vLLM's shape)."""
    return await asyncio.wait_for(asyncio.to_thread(tokenize, state, body), state.settings.request_timeout)


@router.post("/detokenize", responses={**ERROR_RESPONSES, 200: {"model": DetokenizeResponse}})
async def detokenize_route(body: DetokenizeRequest, state: ServerState = Depends(ready_state)) -> dict:
    """Token ids back to text (vLLM's shape)."""
    return await asyncio.wait_for(asyncio.to_thread(detokenize, state, body), state.settings.request_timeout)

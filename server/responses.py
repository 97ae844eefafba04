"""A finished or running Generation in OpenAI's exact shapes (docs/DESIGN.md §6): the JSON completion and chat
completion, the SSE stream (chunks as text becomes safe to send, then [DONE]), logprobs in both APIs' forms, plus the
`brainstacks` extension {"weights", "bundle_version"}. Non-finite numbers are sent as null.
"""

from __future__ import annotations

import json
from typing import Any

from server.errors import aborted, sse_error
from server.generation import Generation, brainstacks_ext, finite, pump, usage
from server.state import ServerState
from server.steptimer import clock

# one server-sent event of a stream: `data:` is a JSON chunk, an error envelope, or the final "[DONE]" (OpenAPI)
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string", "description": "A chunk as JSON (OpenAI's shape), an error envelope, or [DONE]."},
    "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}


def _tok_str(tok: Any, tid: int) -> str:
    return tok.decode([tid], skip_special_tokens=False)


def completion_logprobs(tok: Any, infos: list, top: int, offset: int = 0) -> dict[str, Any]:
    return {
        "tokens": [i.text for i in infos],
        "token_logprobs": [finite(i.logprob) for i in infos],
        "top_logprobs": [{_tok_str(tok, t): finite(lp) for t, lp in (i.top or [])} for i in infos] if top else None,
        "text_offset": [i.offset + offset for i in infos],
    }


def chat_logprobs(tok: Any, infos: list) -> dict[str, Any]:
    def entry(text: str, lp: float) -> dict[str, Any]:
        return {"token": text, "logprob": finite(lp), "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(i.text, i.logprob),
                         "top_logprobs": [entry(_tok_str(tok, t), lp) for t, lp in (i.top or [])]} for i in infos],
            "refusal": None}


def call_id(g: Generation, i: int) -> str:
    """Choice i's tool call id (the same in the JSON answer and in every chunk of a stream)."""
    return f"call_{g.id.rsplit('-', 1)[-1][:20]}_{i}"


def chat_message(g: Generation, i: int, text: str) -> dict[str, Any]:
    """The assistant message of choice i: its text, or with a forced tool, one call whose arguments are the text."""
    if g.prep.tool is None:
        return {"role": "assistant", "content": text, "refusal": None}
    return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
        {"id": call_id(g, i), "type": "function", "function": {"name": g.prep.tool, "arguments": text}}]}


def finish_reason(g: Generation, reason: str | None) -> str | None:
    """A forced call that completed its arguments ends with "tool_calls" (OpenAI's reason), else as generated."""
    return "tool_calls" if g.prep.tool is not None and reason == "stop" else reason


def final_response(state: ServerState, g: Generation) -> dict[str, Any]:
    tok = state.runner.tokenizer
    choices = []
    for i, c in enumerate(g.choices):
        lp = None
        if g.prep.top_logprobs is not None:
            lp = (chat_logprobs(tok, c.tokens) if g.prep.kind == "chat"
                  else completion_logprobs(tok, c.tokens, g.prep.top_logprobs))
        if g.prep.kind == "chat":
            choices.append({"index": i, "message": chat_message(g, i, c.text), "logprobs": lp,
                            "finish_reason": finish_reason(g, c.finish_reason)})
        else:
            text = g.prep.prompt_texts[i // g.prep.n] + c.text if g.prep.echo else c.text
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": c.finish_reason})
    return {"id": g.id, "object": "chat.completion" if g.prep.kind == "chat" else "text_completion",
            "created": g.created, "model": g.prep.model, "system_fingerprint": f"bundle-v{g.bundle_version}",
            "choices": choices, "usage": usage(g), "brainstacks": brainstacks_ext(state.runner.domains, g)}


def _chunk(state: ServerState, g: Generation, choices: list[dict], with_usage: bool | None = None) -> str:
    obj = {"id": g.id, "object": "chat.completion.chunk" if g.prep.kind == "chat" else "text_completion",
           "created": g.created, "model": g.prep.model, "system_fingerprint": f"bundle-v{g.bundle_version}",
           "choices": choices, "brainstacks": brainstacks_ext(state.runner.domains, g)}
    if g.prep.include_usage:
        obj["usage"] = usage(g) if with_usage else None
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _opening(g: Generation, i: int) -> dict[str, Any]:
    """A chat stream's first delta: the role, and with a forced tool the call's id and name (arguments follow)."""
    if g.prep.tool is None:
        return {"role": "assistant", "content": ""}
    return {"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": call_id(g, i), "type": "function", "function": {"name": g.prep.tool, "arguments": ""}}]}


def _delta(g: Generation, text: str) -> dict[str, Any]:
    if not text:
        return {}
    if g.prep.tool is None:
        return {"content": text}
    return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}


async def stream_events(state: ServerState, g: Generation):
    """SSE body: role chunk (chat), text deltas as they become safe to send, finish chunks, usage, [DONE]."""
    tok = state.runner.tokenizer
    chat = g.prep.kind == "chat"
    sent_tokens = [0] * len(g.choices)
    finished_sent = [False] * len(g.choices)
    started = False
    try:
        if g.prep.echo:  # the prompt first, as its own chunk per choice (stop strings never apply to it)
            yield _chunk(state, g, [{"index": i, "text": g.prep.prompt_texts[i // g.prep.n], "logprobs": None,
                                     "finish_reason": None} for i in range(len(g.choices))])
        while True:
            if g.error is not None:  # an error event, then [DONE]: the stream ends cleanly, never just cut
                yield sse_error(aborted(g.error, g.error_code))
                yield "data: [DONE]\n\n"
                break
            if not started and chat and any(w is not None for w in g.weights):
                started = True
                yield _chunk(state, g, [{"index": i, "delta": _opening(g, i), "logprobs": None,
                                         "finish_reason": None} for i in range(len(g.choices))])
            t0 = clock()
            out = []
            for i, c in enumerate(g.choices):
                if finished_sent[i]:
                    continue
                text = c.ready()
                new_infos = c.tokens[sent_tokens[i] :]
                sent_tokens[i] = len(c.tokens)
                lp = None
                if g.prep.top_logprobs is not None and new_infos:
                    lp = (chat_logprobs(tok, new_infos) if chat
                          else completion_logprobs(tok, new_infos, g.prep.top_logprobs))
                fin = c.finish_reason if c.done else None
                if c.done:
                    finished_sent[i] = True
                if text or lp or fin:  # one entry per choice per chunk; the last carries finish_reason
                    if chat:
                        out.append({"index": i, "delta": _delta(g, text), "logprobs": lp,
                                    "finish_reason": finish_reason(g, fin)})
                    else:
                        out.append({"index": i, "text": text, "logprobs": lp, "finish_reason": fin})
            chunk = _chunk(state, g, out) if out else None
            if g.timer is not None:
                g.timer.since("sse_encode", t0)
            if chunk is not None:
                yield chunk
            if all(finished_sent):
                if g.prep.include_usage:
                    yield _chunk(state, g, [], with_usage=True)
                yield "data: [DONE]\n\n"
                break
            await pump(g, g.deadline)
    finally:
        # client gone, stream finished or error: free any row still running at the next step
        if not g.done:
            g.cancel()
        state.finish_generation(g)

"""The OpenAI endpoints: /v1/completions and /v1/chat/completions, streaming and not (docs/DESIGN.md §6).

A request is checked against the settings' limits, tokenized, resolved to domain weights (the `model` composition or
the `weights` extension; None = routed by the engine at admission), and submitted as one engine request per prompt
(n samples each). Engine events come back through an asyncio queue; each choice turns its tokens into text
(server/textstream.py), honouring stop strings, and the response is built in OpenAI's exact shapes, plus the
`brainstacks` extension {"weights", "bundle_version"}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from server.engine import EngineStoppedError, Event, GenRequest, QueueFullError
from server.errors import APIError, invalid, not_found, not_ready, queue_full, sse_error
from server.sampling import SamplingParams
from server.schemas import ChatCompletionRequest, CompletionRequest
from server.textstream import ChoiceText, encode_prompt, render_chat

log = logging.getLogger("brainstacks.server")

MODEL_ID = "brainstacks"


def model_ids(domains: list[str]) -> list[str]:
    return [MODEL_ID, f"{MODEL_ID}:base", f"{MODEL_ID}:all"] + [f"{MODEL_ID}:{d}" for d in domains]


def resolve_weights(model: str, override: dict[str, float] | None, domains: list[str]) -> dict[str, float] | None:
    """The request's {domain: weight}, or None when the router decides."""
    if model == MODEL_ID:
        w = None
    elif model == f"{MODEL_ID}:base":
        w = dict.fromkeys(domains, 0.0)
    elif model == f"{MODEL_ID}:all":
        w = dict.fromkeys(domains, 1.0)
    elif model.startswith(f"{MODEL_ID}:") and model[len(MODEL_ID) + 1 :] in domains:
        one = model[len(MODEL_ID) + 1 :]
        w = {d: float(d == one) for d in domains}
    else:
        raise not_found(f"The model {model!r} does not exist; available: {', '.join(model_ids(domains))}.",
                        "model", "model_not_found")
    if override is not None:
        unknown = sorted(set(override) - set(domains))
        if unknown:
            raise invalid(f"weights: unknown domain(s) {unknown}; known domains: {domains}", "weights", "unknown_domain")
        w = {d: float(override.get(d, 0.0)) for d in domains}
    return w


@dataclass
class Prepared:
    """A validated request, ready for the engine."""

    kind: str  # "completion" | "chat"
    model: str
    prompts: list[list[int]]
    prompt_texts: list[str]
    n: int
    params: SamplingParams
    weights: dict[str, float] | None
    stops: list[str]
    top_logprobs: int | None  # None = no logprobs
    stream: bool
    include_usage: bool
    user: str | None = None
    echo: bool = False


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def check_chars(limit: int, texts: list[str], param: str) -> None:
    """Refuse a prompt string longer than `limit` characters before anything tokenizes it."""
    for i, t in enumerate(texts):
        if len(t) > limit:
            where = param if len(texts) == 1 else f"{param}.{i}"
            raise invalid(f"{where}: {len(t)} characters; this server's limit is {limit} per prompt string "
                          "(max_prompt_chars).", where, "prompt_too_long")


def check_messages_chars(limit: int, messages: list) -> None:
    """The same cap for every message's content string, or for each text part of a content list."""
    for i, m in enumerate(messages):
        if isinstance(m.content, str):
            check_chars(limit, [m.content], f"messages.{i}.content")
        elif m.content:
            for j, part in enumerate(m.content):
                check_chars(limit, [part.text], f"messages.{i}.content.{j}.text")


def prepare(state: Any, body: CompletionRequest | ChatCompletionRequest) -> Prepared:
    s = state.settings
    runner = state.runner
    tok = runner.tokenizer
    chat = isinstance(body, ChatCompletionRequest)
    domains = runner.domains
    weights = resolve_weights(body.model, body.weights, domains)
    n = _or(body.n, 1)

    max_tokens = body.max_tokens
    if chat and body.max_completion_tokens is not None:
        max_tokens = body.max_completion_tokens
    max_tokens = min(SamplingParams.max_tokens, s.max_tokens_limit) if max_tokens is None else max_tokens
    if max_tokens > s.max_tokens_limit:
        raise invalid(f"max_tokens={max_tokens} exceeds this server's limit of {s.max_tokens_limit}.", "max_tokens")
    if n > s.max_n or n > s.max_batch:
        raise invalid(f"n={n} exceeds this server's limit of {min(s.max_n, s.max_batch)}.", "n")
    echo = False
    if chat:
        if body.top_logprobs is not None and not body.logprobs:
            raise invalid("top_logprobs needs logprobs=true.", "top_logprobs")
        top = (body.top_logprobs or 0) if body.logprobs else None
    else:
        top = body.logprobs
        echo = bool(body.echo)
        if echo and top is not None:
            raise invalid("echo with logprobs is not supported (the prompt's logprobs are not computed); "
                          "drop one of them.", "echo", "unsupported_parameter")
    if top is not None and top > s.max_logprobs:
        raise invalid(f"logprobs may ask for at most {s.max_logprobs} alternatives.", "logprobs")

    if chat:
        check_messages_chars(s.max_prompt_chars, body.messages)
        msgs = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = render_chat(tok, msgs)
        except Exception as e:  # a template error is the conversation's fault (e.g. roles out of order)
            raise invalid(f"messages: cannot render the conversation: {e}", "messages") from e
        texts = [text]
        prompts = [encode_prompt(tok, text)]
    elif isinstance(body.prompt, str) or (isinstance(body.prompt, list) and body.prompt and isinstance(body.prompt[0], str)):
        texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if len(texts) > s.max_prompts:
            raise invalid(f"at most {s.max_prompts} prompts per request.", "prompt")
        if any(not t for t in texts):
            raise invalid("prompt must not be empty.", "prompt", "empty_prompt")
        check_chars(s.max_prompt_chars, texts, "prompt")
        prompts = [encode_prompt(tok, t) for t in texts]
    else:
        ids = list(body.prompt)
        limit = min(s.max_prompt_tokens, runner.max_model_len)
        if len(ids) > limit:
            raise invalid(f"The prompt has {len(ids)} tokens; the limit is {limit}.", "prompt", "context_length_exceeded")
        bad = [i for i in ids if i >= runner.vocab_size]
        if bad:
            raise invalid(f"prompt: token id {bad[0]} is outside the vocabulary (size {runner.vocab_size}).", "prompt")
        prompts = [ids]
        texts = [tok.decode(ids)]
    if len(prompts) * n > s.max_waiting:
        raise invalid(f"{len(prompts)} prompts x n={n} exceeds the queue bound {s.max_waiting}.", "n")
    for p in prompts:
        if not p:
            raise invalid("prompt must not be empty.", "prompt", "empty_prompt")
        limit = min(s.max_prompt_tokens, runner.max_model_len)
        if len(p) > limit:
            raise invalid(f"The prompt has {len(p)} tokens; the limit is {limit}.", "prompt", "context_length_exceeded")
        if len(p) + max_tokens > runner.max_model_len:
            raise invalid(f"The prompt ({len(p)} tokens) plus max_tokens ({max_tokens}) exceeds the model's context "
                          f"length of {runner.max_model_len}.", "max_tokens", "context_length_exceeded")

    top_k = _or(body.top_k, 0)
    params = SamplingParams(max_tokens=max_tokens, temperature=_or(body.temperature, 1.0), top_p=_or(body.top_p, 1.0),
                            top_k=top_k if top_k > 0 else 0, seed=body.seed, logprobs=top,
                            stop_token_ids=runner.eos_token_ids,
                            presence_penalty=_or(body.presence_penalty, 0.0),
                            frequency_penalty=_or(body.frequency_penalty, 0.0))
    stream = bool(body.stream)
    include_usage = bool(stream and body.stream_options and body.stream_options.include_usage)
    return Prepared("chat" if chat else "completion", body.model, prompts, texts, n, params, weights,
                    body.stop_list(), top, stream, include_usage, body.user, echo)


@dataclass
class Generation:
    """The engine requests of one HTTP request, and their choices' text state."""

    id: str
    request_id: str
    prep: Prepared
    created: int
    deadline: float | None = None
    reqs: list[GenRequest] = field(default_factory=list)
    choices: list[ChoiceText] = field(default_factory=list)
    weights: list[dict[str, float] | None] = field(default_factory=list)
    bundle_version: int = 0
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    error: str | None = None
    error_code: str = ""  # the engine's Event.code, or "timeout" (request_timeout passed)
    client_request_id: str | None = None  # the client's X-Request-Id: recorded, never a debug-history key

    @property
    def done(self) -> bool:
        return self.error is not None or all(c.done for c in self.choices)

    def cancel(self) -> None:
        for q in self.reqs:
            q.cancel()


def start_generation(state: Any, prep: Prepared, request_id: str) -> Generation:
    if state.engine is None or not state.ready:
        raise not_ready()
    loop = asyncio.get_running_loop()
    prefix = "chatcmpl-" if prep.kind == "chat" else "cmpl-"
    g = Generation(prefix + uuid.uuid4().hex[:24], request_id, prep, int(time.time()),
                   time.monotonic() + state.settings.request_timeout)
    runner = state.runner
    tok = runner.tokenizer
    g.bundle_version = runner.bundle_version
    # events arrive on the model thread; coalesce them so the event loop is woken once per step, not once per token
    pending: list[tuple[int, Event]] = []
    lock = threading.Lock()

    def flush() -> None:
        with lock:
            items = pending[:]
            pending.clear()
        for item in items:
            g.queue.put_nowait(item)

    for p, ids in enumerate(prep.prompts):
        def sink(ev: Event, p: int = p) -> None:
            with lock:
                pending.append((p, ev))
                first = len(pending) == 1
            if first:
                try:
                    loop.call_soon_threadsafe(flush)
                except RuntimeError:  # the event loop is gone (shutdown): nobody is listening any more
                    pass

        q = GenRequest(f"{g.id}-{p}", ids, prep.params, sink, n=prep.n,
                       weights=dict(prep.weights) if prep.weights is not None else None)
        g.reqs.append(q)
        g.weights.append(prep.weights)
        for _ in range(prep.n):
            g.choices.append(ChoiceText(tok, prep.stops, skip_ids=runner.eos_token_ids,
                                        keep_tokens=prep.top_logprobs is not None))
    try:
        for q in g.reqs:
            state.engine.submit(q)
    except QueueFullError as e:
        g.cancel()
        raise queue_full(state.settings.retry_after) from e
    except EngineStoppedError as e:
        g.cancel()
        raise not_ready(f"The server is not accepting requests: {e}.") from e
    return g


def _apply(g: Generation, p: int, ev: Event) -> None:
    if ev.kind == "start":
        g.weights[p] = ev.weights
        g.bundle_version = ev.bundle_version
        return
    if ev.kind == "error":
        g.error, g.error_code = ev.message, ev.code or "internal"
        return
    c = g.choices[p * g.prep.n + ev.index]
    if ev.kind == "token":
        if c.add(ev.token_id, ev.logprob, ev.top):
            g.reqs[p].cancel(ev.index)  # stop string found: free the row at the next step
    elif ev.kind == "finish":
        c.finish(ev.finish_reason if ev.finish_reason in ("length", "stop") else "cancelled")


async def pump(g: Generation, deadline: float | None = None) -> None:
    """Wait for at least one event, then apply everything already queued. Past `deadline` (monotonic), the request
    is cancelled and fails with code "timeout" (a 503, or an error event in a stream), never a 200 "length"."""
    try:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        p, ev = await asyncio.wait_for(g.queue.get(), timeout)
    except asyncio.TimeoutError:
        log.warning("request %s timed out; cancelling", g.id)
        g.cancel()
        g.error, g.error_code = "the request timed out (request_timeout)", "timeout"
        return
    _apply(g, p, ev)
    while not g.queue.empty():
        p, ev = g.queue.get_nowait()
        _apply(g, p, ev)


def brainstacks_ext(state: Any, g: Generation) -> dict[str, Any]:
    domains = state.runner.domains
    ws = [{d: finite(round(float((w or {}).get(d, 0.0)), 6)) for d in domains} for w in g.weights]
    ext: dict[str, Any] = {"weights": ws[0] if ws else {}, "bundle_version": g.bundle_version}
    if len(ws) > 1:
        ext["prompt_weights"] = ws
    return ext


def usage(g: Generation) -> dict[str, int]:
    pt = sum(len(p) for p in g.prep.prompts)
    ct = sum(c.n_tokens for c in g.choices)
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


# ---------------------------------------------------------------------------------------------------- logprobs
def _tok_str(tok: Any, tid: int) -> str:
    return tok.decode([tid], skip_special_tokens=False)


def finite(x: float | None) -> float | None:
    """A number JSON can carry: NaN and ±inf (a broken stack, a -inf logit) are sent as null."""
    return x if x is not None and math.isfinite(x) else None


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


# ---------------------------------------------------------------------------------------------------- responses
def final_response(state: Any, g: Generation) -> dict[str, Any]:
    tok = state.runner.tokenizer
    choices = []
    for i, c in enumerate(g.choices):
        lp = None
        if g.prep.top_logprobs is not None:
            lp = (chat_logprobs(tok, c.tokens) if g.prep.kind == "chat"
                  else completion_logprobs(tok, c.tokens, g.prep.top_logprobs))
        if g.prep.kind == "chat":
            choices.append({"index": i, "message": {"role": "assistant", "content": c.text, "refusal": None},
                            "logprobs": lp, "finish_reason": c.finish_reason})
        else:
            text = g.prep.prompt_texts[i // g.prep.n] + c.text if g.prep.echo else c.text
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": c.finish_reason})
    return {"id": g.id, "object": "chat.completion" if g.prep.kind == "chat" else "text_completion",
            "created": g.created, "model": g.prep.model, "system_fingerprint": f"bundle-v{g.bundle_version}",
            "choices": choices, "usage": usage(g), "brainstacks": brainstacks_ext(state, g)}


def _chunk(state: Any, g: Generation, choices: list[dict], with_usage: bool | None = None) -> str:
    obj = {"id": g.id, "object": "chat.completion.chunk" if g.prep.kind == "chat" else "text_completion",
           "created": g.created, "model": g.prep.model, "system_fingerprint": f"bundle-v{g.bundle_version}",
           "choices": choices, "brainstacks": brainstacks_ext(state, g)}
    if g.prep.include_usage:
        obj["usage"] = usage(g) if with_usage else None
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def stream_events(state: Any, g: Generation, request: Request):
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
                yield sse_error(aborted(g))
                yield "data: [DONE]\n\n"
                break
            if not started and chat and any(w is not None for w in g.weights):
                started = True
                yield _chunk(state, g, [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                         "finish_reason": None} for i in range(len(g.choices))])
            out = []
            for i, c in enumerate(g.choices):
                if finished_sent[i]:
                    continue
                text = c.ready()
                new_infos = c.tokens[sent_tokens[i] :]
                sent_tokens[i] = len(c.tokens)
                lp = None
                if g.prep.top_logprobs is not None and new_infos:
                    lp = chat_logprobs(tok, new_infos) if chat else completion_logprobs(tok, new_infos, g.prep.top_logprobs)
                fin = c.finish_reason if c.done else None
                if c.done:
                    finished_sent[i] = True
                if text or lp or fin:  # one entry per choice per chunk; the last carries finish_reason
                    if chat:
                        delta = {"content": text} if text else {}
                        out.append({"index": i, "delta": delta, "logprobs": lp, "finish_reason": fin})
                    else:
                        out.append({"index": i, "text": text, "logprobs": lp, "finish_reason": fin})
            if out:
                yield _chunk(state, g, out)
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


async def run(state: Any, body: CompletionRequest | ChatCompletionRequest, request: Request):
    prep = await asyncio.to_thread(prepare, state, body)  # tokenizing a long prompt must not stall the event loop
    g = start_generation(state, prep, getattr(request.state, "request_id", ""))
    g.client_request_id = getattr(request.state, "client_request_id", None)
    if prep.stream:
        return StreamingResponse(stream_events(state, g, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    watcher = asyncio.create_task(_watch_disconnect(request, g))
    try:
        while not g.done:
            await pump(g, g.deadline)
    finally:
        watcher.cancel()
        if not g.done:
            g.cancel()
        state.finish_generation(g)
    if g.error is not None:
        raise aborted(g)
    return JSONResponse(final_response(state, g))


def aborted(g: Generation) -> APIError:
    """The engine gave up on this request: 503 when the server is shutting down, the engine is dead, the request
    waited too long for a slot or timed out; 500 for an internal failure."""
    code = g.error_code or ("shutting_down" if "shutting down" in (g.error or "") else "internal")
    if code in ("shutting_down", "engine_dead", "queue_timeout", "timeout"):
        return APIError(503, f"Generation aborted: {g.error}.", "server_error", None, code)
    return APIError(500, f"Generation failed: {g.error}.", "server_error", None, "internal_error")


async def _watch_disconnect(request: Request, g: Generation) -> None:
    """A non-streaming client that goes away frees its rows (streams notice through the closed generator)."""
    try:
        while not g.done:
            if await request.is_disconnected():
                log.info("client disconnected; cancelling %s", g.id)
                g.cancel()
                return
            await asyncio.sleep(0.25)
    except asyncio.CancelledError:
        pass

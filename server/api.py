"""The OpenAI endpoints: /v1/completions and /v1/chat/completions, streaming and not (docs/DESIGN.md §6).

A request is checked against the settings' limits, tokenized, resolved to domain weights (the `model` composition or
the `weights` extension; None = routed by the engine at admission), and submitted as one engine request per prompt
(n samples each) as a Generation (server/generation.py). Engine events come back through an asyncio queue; each
choice turns its tokens into text (server/textstream.py), honouring stop strings, and server/responses.py builds the
response in OpenAI's exact shapes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from brainstacks.text import encode_prompt, render_chat
from server.errors import aborted, invalid, not_found, not_ready, queue_full
from server.generation import Generation, Prepared, pump
from server.genrequest import EngineStoppedError, Event, GenRequest, QueueFullError
from server.responses import final_response, stream_events
from server.sampling import SamplingParams
from server.schemas import ChatCompletionRequest, CompletionRequest
from server.state import ServerState
from server.steptimer import clock
from server.textstream import ChoiceText

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
            raise invalid(f"weights: unknown domain(s) {unknown}; known domains: {domains}", "weights",
                          "unknown_domain")
        w = {d: float(override.get(d, 0.0)) for d in domains}
    return w


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


def chat_text(state: ServerState, messages: list, add_generation_prompt: bool = True) -> str:
    """Chat messages as prompt text, through the tokenizer's chat template, after the character caps: what
    /v1/chat/completions, /debug/route and /tokenize all feed the model."""
    check_messages_chars(state.settings.max_prompt_chars, messages)
    msgs = [{"role": m.role, "content": m.text()} for m in messages]
    try:
        return render_chat(state.runner.tokenizer, msgs, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # a template error is the conversation's fault (e.g. roles out of order)
        raise invalid(f"messages: cannot render the conversation: {e}", "messages") from e


def one_prompt_text(state: ServerState, prompt: str | None, messages: list | None,
                    add_generation_prompt: bool = True) -> str:
    """The text of a body with exactly one of prompt or messages (/debug/route, /tokenize), after the caps."""
    if (prompt is None) == (messages is None):
        raise invalid("give exactly one of prompt or messages.", "prompt")
    if messages is not None:
        return chat_text(state, messages, add_generation_prompt)
    check_chars(state.settings.max_prompt_chars, [prompt], "prompt")
    return prompt


def check_token_ids(state: ServerState, ids: list[int], param: str) -> None:
    """Every id inside the served vocabulary (a token-id prompt, /detokenize)."""
    bad = [i for i in ids if i >= state.runner.vocab_size]
    if bad:
        raise invalid(f"{param}: token id {bad[0]} is outside the vocabulary (size {state.runner.vocab_size}).", param)


def check_prompt_tokens(state: ServerState, ids: list[int]) -> None:
    limit = min(state.settings.max_prompt_tokens, state.runner.max_model_len)
    if len(ids) > limit:
        raise invalid(f"The prompt has {len(ids)} tokens; the limit is {limit}.", "prompt", "context_length_exceeded")


def logit_bias(body: CompletionRequest | ChatCompletionRequest, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """The request's logit_bias as (token id, bias) pairs, every id inside the vocabulary."""
    if not body.logit_bias:
        return ()
    out = []
    for key, bias in body.logit_bias.items():
        tid = int(key)
        if tid >= vocab_size:
            raise invalid(f"logit_bias: token id {key} is outside the vocabulary (size {vocab_size}).",
                          f"logit_bias.{key}")
        if bias:
            out.append((tid, float(bias)))
    return tuple(sorted(out))


def forced_tool(body: ChatCompletionRequest) -> Any:
    """The FunctionDef a chat request forces its reply to call (tool_choice naming it, or required with one tool),
    or None for a text reply (no tool_choice, none, auto: the model is never left to decide on its own)."""
    choice, tools = body.tool_choice, body.tools or []
    if choice is None or choice in ("none", "auto"):
        return None
    if not tools:
        raise invalid("tool_choice forces a call, but the request lists no tools.", "tool_choice")
    if choice == "required":
        if len(tools) != 1:
            raise invalid(f"tool_choice 'required' with {len(tools)} tools: name the one to call with "
                          "{\"type\": \"function\", \"function\": {\"name\": ...}}.", "tool_choice",
                          "unsupported_parameter")
        return tools[0].function
    for t in tools:
        if t.function.name == choice.function.name:
            return t.function
    raise invalid(f"tool_choice names {choice.function.name!r}, which is not among the tools "
                  f"({', '.join(t.function.name for t in tools)}).", "tool_choice.function.name", "tool_not_found")


def output_constraint(state: ServerState, body: CompletionRequest | ChatCompletionRequest) -> tuple[Any, str | None]:
    """(a factory of per-row grammar matchers or None, the forced tool's name or None)."""
    tool = forced_tool(body) if isinstance(body, ChatCompletionRequest) else None
    if tool is None:
        return state.grammars().compile(body.response_format), None
    if body.response_format is not None and body.response_format.type != "text":
        raise invalid("response_format cannot be combined with a forced tool call (the call's arguments follow the "
                      "function's parameters).", "response_format")
    schema = tool.parameters if tool.parameters is not None else {"type": "object"}
    return state.grammars().compile_schema(schema, "tools.function.parameters"), tool.name


def prepare(state: ServerState, body: CompletionRequest | ChatCompletionRequest) -> Prepared:
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
        text = chat_text(state, body.messages)
        texts = [text]
        prompts = [encode_prompt(tok, text)]
    elif isinstance(body.prompt, str) or (isinstance(body.prompt, list) and body.prompt
                                          and isinstance(body.prompt[0], str)):
        texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if len(texts) > s.max_prompts:
            raise invalid(f"at most {s.max_prompts} prompts per request.", "prompt")
        if any(not t for t in texts):
            raise invalid("prompt must not be empty.", "prompt", "empty_prompt")
        check_chars(s.max_prompt_chars, texts, "prompt")
        prompts = [encode_prompt(tok, t) for t in texts]
    else:
        ids = list(body.prompt)
        check_prompt_tokens(state, ids)
        check_token_ids(state, ids, "prompt")
        prompts = [ids]
        texts = [tok.decode(ids)]
    if len(prompts) * n > s.max_waiting:
        raise invalid(f"{len(prompts)} prompts x n={n} exceeds the queue bound {s.max_waiting}.", "n")
    for p in prompts:
        if not p:
            raise invalid("prompt must not be empty.", "prompt", "empty_prompt")
        check_prompt_tokens(state, p)
        if len(p) + max_tokens > runner.max_model_len:
            raise invalid(f"The prompt ({len(p)} tokens) plus max_tokens ({max_tokens}) exceeds the model's context "
                          f"length of {runner.max_model_len}.", "max_tokens", "context_length_exceeded")

    d = SamplingParams  # the one place the sampling defaults live
    top_k = _or(body.top_k, d.top_k)
    params = SamplingParams(max_tokens=max_tokens, temperature=_or(body.temperature, d.temperature),
                            top_p=_or(body.top_p, d.top_p), top_k=top_k if top_k > 0 else 0, seed=body.seed,
                            logprobs=top, stop_token_ids=runner.eos_token_ids,
                            presence_penalty=_or(body.presence_penalty, d.presence_penalty),
                            frequency_penalty=_or(body.frequency_penalty, d.frequency_penalty),
                            logit_bias=logit_bias(body, runner.vocab_size))
    constraint, tool = output_constraint(state, body)
    stream = bool(body.stream)
    include_usage = bool(stream and body.stream_options and body.stream_options.include_usage)
    return Prepared("chat" if chat else "completion", body.model, prompts, texts, n, params, weights,
                    body.stop_list(), top, stream, include_usage, body.user, echo, constraint, tool)


def start_generation(state: ServerState, prep: Prepared, request_id: str) -> Generation:
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

    timer = g.timer = getattr(state.engine, "timer", None)

    def flush() -> None:
        t0 = clock()
        with lock:
            items = pending[:]
            pending.clear()
        for item in items:
            g.queue.put_nowait(item)
        if timer is not None:
            timer.woke()
            timer.since("wakeup", t0)

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
                       weights=dict(prep.weights) if prep.weights is not None else None, constraint=prep.constraint)
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


async def run(state: ServerState, body: CompletionRequest | ChatCompletionRequest, request: Request):
    prep = await asyncio.to_thread(prepare, state, body)  # tokenizing a long prompt must not stall the event loop
    g = start_generation(state, prep, getattr(request.state, "request_id", ""))
    g.client_request_id = getattr(request.state, "client_request_id", None)
    if prep.stream:
        return StreamingResponse(stream_events(state, g), media_type="text/event-stream",
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
        raise aborted(g.error, g.error_code)
    return JSONResponse(final_response(state, g))


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

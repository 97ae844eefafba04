"""One HTTP request's generation: the validated request (`Prepared`), its engine requests and their choices' text
state (`Generation`), and how engine events update it (`pump`).

server/api.py prepares and starts a Generation, server/responses.py turns it into OpenAI's JSON or SSE shapes, and
server/history.py records it once it is finished. This module imports none of them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.genrequest import Event, GenRequest
from server.sampling import SamplingParams
from server.steptimer import clock
from server.textstream import ChoiceText

log = logging.getLogger("brainstacks.server")


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
    constraint: Callable[[], Any] | None = None  # response_format: a factory of per-row grammar matchers
    tool: str | None = None  # chat: the function every choice calls (its text is the call's arguments)


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
    recorded: bool = False  # set once its metrics and debug record are taken (ServerState.finish_generation)
    timer: Any = None  # the engine's StepTimer (server/steptimer.py): detokenize and sse_encode seconds go there

    @property
    def done(self) -> bool:
        return self.error is not None or all(c.done for c in self.choices)

    def cancel(self) -> None:
        for q in self.reqs:
            q.cancel()


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
    t0 = clock()
    _apply(g, p, ev)
    while not g.queue.empty():
        p, ev = g.queue.get_nowait()
        _apply(g, p, ev)
    if g.timer is not None:
        g.timer.since("detokenize", t0)


def finite(x: float | None) -> float | None:
    """A number JSON can carry: NaN and ±inf (a broken stack, a -inf logit) are sent as null."""
    return x if x is not None and math.isfinite(x) else None


def brainstacks_ext(domains: list[str], g: Generation) -> dict[str, Any]:
    """The `brainstacks` extension of a response: the weights used per domain (per prompt when there are several)
    and the bundle version that served it."""
    ws = [{d: finite(round(float((w or {}).get(d, 0.0)), 6)) for d in domains} for w in g.weights]
    ext: dict[str, Any] = {"weights": ws[0] if ws else {}, "bundle_version": g.bundle_version}
    if len(ws) > 1:
        ext["prompt_weights"] = ws
    return ext


def usage(g: Generation) -> dict[str, int]:
    pt = sum(len(p) for p in g.prep.prompts)
    ct = sum(c.n_tokens for c in g.choices)
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}

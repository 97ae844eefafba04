"""What the server records about each finished (or cancelled) generation: its metrics (tokens, queue time, TTFT,
TPOT, end-to-end latency, routing time, and the router's weight per domain when it was routed) and its debug record,
kept in a bounded history behind GET /debug/requests and /debug/requests/{id}.

Records are keyed only by ids the server made (the completion id and the server's request id), so no client header
can overwrite or shadow another request's record.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from server.generation import Generation, brainstacks_ext, usage
from server.metrics import Metrics


class History:
    """The last `size` debug records (each under its completion id and its request id)."""

    def __init__(self, size: int):
        self.size = size
        self._records: collections.OrderedDict[str, dict] = collections.OrderedDict()

    def add(self, rec: dict) -> None:
        self._records[rec["id"]] = rec
        if rec["request_id"]:
            self._records[rec["request_id"]] = rec
        while len(self._records) > 2 * self.size:
            self._records.popitem(last=False)

    def get(self, key: str) -> dict | None:
        return self._records.get(key)

    def recent(self) -> list[dict]:
        """The records, newest first, each once, at most `size`."""
        recs = list({r["id"]: r for r in reversed(self._records.values())}.values())
        return recs[: self.size]


def observe(m: Metrics, g: Generation, now: float) -> dict[str, float | None]:
    """Record g's metrics; returns its timings in ms since arrival (queue, route, prefill, TTFT, end to end)."""
    u = usage(g)
    m.prompt_tokens.inc(u["prompt_tokens"])
    m.generation_tokens.inc(u["completion_tokens"])
    timings: dict[str, float | None] = {}
    if g.reqs:
        arrival = min(q.arrival for q in g.reqs)
        firsts = [q.first_token_at for q in g.reqs if q.first_token_at is not None]
        admitted = [q.admitted_at for q in g.reqs if q.admitted_at is not None]
        if admitted:
            m.queue.observe(min(admitted) - arrival)
        if firsts:
            m.ttft.observe(min(firsts) - arrival)
            n_out = max(c.n_tokens for c in g.choices) if g.choices else 0
            if n_out > 1:
                m.tpot.observe((now - min(firsts)) / (n_out - 1))
        m.e2e.observe(now - arrival)
        for q in g.reqs:
            if q.route_ms:
                m.route_time.observe(q.route_ms / 1000)

        def ms(t: float | None) -> float | None:
            return None if t is None else round((t - arrival) * 1000, 3)

        timings = {"queue_ms": ms(min(admitted)) if admitted else None,
                   "route_ms": round(sum(q.route_ms for q in g.reqs), 3),
                   "prefill_ms": round(max(q.prefill_ms for q in g.reqs), 3),
                   "ttft_ms": ms(min(firsts)) if firsts else None,
                   "e2e_ms": ms(now)}
    if g.prep.weights is None:  # routed: the router's choice per domain
        for w in g.weights:
            for d, v in (w or {}).items():
                m.router_weight.labels(domain=d).observe(v)
    return timings


def debug_record(g: Generation, domains: list[str], stacks: list[tuple[str, Any]],
                 timings: dict[str, float | None]) -> dict[str, Any]:
    """g's entry of /debug/requests: ids, weights, the stacks they switched on (`stacks`: the loaded (domain, k)
    pairs), usage, finish reasons, timings and error."""
    ext = brainstacks_ext(domains, g)
    active = []
    for d, v in ext["weights"].items():
        if v > 0:
            active += [f"{dd}/{k}" for dd, k in stacks if dd == d]
    return {"id": g.id, "object": "debug.request", "request_id": g.request_id,
            "client_request_id": g.client_request_id, "model": g.prep.model, "user": g.prep.user,
            "created": g.created, "routed": g.prep.weights is None, "weights": ext["weights"],
            "prompt_weights": ext.get("prompt_weights"), "active_stacks": active,
            "bundle_version": g.bundle_version, "usage": usage(g),
            "finish_reasons": [c.finish_reason or "cancelled" for c in g.choices],
            "timings": timings, "error": g.error}


def record(history: History, m: Metrics, g: Generation, domains: list[str], stacks: list[tuple[str, Any]]) -> None:
    """Take g's metrics and add its debug record (once; a second call does nothing)."""
    if g.recorded:
        return
    g.recorded = True
    history.add(debug_record(g, domains, stacks, observe(m, g, time.monotonic())))

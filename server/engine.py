"""Continuous-batching engine: token ids in, token ids (+ logprobs) out. It knows nothing about text.

One model thread owns the runner (server/runner.py). The API side submits a `GenRequest` (a prompt, n samples, its
sampling params, its domain weights or None = "route me") together with a `sink` callable; the engine calls the sink
from the model thread with `Event`s (the API wraps it in loop.call_soon_threadsafe).

Every iteration (`step`):
  1. run queued control tasks (routing for /debug/route, hot-reload swaps), so they land between decode steps;
  2. drop rows whose request was cancelled (client gone, stop string hit);
  3. admit waiting requests while the running batch has room: route the ones without weights (one base-only pass
     for all of them), prefill them together (left-padded, each row with its own weights), sample their first token,
     and concatenate their KV cache into the running batch;
  4. one batched decode step for every running row, each row carrying its own (D,) weights.

The running batch is a single left-padded KV cache: keys/values (B, H, L, Dh) per layer, a 2D attention mask (B, L)
and each row's next position. Joining left-pads the shorter side and concatenates along the batch; leaving
index-selects the remaining rows; columns that are padding in every row are trimmed. Masked columns get exactly zero
attention, so a row's tokens do not depend on its batch mates (up to float summation order).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from server.sampling import SamplingParams, make_generator, sample_batch

log = logging.getLogger("brainstacks.engine")


class QueueFullError(Exception):
    """The waiting queue is at its bound; the API answers 429 with Retry-After."""


class EngineStoppedError(Exception):
    """The engine is not accepting work (not started, draining or stopped); the API answers 503."""


@dataclass
class Event:
    """What the engine tells a request's sink. kind: start | token | finish | error."""

    kind: str
    index: int = 0
    token_id: int = -1
    logprob: float = 0.0
    top: list[tuple[int, float]] | None = None
    finish_reason: str | None = None
    weights: dict[str, float] | None = None
    bundle_version: int = 0
    message: str = ""


@dataclass
class GenRequest:
    """One prompt with n samples. `weights` None means the engine routes it at admission."""

    id: str
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    n: int = 1
    weights: dict[str, float] | None = None
    arrival: float = field(default_factory=time.monotonic)
    # set by the engine
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    route_ms: float = 0.0
    prefill_ms: float = 0.0
    generated: list[int] = field(default_factory=list)  # tokens per sample index
    _cancelled: set[int] = field(default_factory=set)
    _cancel_all: bool = False
    _open: int = 0

    def __post_init__(self):
        self.generated = [0] * self.n

    def cancel(self, index: int | None = None) -> None:
        """Ask the engine to drop one sample (or all); takes effect at the next step. Thread-safe enough: a set add."""
        if index is None:
            self._cancel_all = True
        else:
            self._cancelled.add(index)

    def is_cancelled(self, index: int) -> bool:
        return self._cancel_all or index in self._cancelled


@dataclass
class _Row:
    req: GenRequest
    index: int
    gen: torch.Generator
    n_out: int = 0


class Batch:
    """The running rows and their left-padded KV cache."""

    def __init__(self, cache, rows: list[_Row], mask: torch.Tensor, pos: torch.Tensor, last: torch.Tensor):
        self.cache = cache  # layers[i].keys/values: (B, H, L, Dh)
        self.rows = rows
        self.mask = mask  # (B, L) long, 1 = real token
        self.pos = pos  # (B,) next position of each row
        self.last = last  # (B,) token each row feeds next

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, keep: list[int]) -> None:
        """Keep only rows `keep` (indices into the batch), then trim all-padding columns."""
        idx = torch.tensor(keep, dtype=torch.long)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx.to(layer.keys.device))
            layer.values = layer.values.index_select(0, idx.to(layer.values.device))
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask.index_select(0, idx)
        self.pos = self.pos.index_select(0, idx)
        self.last = self.last.index_select(0, idx)
        self._trim()

    def _trim(self) -> None:
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else self.mask.shape[1]
        if start > 0:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:, :]
                layer.values = layer.values[:, :, start:, :]
            self.mask = self.mask[:, start:]

    def extend(self, other: Batch) -> None:
        """Append other's rows, left-padding whichever side is shorter."""
        a, b = self.mask.shape[1], other.mask.shape[1]
        width = max(a, b)
        for la, lb in zip(self.cache.layers, other.cache.layers, strict=True):
            la.keys = torch.cat([_lpad(la.keys, width), _lpad(lb.keys, width)], dim=0)
            la.values = torch.cat([_lpad(la.values, width), _lpad(lb.values, width)], dim=0)
        self.mask = torch.cat([_lpad(self.mask, width), _lpad(other.mask, width)], dim=0)
        self.rows += other.rows
        self.pos = torch.cat([self.pos, other.pos])
        self.last = torch.cat([self.last, other.last])


def _lpad(x: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the sequence axis (-2 for (B, H, L, Dh) caches, -1 for (B, L) masks) with zeros to `width`."""
    axis = -1 if x.dim() == 2 else -2
    short = width - x.shape[axis]
    if short == 0:
        return x
    shape = list(x.shape)
    shape[axis] = short
    return torch.cat([x.new_zeros(shape), x], dim=axis)


class Engine:
    """Iteration-level scheduler over one runner. Start with `start()`; submit from any thread."""

    def __init__(self, runner: Any, *, max_batch: int = 16, max_waiting: int = 64, max_prefill_tokens: int = 8192,
                 metrics: Any = None):
        self.runner = runner
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.max_waiting = max_waiting
        self.metrics = metrics
        self._waiting: collections.deque[GenRequest] = collections.deque()
        self._waiting_rows = 0
        self._tasks: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._cv = threading.Condition()
        self._batch: Batch | None = None
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._stop = False
        self.steps = 0

    # ------------------------------------------------------------------ API side (any thread)
    def start(self, background: bool = True) -> None:
        """Accept work; with background=False the caller drives `step()` itself (tests, benchmarks)."""
        self._accepting = True
        if not background:
            return
        self._thread = threading.Thread(target=self._loop, name="brainstacks-engine", daemon=True)
        self._thread.start()

    @property
    def running_rows(self) -> int:
        b = self._batch
        return len(b) if b is not None else 0

    @property
    def waiting_rows(self) -> int:
        return self._waiting_rows

    def submit(self, req: GenRequest) -> None:
        with self._cv:
            if not self._accepting:
                raise EngineStoppedError("the engine is not accepting requests")
            if req.n > self.max_batch:
                raise ValueError(f"n={req.n} exceeds the running batch bound {self.max_batch}")
            if self._waiting_rows + req.n > self.max_waiting:
                raise QueueFullError(f"waiting queue full ({self._waiting_rows} rows waiting, bound {self.max_waiting})")
            self._waiting.append(req)
            self._waiting_rows += req.n
            self._cv.notify()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run fn on the model thread between steps; returns a concurrent Future."""
        fut: Future = Future()
        with self._cv:
            if self._stop:
                fut.set_exception(EngineStoppedError("the engine is stopped"))
                return fut
            self._tasks.append((fn, fut))
            self._cv.notify()
        return fut

    def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop admitting, let running and waiting requests finish for up to drain_timeout, then abort the rest."""
        with self._cv:
            self._accepting = False
            self._cv.notify()
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and (self.running_rows or self._waiting_rows):
            time.sleep(0.02)
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------ model thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._stop or self._tasks or self._waiting or self._batch is not None):
                    self._cv.wait()
                if self._stop:
                    break
            try:
                self.step()
            except Exception as e:  # a bug must not kill the server: fail the rows in flight, keep serving
                log.exception("engine step failed")
                self._fail_all(f"internal engine error: {type(e).__name__}")
        self._abort_all("the server is shutting down")

    def step(self) -> None:
        """One scheduler iteration (see the module docstring)."""
        self._run_tasks()
        self._drop_cancelled()
        newcomers = self._admit()
        if newcomers:
            try:
                self._prefill(newcomers)
            except Exception as e:  # the running batch is untouched until the final merge: fail only the newcomers
                log.exception("prefill failed")
                for q in newcomers:
                    q.sink(Event("error", message=f"internal engine error: {type(e).__name__}"))
        if self._batch is not None and len(self._batch):
            self._decode()
        self.steps += 1

    def _run_tasks(self) -> None:
        while True:
            with self._cv:
                if not self._tasks:
                    return
                fn, fut = self._tasks.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # handed to the caller
                fut.set_exception(e)

    def _admit(self) -> list[GenRequest]:
        out: list[GenRequest] = []
        free = self.max_batch - self.running_rows
        width = 0
        with self._cv:
            while self._waiting:
                req = self._waiting[0]
                if req._cancel_all:
                    self._waiting.popleft()
                    self._waiting_rows -= req.n
                    self._finish_all(req, "cancelled")
                    continue
                if req.n > free:
                    break
                # the newcomers' prefill is one left-padded (k, width) forward: bound its size (always admit one)
                w = max(width, len(req.prompt_ids))
                if out and w * (len(out) + 1) > self.max_prefill_tokens:
                    break
                width = w
                self._waiting.popleft()
                self._waiting_rows -= req.n
                free -= req.n
                out.append(req)
        return out

    def _prefill(self, reqs: list[GenRequest]) -> None:
        r = self.runner
        now = time.monotonic()
        for q in reqs:
            q.admitted_at = now
            q._open = q.n
        to_route = [q for q in reqs if q.weights is None]
        if to_route:
            t0 = time.perf_counter()
            routed = r.route([q.prompt_ids for q in to_route])
            ms = (time.perf_counter() - t0) * 1000 / len(to_route)
            for q, w in zip(to_route, routed, strict=True):
                q.weights, q.route_ms = w, ms
        for q in reqs:
            q.sink(Event("start", weights=dict(q.weights), bundle_version=r.bundle_version))

        # one left-padded forward over every newcomer's prompt, each row with its own weights
        t0 = time.perf_counter()
        width = max(len(q.prompt_ids) for q in reqs)
        k = len(reqs)
        ids = torch.zeros((k, width), dtype=torch.long)
        mask = torch.zeros((k, width), dtype=torch.long)
        for i, q in enumerate(reqs):
            L = len(q.prompt_ids)
            ids[i, width - L :] = torch.tensor(q.prompt_ids, dtype=torch.long)
            mask[i, width - L :] = 1
        pos_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # (k, width)
        cache = r.new_cache()
        logits = r.forward(ids, mask, pos_ids, cache, r.weights_tensor([q.weights for q in reqs]))  # (k, V)
        ms = (time.perf_counter() - t0) * 1000
        for q in reqs:
            q.prefill_ms = ms

        # n samples of a request share its prefill: repeat its cache row n times
        src = [i for i, q in enumerate(reqs) for _ in range(q.n)]
        rows = [_Row(q, j, make_generator(None if q.params.seed is None else q.params.seed + j)) for q in reqs for j in range(q.n)]
        if len(src) != k:
            idx = torch.tensor(src, dtype=torch.long)
            for layer in cache.layers:
                layer.keys = layer.keys.index_select(0, idx.to(layer.keys.device))
                layer.values = layer.values.index_select(0, idx.to(layer.values.device))
            mask = mask.index_select(0, idx)
            logits = logits.index_select(0, idx.to(logits.device))
        lengths = torch.tensor([len(reqs[i].prompt_ids) for i in src], dtype=torch.long)
        nb = Batch(cache, rows, mask, lengths.clone(), torch.zeros(len(rows), dtype=torch.long))
        self._emit_and_prune(nb, logits)
        if len(nb):
            if self._batch is None or not len(self._batch):
                self._batch = nb
            else:
                self._batch.extend(nb)

    def _decode(self) -> None:
        b = self._batch
        r = self.runner
        B = len(b)
        b.mask = torch.cat([b.mask, torch.ones((B, 1), dtype=torch.long)], dim=1)  # (B, L+1)
        weights = r.weights_tensor([row.req.weights for row in b.rows])
        logits = r.forward(b.last.unsqueeze(1), b.mask, b.pos.unsqueeze(1), b.cache, weights)  # (B, V)
        b.pos = b.pos + 1
        if self.metrics is not None:
            self.metrics.batch_size.observe(B)
        self._emit_and_prune(b, logits)
        if not len(b):
            self._batch = None

    def _emit_and_prune(self, b: Batch, logits: torch.Tensor) -> None:
        """Sample a token for every row of b, send it, and drop the rows that finished."""
        tokens, logp = sample_batch(logits, [row.req.params for row in b.rows], [row.gen for row in b.rows])
        now = time.monotonic()
        keep: list[int] = []
        for i, (row, tok) in enumerate(zip(b.rows, tokens, strict=True)):
            q, p = row.req, row.req.params
            if q.is_cancelled(row.index):
                self._finish_row(row, "cancelled")
                continue
            top = None
            if p.logprobs:
                vals, ids = torch.topk(logp[i], min(p.logprobs, logp.shape[-1]))
                top = list(zip(ids.tolist(), vals.tolist(), strict=True))
            lp = float(logp[i, tok]) if p.logprobs is not None else 0.0
            if q.first_token_at is None:
                q.first_token_at = now
            row.n_out += 1
            q.generated[row.index] = row.n_out
            q.sink(Event("token", index=row.index, token_id=tok, logprob=lp, top=top))
            if tok in p.stop_token_ids:
                self._finish_row(row, "stop")
            elif row.n_out >= p.max_tokens:
                self._finish_row(row, "length")
            else:
                keep.append(i)
        b.last = torch.tensor(tokens, dtype=torch.long)
        if len(keep) != len(b):
            b.select(keep)

    def _drop_cancelled(self) -> None:
        b = self._batch
        if b is None:
            return
        keep = [i for i, row in enumerate(b.rows) if not row.req.is_cancelled(row.index)]
        if len(keep) == len(b):
            return
        for row in b.rows:
            if row.req.is_cancelled(row.index):
                self._finish_row(row, "cancelled")
        if keep:
            b.select(keep)
        else:
            self._batch = None

    def _finish_row(self, row: _Row, reason: str) -> None:
        q = row.req
        q.sink(Event("finish", index=row.index, finish_reason=reason))
        q._open -= 1
        if q._open <= 0:
            q.finished_at = time.monotonic()

    def _finish_all(self, q: GenRequest, reason: str) -> None:
        for j in range(q.n):
            q.sink(Event("finish", index=j, finish_reason=reason))
        q.finished_at = time.monotonic()

    def _fail_all(self, message: str) -> None:
        b, self._batch = self._batch, None
        seen: set[int] = set()
        for row in b.rows if b is not None else []:
            if id(row.req) not in seen:
                seen.add(id(row.req))
                row.req.sink(Event("error", message=message))

    def _abort_all(self, message: str) -> None:
        self._fail_all(message)
        with self._cv:
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._waiting_rows = 0
            tasks, self._tasks = list(self._tasks), collections.deque()
        for q in waiting:
            q.sink(Event("error", message=message))
        for _, fut in tasks:
            if not fut.done():
                fut.set_exception(EngineStoppedError(message))

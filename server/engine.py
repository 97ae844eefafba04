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

Failure containment (the engine reports its health through `health()`, which /health/ready serves):
  - a failing prefill fails only its newcomers; a failing merge (Batch.extend builds every tensor before it assigns
    any) leaves the running batch intact; a row whose sampling fails fails alone; a failing decode forward fails
    the running rows (their caches may be half-updated) and the engine keeps serving;
  - admission keeps the padded KV cache (rows x widest reservation, a reservation = prompt + max_tokens) within
    `kv_token_budget` tokens, so overload queues instead of exhausting memory (a request alone always runs);
  - a cancelled request leaves the waiting queue at once, wherever it stands; a request that waited longer than
    `max_queue_wait` seconds fails with code "queue_timeout";
  - if the model thread dies, every request in flight gets an error event and `submit` refuses new ones.
Error events carry a `code`: internal | shutting_down | queue_timeout | engine_dead.
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

from brainstacks.text import pad_batch
from server.sampling import SamplingParams, make_generator, sample_batch
from server.settings import ServerSettings

_SETTINGS = ServerSettings.model_fields  # the Engine's defaults are the server's (declared once, in settings.py)

log = logging.getLogger("brainstacks.engine")


class QueueFullError(Exception):
    """The waiting queue is at its bound; the API answers 429 with Retry-After."""


class EngineStoppedError(Exception):
    """The engine is not accepting work (not started, draining, stopped or dead); the API answers 503."""


class EngineTimeoutError(Exception):
    """An Engine.call did not run within its timeout (the model thread is busy or stuck)."""


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
    code: str = ""  # error events: internal | shutting_down | queue_timeout | engine_dead


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
    _engine: Any = None  # set by Engine.submit, so a cancel can take the request out of the waiting queue

    def __post_init__(self):
        self.generated = [0] * self.n

    @property
    def reserved_tokens(self) -> int:
        """KV-cache positions one row of this request may occupy: its prompt plus max_tokens."""
        return len(self.prompt_ids) + self.params.max_tokens

    def cancel(self, index: int | None = None) -> None:
        """Ask the engine to drop one sample (or all). A running row goes at the next step; a request still waiting
        leaves the queue now (its rows stop counting against the queue bound at once)."""
        if index is None:
            self._cancel_all = True
            if self._engine is not None:
                self._engine._withdraw(self)
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
    history: list[int] = field(default_factory=list)  # tokens generated so far (presence/frequency penalties)


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
        """Append other's rows, left-padding whichever side is shorter. Every new tensor is built before any is
        assigned, so a failure part-way (e.g. out of memory) leaves this batch exactly as it was."""
        a, b = self.mask.shape[1], other.mask.shape[1]
        width = max(a, b)
        if len(self.cache.layers) != len(other.cache.layers):
            raise ValueError(f"cannot merge caches of {len(self.cache.layers)} and {len(other.cache.layers)} layers")
        kv = [(torch.cat([_lpad(la.keys, width), _lpad(lb.keys, width)], dim=0),
               torch.cat([_lpad(la.values, width), _lpad(lb.values, width)], dim=0))
              for la, lb in zip(self.cache.layers, other.cache.layers, strict=True)]
        mask = torch.cat([_lpad(self.mask, width), _lpad(other.mask, width)], dim=0)
        pos = torch.cat([self.pos, other.pos])
        last = torch.cat([self.last, other.last])
        for la, (k, v) in zip(self.cache.layers, kv, strict=True):  # from here on: assignments only
            la.keys, la.values = k, v
        self.mask, self.pos, self.last = mask, pos, last
        self.rows = self.rows + other.rows

    @property
    def reserved_width(self) -> int:
        """The widest KV reservation among the rows (prompt + max_tokens), an upper bound on the cache width."""
        return max((row.req.reserved_tokens for row in self.rows), default=0)


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

    def __init__(self, runner: Any, *, max_batch: int = _SETTINGS["max_batch"].default,
                 max_waiting: int = _SETTINGS["max_waiting"].default,
                 max_prefill_tokens: int = _SETTINGS["max_prefill_tokens"].default,
                 metrics: Any = None, kv_token_budget: int = 0, max_queue_wait: float = 0.0,
                 ready_failed_steps: int = _SETTINGS["ready_failed_steps"].default,
                 ready_stuck_seconds: float = _SETTINGS["ready_stuck_seconds"].default):
        self.runner = runner
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.max_waiting = max_waiting
        self.metrics = metrics
        self.kv_token_budget = kv_token_budget  # 0: no bound
        self.max_queue_wait = max_queue_wait  # 0: no bound
        self.ready_failed_steps = ready_failed_steps
        self.ready_stuck_seconds = ready_stuck_seconds
        self.failed_steps = 0  # consecutive steps that raised
        self._beat = time.monotonic()  # the model thread's last sign of progress (a step ended, or it woke up)
        self._dead: str | None = None
        self._admitting: list[GenRequest] = []  # popped from the queue, not yet in the batch (told if the thread dies)
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

    def health(self) -> dict[str, Any]:
        """What /health/ready reports: ready is False when the model thread is dead, the last `ready_failed_steps`
        steps failed, or no step finished for `ready_stuck_seconds` while work waits."""
        now = time.monotonic()
        busy = bool(self._waiting or self._tasks or self._batch is not None)
        stalled = now - self._beat if busy else 0.0
        reason = None
        if self._dead is not None or (self._thread is not None and not self._thread.is_alive() and not self._stop):
            reason = f"the engine thread is dead ({self._dead or 'exited'})"
        elif self.failed_steps >= self.ready_failed_steps:
            reason = f"the last {self.failed_steps} engine steps failed"
        elif stalled > self.ready_stuck_seconds:
            reason = f"no engine step finished for {stalled:.0f} s while work waits"
        return {"ready": reason is None, "reason": reason, "failed_steps": self.failed_steps,
                "stalled_seconds": round(stalled, 3), "steps": self.steps, "running": self.running_rows,
                "waiting": self._waiting_rows}

    def submit(self, req: GenRequest) -> None:
        with self._cv:
            if self._dead is not None:
                raise EngineStoppedError(f"the engine is not running ({self._dead})")
            if not self._accepting:
                raise EngineStoppedError("the engine is not accepting requests")
            if req.n > self.max_batch:
                raise ValueError(f"n={req.n} exceeds the running batch bound {self.max_batch}")
            if self._waiting_rows + req.n > self.max_waiting:
                raise QueueFullError(f"waiting queue full ({self._waiting_rows} rows waiting, bound {self.max_waiting})")
            req._engine = self
            self._waiting.append(req)
            self._waiting_rows += req.n
            self._cv.notify()

    def _withdraw(self, req: GenRequest) -> None:
        """A cancelled request leaves the waiting queue wherever it stands (any thread)."""
        with self._cv:
            try:
                self._waiting.remove(req)
            except ValueError:
                return  # already admitted (it leaves the batch at the next step) or gone
            self._waiting_rows -= req.n
        self._finish_all(req, "cancelled")

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run fn on the model thread between steps; returns a concurrent Future."""
        fut: Future = Future()
        with self._cv:
            if self._stop or self._dead is not None:
                fut.set_exception(EngineStoppedError(self._dead or "the engine is stopped"))
                return fut
            self._tasks.append((fn, fut))
            self._cv.notify()
        return fut

    async def call_async(self, fn: Callable[[], Any], timeout: float) -> Any:
        """`call`, awaited with a timeout: past it, a call not yet started is withdrawn and EngineTimeoutError raised
        (a call already running is waited for: model-thread calls are short swaps or routing passes)."""
        import asyncio

        fut = self.call(fn)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), timeout)
        except asyncio.TimeoutError:
            if fut.cancel():
                raise EngineTimeoutError(f"the engine did not take the call within {timeout:g} s "
                                         f"({self.health().get('reason') or 'busy'})") from None
        return await asyncio.wrap_future(fut)

    def drain(self, drain_timeout: float = _SETTINGS["drain_timeout"].default) -> None:
        """Stop admitting, let running and waiting requests finish for up to drain_timeout, then fail the rest with
        an error event (code shutting_down), so every open stream ends with an error event instead of being cut."""
        with self._cv:
            self._accepting = False
            self._cv.notify()
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and (self.running_rows or self._waiting_rows):
            time.sleep(0.02)
        if self.running_rows or self._waiting_rows:
            self.abort_in_flight()

    def stop(self, drain_timeout: float = _SETTINGS["drain_timeout"].default) -> None:
        """`drain`, then end the model thread."""
        self.drain(drain_timeout)
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------ model thread
    def _loop(self) -> None:
        reason, code = "the server is shutting down", "shutting_down"
        try:
            while True:
                with self._cv:
                    while not (self._stop or self._tasks or self._waiting or self._batch is not None):
                        self._cv.wait()
                    if self._stop:
                        break
                self._beat = time.monotonic()
                try:
                    self.step()
                    self.failed_steps = 0
                except Exception as e:  # a bug must not kill the server: fail the rows in flight, keep serving
                    log.exception("engine step failed")
                    self.failed_steps += 1
                    self._fail_all(f"internal engine error: {type(e).__name__}")
                self._beat = time.monotonic()
        except BaseException as e:  # the thread itself is dying: say so to everyone waiting (health reports it)
            log.exception("engine thread died")
            reason, code = f"the engine thread died: {type(e).__name__}", "engine_dead"
            with self._cv:
                self._dead = reason
                self._accepting = False
        finally:
            self._abort_all(reason, code)

    def step(self) -> None:
        """One scheduler iteration (see the module docstring)."""
        self._run_tasks()
        self._drop_cancelled()
        self._expire_waiting()
        newcomers = self._admit()
        if newcomers:
            self._admitting = newcomers
            try:
                self._prefill(newcomers)
            except Exception as e:  # the running batch is untouched until the final merge: fail only the newcomers
                log.exception("prefill failed")
                self._admitting = []
                for q in newcomers:
                    q.sink(Event("error", message=f"internal engine error: {type(e).__name__}", code="internal"))
                if self._batch is None or not len(self._batch):
                    raise  # nothing else runs in this step: it failed (the loop counts it)
            self._admitting = []  # (still set if the thread dies inside the prefill: _abort_all tells them)
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

    def _expire_waiting(self) -> None:
        """Fail the requests that have waited longer than max_queue_wait (the head waits longest)."""
        if not self.max_queue_wait:
            return
        now = time.monotonic()
        expired = []
        with self._cv:
            while self._waiting and now - self._waiting[0].arrival > self.max_queue_wait:
                req = self._waiting.popleft()
                self._waiting_rows -= req.n
                expired.append(req)
        for req in expired:
            req.sink(Event("error", message=f"the request waited more than {self.max_queue_wait:g} s for a batch slot "
                           "(the server is overloaded)", code="queue_timeout"))

    def _admit(self) -> list[GenRequest]:
        out: list[GenRequest] = []
        free = self.max_batch - self.running_rows
        width = 0
        b = self._batch
        rows = len(b) if b is not None else 0
        kv_width = b.reserved_width if b is not None else 0
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
                # the padded KV cache after admitting: (rows) x (widest reservation); always admit into an empty batch
                w_kv = max(kv_width, req.reserved_tokens)
                if self.kv_token_budget and rows and (rows + req.n) * w_kv > self.kv_token_budget:
                    break
                rows, kv_width = rows + req.n, w_kv
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
        k = len(reqs)
        ids, mask = pad_batch([q.prompt_ids for q in reqs], 0, left=True)  # (k, width) each; pad id 0 is masked out
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
                try:
                    self._batch.extend(nb)  # all-or-nothing: the running batch stays intact if it fails
                except Exception as e:
                    log.exception("merging newcomers into the running batch failed")
                    for row in nb.rows:
                        self._fail_row(row, f"internal engine error: {type(e).__name__}")

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

    def _sample(self, b: Batch, logits: torch.Tensor) -> tuple[list[int | None], torch.Tensor]:
        """Tokens for every row (None where that row's sampling failed: only that row fails) and the log-softmax."""
        params, gens, hist = [row.req.params for row in b.rows], [row.gen for row in b.rows], [row.history for row in b.rows]
        try:
            tokens, logp = sample_batch(logits, params, gens, hist)
            return list(tokens), logp
        except Exception:
            log.exception("batched sampling failed; sampling row by row to isolate the failing row")
        logp = torch.log_softmax(logits.float().cpu(), dim=-1)
        out: list[int | None] = []
        for i in range(len(b.rows)):
            try:
                out.append(sample_batch(logits[i : i + 1], params[i : i + 1], gens[i : i + 1], hist[i : i + 1])[0][0])
            except Exception as e:
                log.warning("sampling failed for %s: %s", b.rows[i].req.id, e)
                out.append(None)
        return out, logp

    def _emit_and_prune(self, b: Batch, logits: torch.Tensor) -> None:
        """Sample a token for every row of b, send it, and drop the rows that finished (or failed on their own)."""
        tokens, logp = self._sample(b, logits)
        now = time.monotonic()
        keep: list[int] = []
        for i, (row, tok) in enumerate(zip(b.rows, tokens, strict=True)):
            q, p = row.req, row.req.params
            if q.is_cancelled(row.index):
                self._finish_row(row, "cancelled")
                continue
            if tok is None:
                self._fail_row(row, "internal engine error: sampling failed")
                continue
            try:
                top = None
                if p.logprobs:
                    vals, ids = torch.topk(logp[i], min(p.logprobs, logp.shape[-1]))
                    top = list(zip(ids.tolist(), vals.tolist(), strict=True))
                lp = float(logp[i, tok]) if p.logprobs is not None else 0.0
            except Exception as e:  # this row's logprobs only
                log.warning("logprobs failed for %s: %s", q.id, e)
                self._fail_row(row, "internal engine error: logprobs failed")
                continue
            if q.first_token_at is None:
                q.first_token_at = now
            row.n_out += 1
            if p.penalized:
                row.history.append(tok)
            q.generated[row.index] = row.n_out
            q.sink(Event("token", index=row.index, token_id=tok, logprob=lp, top=top))
            if tok in p.stop_token_ids:
                self._finish_row(row, "stop")
            elif row.n_out >= p.max_tokens:
                self._finish_row(row, "length")
            else:
                keep.append(i)
        b.last = torch.tensor([t if t is not None else 0 for t in tokens], dtype=torch.long)
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

    def _fail_row(self, row: _Row, message: str) -> None:
        """One row failed on its own: its request gets an error event (once), its batch mates go on."""
        q = row.req
        if not getattr(q, "_failed", False):
            q._failed = True
            q.sink(Event("error", message=message, code="internal"))
        q._cancelled.add(row.index)
        q._open -= 1
        if q._open <= 0:
            q.finished_at = time.monotonic()

    def _finish_all(self, q: GenRequest, reason: str) -> None:
        for j in range(q.n):
            q.sink(Event("finish", index=j, finish_reason=reason))
        q.finished_at = time.monotonic()

    def _fail_all(self, message: str, code: str = "internal") -> None:
        b, self._batch = self._batch, None
        seen: set[int] = set()
        for row in b.rows if b is not None else []:
            if id(row.req) not in seen:
                seen.add(id(row.req))
                row.req.sink(Event("error", message=message, code=code))

    def abort_in_flight(self, message: str = "the server is shutting down", code: str = "shutting_down") -> None:
        """Fail every running and waiting request now (shutdown, after the drain). Runs on the model thread between
        steps when that thread is alive, so no step is cut in half."""
        if self._thread is not None and self._thread.is_alive():
            try:
                self.call(lambda: self._abort_all(message, code)).result(timeout=10)
                return
            except Exception:  # noqa: BLE001 - the thread is stuck or gone: abort from here
                log.warning("the engine thread did not take the abort; aborting from the caller")
        self._abort_all(message, code)

    def _abort_all(self, message: str, code: str = "shutting_down") -> None:
        admitting, self._admitting = self._admitting, []
        in_batch = {id(row.req) for row in self._batch.rows} if self._batch is not None else set()
        for q in admitting:
            if id(q) not in in_batch:
                q.sink(Event("error", message=message, code=code))
        self._fail_all(message, code)
        with self._cv:
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._waiting_rows = 0
            tasks: list[tuple[Callable[[], Any], Future]] = []
            if self._stop or self._dead is not None:  # nobody will run them any more
                tasks, self._tasks = list(self._tasks), collections.deque()
        for q in waiting:
            q.sink(Event("error", message=message, code=code))
        for _, fut in tasks:
            if not fut.done():
                fut.set_exception(EngineStoppedError(message))

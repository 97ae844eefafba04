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

The running batch is a single left-padded KV cache (server/batch.py); the waiting queue and its admission rule are
in server/waiting.py; what goes in and comes out (GenRequest, Event, the errors) is in server/genrequest.py.

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
from typing import Any

import torch

from server.batch import Batch, emit_tokens, prefill, sample_rows
from server.genrequest import EngineStoppedError, EngineTimeoutError, Event, GenRequest
from server.memory import Trimmer
from server.metrics import Metrics
from server.runner import ModelRunner
from server.sampling import HOST_SYNC
from server.settings import ServerSettings
from server.steptimer import StepTimer, clock
from server.waiting import WaitingQueue

_SETTINGS = ServerSettings.model_fields  # the Engine's defaults are the server's (declared once, in settings.py)
# the settings an Engine takes (Engine.from_settings)
LIMITS = ("max_batch", "max_waiting", "max_prefill_tokens", "kv_token_budget", "max_queue_wait", "ready_failed_steps",
          "ready_stuck_seconds", "malloc_trim_interval")

log = logging.getLogger("brainstacks.engine")


class Engine:
    """Iteration-level scheduler over one runner. Start with `start()`; submit from any thread."""

    def __init__(self, runner: ModelRunner, *, max_batch: int = _SETTINGS["max_batch"].default,
                 max_waiting: int = _SETTINGS["max_waiting"].default,
                 max_prefill_tokens: int = _SETTINGS["max_prefill_tokens"].default,
                 metrics: Metrics | None = None, kv_token_budget: int = _SETTINGS["kv_token_budget"].default,
                 max_queue_wait: float = _SETTINGS["max_queue_wait"].default,
                 ready_failed_steps: int = _SETTINGS["ready_failed_steps"].default,
                 ready_stuck_seconds: float = _SETTINGS["ready_stuck_seconds"].default,
                 malloc_trim_interval: float = _SETTINGS["malloc_trim_interval"].default):
        self.runner = runner
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.metrics = metrics
        self.kv_token_budget = kv_token_budget  # 0: no bound
        self.max_queue_wait = max_queue_wait  # 0: no bound
        self.ready_failed_steps = ready_failed_steps
        self.ready_stuck_seconds = ready_stuck_seconds
        self.failed_steps = 0  # consecutive steps that raised
        self._beat = time.monotonic()  # the model thread's last sign of progress (a step ended, or it woke up)
        self._dead: str | None = None
        self._admitting: list[GenRequest] = []  # popped from the queue, not yet in the batch (told if the thread dies)
        self._tasks: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._cv = threading.Condition()  # re-entrant: guards the tasks and the waiting queue, wakes the model thread
        self._waiting = WaitingQueue(self._cv, max_waiting)
        self._batch: Batch | None = None
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._stop = False
        self.steps = 0
        self.timer = StepTimer(metrics)  # seconds per step phase (server/steptimer.py), also in /metrics
        self.trimmer = Trimmer(malloc_trim_interval)  # gives freed C heap back to the OS now and then (memory.py)

    @classmethod
    def from_settings(cls, runner: ModelRunner, settings: ServerSettings, metrics: Metrics | None = None) -> Engine:
        """The Engine the server runs: every limit from `settings`."""
        return cls(runner, metrics=metrics, **{k: getattr(settings, k) for k in LIMITS})

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
        return self._waiting.rows

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
                "waiting": self._waiting.rows}

    def submit(self, req: GenRequest) -> None:
        with self._cv:
            if self._dead is not None:
                raise EngineStoppedError(f"the engine is not running ({self._dead})")
            if not self._accepting:
                raise EngineStoppedError("the engine is not accepting requests")
            if req.n > self.max_batch:
                raise ValueError(f"n={req.n} exceeds the running batch bound {self.max_batch}")
            self._waiting.push(req)
            req.withdraw = self._withdraw

    def _withdraw(self, req: GenRequest) -> None:
        """A cancelled request leaves the waiting queue wherever it stands (any thread); one already admitted leaves
        the batch at the next step."""
        if self._waiting.withdraw(req):
            req.finish_all("cancelled")

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
        while time.monotonic() < deadline and (self.running_rows or self.waiting_rows):
            time.sleep(0.02)
        if self.running_rows or self.waiting_rows:
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
                    self.trimmer.maybe()
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
        tm = self.timer
        t_step = clock()
        self._run_tasks()
        t = tm.since("tasks", t_step)
        self._drop_cancelled()
        tm.since("batch_ops", t)
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
                    q.fail(f"internal engine error: {type(e).__name__}")
                if self._batch is None or not len(self._batch):
                    raise  # nothing else runs in this step: it failed (the loop counts it)
            self._admitting = []  # (still set if the thread dies inside the prefill: _abort_all tells them)
        decoded = self._batch is not None and len(self._batch) > 0
        if decoded:
            self._decode()
        self.steps += 1
        tm.since("step", t_step)
        tm.step_done(decoded)

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
        for req in self._waiting.expire(self.max_queue_wait):
            req.fail(f"the request waited more than {self.max_queue_wait:g} s for a batch slot (the server is "
                     "overloaded)", "queue_timeout")

    def _admit(self) -> list[GenRequest]:
        b = self._batch
        return self._waiting.take(self.max_batch - self.running_rows, len(b) if b is not None else 0,
                                  b.reserved_width if b is not None else 0, self.kv_token_budget,
                                  self.max_prefill_tokens)

    def _prefill(self, reqs: list[GenRequest]) -> None:
        r = self.runner
        now = time.monotonic()
        for q in reqs:
            q.admitted_at = now
        to_route = [q for q in reqs if q.weights is None]
        if to_route:
            t0 = clock()
            routed = r.route([q.prompt_ids for q in to_route])
            ms = (self.timer.since("route", t0) - t0) * 1000 / len(to_route)
            for q, w in zip(to_route, routed, strict=True):
                q.weights, q.route_ms = w, ms
        for q in reqs:
            q.sink(Event("start", weights=dict(q.weights), bundle_version=r.bundle_version))

        t0 = clock()
        nb, logits = prefill(r, reqs)  # one left-padded forward, each row with its own weights
        ms = (self.timer.since("prefill_forward", t0) - t0) * 1000
        for q in reqs:
            q.prefill_ms = ms
        self._emit_and_prune(nb, logits)
        if len(nb):
            if self._batch is None or not len(self._batch):
                self._batch = nb
            else:
                try:
                    t0 = clock()
                    self._batch.extend(nb)  # all-or-nothing: the running batch stays intact if it fails
                    self.timer.since("batch_ops", t0)
                except Exception as e:
                    log.exception("merging newcomers into the running batch failed")
                    for row in nb.rows:
                        row.req.fail_row(row.index, f"internal engine error: {type(e).__name__}")

    def _decode(self) -> None:
        b = self._batch
        t0 = clock()
        logits = b.decode(self.runner)  # (B, V)
        self.timer.since("decode_forward", t0)
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(b))
        self._emit_and_prune(b, logits)
        if not len(b):
            self._batch = None

    def _emit_and_prune(self, b: Batch, logits: torch.Tensor) -> None:
        """Sample a token for every row of b, send it, and drop the rows that finished (or failed on their own)."""
        tm = self.timer
        t0, s0 = clock(), HOST_SYNC[0]
        tokens, lps = sample_rows(b, logits)
        t1, sync = clock(), HOST_SYNC[0] - s0
        tm.add("host_sync", sync)
        tm.add("sampling", t1 - t0 - sync)
        keep = emit_tokens(b, tokens, lps, time.monotonic())
        t2 = tm.since("emit", t1)
        b.last = torch.tensor([t if t is not None else 0 for t in tokens], dtype=torch.long)
        if len(keep) != len(b):
            b.select(keep)
        tm.since("batch_ops", t2)

    def _drop_cancelled(self) -> None:
        b = self._batch
        if b is None:
            return
        keep = [i for i, row in enumerate(b.rows) if not row.req.is_cancelled(row.index)]
        if len(keep) == len(b):
            return
        for row in b.rows:
            if row.req.is_cancelled(row.index):
                row.req.finish(row.index, "cancelled")
        if keep:
            b.select(keep)
        else:
            self._batch = None

    def _fail_all(self, message: str, code: str = "internal") -> None:
        b, self._batch = self._batch, None
        seen: set[int] = set()
        for row in b.rows if b is not None else []:
            if id(row.req) not in seen:
                seen.add(id(row.req))
                row.req.fail(message, code)

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
                q.fail(message, code)
        self._fail_all(message, code)
        with self._cv:
            waiting = self._waiting.clear()
            tasks: list[tuple[Callable[[], Any], Future]] = []
            if self._stop or self._dead is not None:  # nobody will run them any more
                tasks, self._tasks = list(self._tasks), collections.deque()
        for q in waiting:
            q.fail(message, code)
        for _, fut in tasks:
            if not fut.done():
                fut.set_exception(EngineStoppedError(message))

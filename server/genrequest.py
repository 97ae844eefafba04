"""What crosses the engine's boundary (server/engine.py): a `GenRequest` goes in (one prompt, n samples, its
sampling params and domain weights), `Event`s come out through its sink, and `submit` / `call` raise the errors
below. Token ids only: text is the API side's business (server/textstream.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.sampling import SamplingParams


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
    constraint: Callable[[], Any] | None = None  # response_format: makes each row's grammar matcher (constraints.py)
    arrival: float = field(default_factory=time.monotonic)
    # set by the engine
    admitted_at: float | None = None
    first_token_at: float | None = None
    route_ms: float = 0.0
    prefill_ms: float = 0.0
    _cancelled: set[int] = field(default_factory=set)
    _cancel_all: bool = False
    _failed: bool = False  # an error event was sent (a row failed on its own): sent once per request
    withdraw: Callable[[GenRequest], None] | None = None  # set by Engine.submit: takes it out of the waiting queue

    @property
    def reserved_tokens(self) -> int:
        """KV-cache positions one row of this request may occupy: its prompt plus max_tokens."""
        return len(self.prompt_ids) + self.params.max_tokens

    def cancel(self, index: int | None = None) -> None:
        """Ask the engine to drop one sample (or all). A running row goes at the next step; a request still waiting
        leaves the queue now (its rows stop counting against the queue bound at once)."""
        if index is None:
            self._cancel_all = True
            if self.withdraw is not None:
                self.withdraw(self)
        else:
            self._cancelled.add(index)

    @property
    def cancelled_all(self) -> bool:
        return self._cancel_all

    def is_cancelled(self, index: int) -> bool:
        return self._cancel_all or index in self._cancelled

    # ------------------------------------------------------------------ what the engine tells the sink
    def finish(self, index: int, reason: str) -> None:
        self.sink(Event("finish", index=index, finish_reason=reason))

    def finish_all(self, reason: str) -> None:
        for j in range(self.n):
            self.finish(j, reason)

    def fail(self, message: str, code: str = "internal") -> None:
        self.sink(Event("error", message=message, code=code))

    def fail_row(self, index: int, message: str) -> None:
        """One row failed on its own: the request gets an error event (once), its other rows are dropped too."""
        if not self._failed:
            self._failed = True
            self.fail(message)
        self._cancelled.add(index)

"""The engine's waiting queue (server/engine.py): requests waiting for a batch slot, in arrival order, bounded in rows
(`max_waiting`), and the admission rule that takes them into the running batch.

Every method runs under the engine's condition (`cv`, re-entrant), which also guards the engine's control tasks, so
the model thread sleeps on one condition for all of its work.
"""

from __future__ import annotations

import collections
import threading
import time

from server.genrequest import GenRequest, QueueFullError


class WaitingQueue:
    def __init__(self, cv: threading.Condition, max_waiting: int):
        self._cv = cv
        self.max_waiting = max_waiting
        self._q: collections.deque[GenRequest] = collections.deque()
        self.rows = 0  # sum of n over the waiting requests

    def __bool__(self) -> bool:
        return bool(self._q)

    def push(self, req: GenRequest) -> None:
        """Queue `req` (QueueFullError beyond max_waiting rows) and wake the model thread."""
        with self._cv:
            if self.rows + req.n > self.max_waiting:
                raise QueueFullError(f"waiting queue full ({self.rows} rows waiting, bound {self.max_waiting})")
            self._q.append(req)
            self.rows += req.n
            self._cv.notify()

    def withdraw(self, req: GenRequest) -> bool:
        """Take `req` out wherever it stands; False when it is not waiting (already admitted, or gone)."""
        with self._cv:
            try:
                self._q.remove(req)
            except ValueError:
                return False
            self.rows -= req.n
            return True

    def expire(self, max_wait: float) -> list[GenRequest]:
        """Take out the requests that have waited longer than max_wait seconds (the head waits longest)."""
        now = time.monotonic()
        out = []
        with self._cv:
            while self._q and now - self._q[0].arrival > max_wait:
                req = self._q.popleft()
                self.rows -= req.n
                out.append(req)
        return out

    def clear(self) -> list[GenRequest]:
        """Take out every waiting request."""
        with self._cv:
            out, self._q = list(self._q), collections.deque()
            self.rows = 0
        return out

    def take(self, free: int, rows: int, kv_width: int, kv_token_budget: int,
             max_prefill_tokens: int) -> list[GenRequest]:
        """Admit from the head, in order, while the newcomers fit: `free` batch rows; the padded KV cache after
        admitting, (rows) x (widest reservation), within kv_token_budget (0: no bound; always admit into an empty
        batch); and their one left-padded (k, width) prefill within max_prefill_tokens (always admit one). A cancelled
        request met on the way leaves with finish "cancelled"."""
        out: list[GenRequest] = []
        width = 0
        with self._cv:
            while self._q:
                req = self._q[0]
                if req.cancelled_all:
                    self._q.popleft()
                    self.rows -= req.n
                    req.finish_all("cancelled")
                    continue
                if req.n > free:
                    break
                w_kv = max(kv_width, req.reserved_tokens)
                if kv_token_budget and rows and (rows + req.n) * w_kv > kv_token_budget:
                    break
                rows, kv_width = rows + req.n, w_kv
                w = max(width, len(req.prompt_ids))
                if out and w * (len(out) + 1) > max_prefill_tokens:
                    break
                width = w
                self._q.popleft()
                self.rows -= req.n
                free -= req.n
                out.append(req)
        return out

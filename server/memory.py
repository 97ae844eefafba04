"""The C allocator under a long-running server (glibc only; elsewhere these are no-ops).

glibc gives every thread that allocates its own malloc arena (up to 8 per core). The server allocates from many
threads: the model thread, asyncio's executor threads that tokenize prompts and render chats (server/api.py runs
`prepare` there), uvicorn's event loop, the tokenizers library's own threads. Memory freed in one arena is reused
only by that arena, and an arena rarely gives pages back, so under varied traffic the process's RSS creeps up while
the Python heap stays flat: the soak of issue 9 showed about 1 MiB a minute over 30 minutes that the engine alone
(no HTTP layer) did not show, and that `malloc_trim` partly returned.

    tune_allocator(arenas=2)     # at start-up, before the worker threads exist: at most 2 arenas
    trim()                       # give free pages back to the OS (the engine calls it between steps, rarely)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time

log = logging.getLogger("brainstacks.server")
M_ARENA_MAX = -8  # glibc's mallopt parameter number

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else False
        except OSError:
            _libc = False
    return _libc or None


def tune_allocator(arenas: int) -> bool:
    """Cap glibc's malloc arenas (0: leave the default). True when applied."""
    lib = _glibc()
    if lib is None or arenas <= 0:
        return False
    ok = bool(lib.mallopt(M_ARENA_MAX, int(arenas)))
    if ok:
        log.info("malloc: at most %d arenas", arenas)
    return ok


def trim() -> float:
    """malloc_trim(0): return free memory at the top of every arena and whole free pages inside them to the OS.
    Returns the seconds it took (0 where there is no glibc)."""
    lib = _glibc()
    if lib is None:
        return 0.0
    t0 = time.perf_counter()
    lib.malloc_trim(0)
    return time.perf_counter() - t0


class Trimmer:
    """Calls trim() at most once every `interval` seconds (0: never), from the thread that calls `maybe()`."""

    def __init__(self, interval: float):
        self.interval = interval
        self._next = time.monotonic() + interval
        self.seconds = 0.0  # total time spent trimming
        self.count = 0

    def maybe(self) -> None:
        if self.interval <= 0:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self.seconds += trim()
            self.count += 1

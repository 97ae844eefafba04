"""server/memory.py: the glibc allocator knobs the server sets (arena cap, periodic malloc_trim)."""

from __future__ import annotations

import platform
import time

import pytest

from server.memory import Trimmer, trim, tune_allocator
from server.settings import ServerSettings

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


@glibc
def test_arena_cap_and_trim_run_on_glibc():
    assert tune_allocator(ServerSettings().malloc_arena_max) is True
    assert tune_allocator(0) is False  # 0 leaves glibc's default alone
    blocks = [bytearray(20_000) for _ in range(500)]  # freed heap for trim to return
    del blocks
    assert trim() >= 0.0


def test_trimmer_runs_at_most_once_per_interval():
    never = Trimmer(0)
    never.maybe()
    assert never.count == 0
    t = Trimmer(0.05)
    t.maybe()
    assert t.count == 0  # not before the first interval has passed
    time.sleep(0.06)
    t.maybe()
    t.maybe()
    assert t.count == 1  # counted even where trim() is a no-op

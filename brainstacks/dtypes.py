"""Which device and dtype the work runs in: the rules that the stacks, the dense base copies, the fused decode path,
the server and training share (one source of truth for each).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); without, torch emulates it: measured 40x
    slower than float32 for a (1000, 576) x (576, 160) product on an AVX2-only EPYC."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def packed_dtype(storage: torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The dtype frozen stacks are packed and computed in: their storage dtype, except half types on a CPU without
    native support for them, where they are upcast to float32 (exactly: every bf16/fp16 value is a float32 value).
    Saving (stack_tensors) always returns the storage dtype, so bundles keep their size."""
    if storage in (torch.bfloat16, torch.float16) and torch.device(device).type == "cpu" and not cpu_has_fast_bf16():
        return torch.float32
    return storage


def auto_device() -> str:
    """What `device: auto` means everywhere (serving, training, benchmarks): cuda when available, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"

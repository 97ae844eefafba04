"""Learning-rate schedule (linear warmup, then cosine down to a floor) and the optimizer factory.

    opt = make_optimizer(params, lr=2e-4, weight_decay=0.0)      # AdamW; bitsandbytes AdamW8bit on CUDA
    sched = warmup_cosine(opt, total_steps=400, warmup_steps=20, min_lr_frac=0.1)
    ... opt.step(); sched.step()

The 8-bit optimizer keeps its moments in 8 bits (a quarter of AdamW's optimizer memory); it needs CUDA, so it is used
only when every parameter lives on a CUDA device, and plain AdamW everywhere else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from brainstacks import quant


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, min_lr_frac: float = 0.0) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warmup to 1, cosine to min_lr_frac."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_frac + (1.0 - min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_frac: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following lr_factor; call .step() after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, min_lr_frac))


def use_8bit(params: list[torch.nn.Parameter]) -> bool:
    if not torch.cuda.is_available() or not params:
        return False
    if not all(p.is_cuda for p in params):
        return False
    return quant.available()


def make_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0, eight_bit: bool | None = None
) -> torch.optim.Optimizer:
    """AdamW over the trainable params; bitsandbytes AdamW8bit when eight_bit (default: when all are on CUDA)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    if eight_bit is None:
        eight_bit = use_8bit(params)
    if eight_bit:
        return quant.adamw_8bit(params, lr, weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

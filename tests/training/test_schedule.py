"""Warmup + cosine schedule and optimizer choice."""

from __future__ import annotations

import math

import pytest
import torch

from training.schedule import lr_factor, make_optimizer, warmup_cosine


def test_warmup_then_cosine_to_floor():
    f = [lr_factor(s, 100, warmup_steps=10, min_lr_frac=0.1) for s in range(100)]
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11)
    assert all(a < b for a, b in zip(f[:10], f[1:11], strict=True))  # rising during warmup
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))  # then non-increasing
    assert f[-1] == pytest.approx(0.1)
    mid = 10 + (89 // 2)
    assert f[mid] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (mid - 10) / 89)))
    assert lr_factor(0, 1) == 1.0 and lr_factor(5, 1) == pytest.approx(0.0)


def test_scheduler_drives_the_optimizer_lr():
    w = torch.nn.Parameter(torch.zeros(2))
    frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    opt = make_optimizer([w, frozen], lr=1.0, weight_decay=0.01)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups[0]["params"]) == 1
    sched = warmup_cosine(opt, total_steps=4, warmup_steps=1)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5, 1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="no trainable"):
        make_optimizer([frozen], lr=1.0)

"""brainstacks/quant.py, the one module that touches bitsandbytes: its dequantization is bitsandbytes' public one,
its version check refuses clearly, and the CPU repack switch is undone for training."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes import functional as F
from torch import nn

from brainstacks import quant
from brainstacks.errors import BaseModelError


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_dequantize_is_bitsandbytes_public_dequantize_4bit(quant_type):
    torch.manual_seed(0)
    lin = nn.Linear(96, 64, bias=True)
    q = quant.quantize_linear(lin, quant_type, torch.float32, "cpu")
    assert quant.is_4bit(q) and not quant.is_4bit(lin)
    q.support_avx512bf16_for_cpu = False  # the canonical layout: what the public function reads
    public = F.dequantize_4bit(q.weight.data, q.weight.quant_state).float()
    assert torch.equal(quant.dequantize(q), public)
    err = (public - lin.weight).abs().max() / lin.weight.abs().max()
    assert 0 < err < 0.2  # 4-bit: close to the original, not equal
    x = torch.randn(3, 96)
    with torch.no_grad():
        torch.testing.assert_close(q(x), x @ public.T + lin.bias, atol=1e-4, rtol=1e-4)


def test_make_backward_safe_turns_the_repack_off():
    q = quant.quantize_linear(nn.Linear(32, 32), "nf4", torch.float32, "cpu")
    q.support_avx512bf16_for_cpu = True  # as on a CPU with AVX512-BF16, before its first eval call
    assert quant.make_backward_safe(q) == 1 and q.support_avx512bf16_for_cpu is False
    assert quant.make_backward_safe(q) == 0  # already safe


def test_an_old_bitsandbytes_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(bnb, "__version__", "0.45.3")
    with pytest.raises(BaseModelError, match=r"bitsandbytes >= 0\.50.*found 0\.45\.3"):
        quant.require()
    monkeypatch.setattr(bnb, "__version__", "0.50.2.dev0")
    assert quant.require() is bnb

"""Dense copies of 4-bit base projections for multi-token calls on the CPU (prefill, the router's pass, scoring).

bitsandbytes' CPU NF4 inference kernel is fast for a decode step's few rows but its cost grows linearly with the
rows of a call, while a dense bfloat16 matmul on a CPU with native bf16 (AVX512-BF16 / AMX) barely grows. Measured
on a 2-core Xeon with AMX, one thread, SmolLM2-135M's 576 -> 1536 projection: 1 row 0.11 ms NF4 / 0.15 ms dense bf16;
16 rows 0.51 / 0.22; 128 rows 3.8 / 0.46. Whole model (demo bundle): a 128-token base-only pass (the router's)
616 -> 198 ms, a 128-token routed prefill 695 -> 282 ms, while a decode step is unchanged (65.7 ms at batch 1,
163 ms at batch 16 on NF4; the dense copy would make it slower at batch 1).

So `attach_dense_copies(sm)` keeps, next to each NF4/FP4 base layer, its dequantized weight in bfloat16 (float32 on
a CPU without native bf16), and StackedLinear routes a call through it when its sequences carry more than one token
(`takes_dense`): every prefill and router pass, never a decode step. The rule looks at the tokens per sequence, not
the rows, so a request's decode takes the same kernel whether it runs alone or in a batch of 16 (batched = solo).
(One edge: a one-token prompt prefilled alone takes the kernel, and in a left-padded prefill with longer prompts the
copy.)
The copy is the weight the kernel serves with (brainstacks.quant.dequantize) rounded to bf16; the kernel itself
computes in bf16 on these CPUs, so prefill logits move by about as much as the kernel's own rounding: on the demo
(two 64-token prompts of random ids, routed) the largest logit difference from the 4-bit path was 0.61 with the bf16
copy and 0.59 with a float32 one (logits up to 34), and the top-1 token agreed at 97% and 98% of positions. It costs
memory: 2 bytes per base weight (4 without native bf16) on top of the 4-bit ones, reported by the function. The base
layers themselves are never modified; `detach_dense_copies` drops the copies.
"""

from __future__ import annotations

import torch

from brainstacks.dtypes import packed_dtype  # bf16, or float32 on a CPU without native bf16
from brainstacks.quant import dequantize, is_4bit


def attach_dense_copies(sm, dtype: torch.dtype | None = None, every_call: bool = False) -> int:
    """Give every 4-bit base projection of StackedModel `sm` a dense copy for multi-token calls (`every_call`: for all
    calls, decode steps too); returns the bytes the copies take (0 when nothing is 4-bit, e.g. an unquantized base).

    every_call suits training on a CPU (GRPO rollouts, SFT): a base loaded `for_training` runs bitsandbytes'
    autograd-safe path, which dequantizes the whole weight in every call and again in the backward; a float32 copy
    is the same weight (the same dequantization, done once), so the math is unchanged, and the frozen copy passes
    gradients to the input like the 4-bit layer does."""
    total = 0
    for lay in sm.layers.values():
        base = lay.base_layer
        if not is_4bit(base):
            continue
        dt = dtype or packed_dtype(torch.bfloat16, base.weight.device)
        w_t = dequantize(base).to(dt).t().contiguous()  # (d_in, d_out): torch.mm(x, w_t)
        bias = None if base.bias is None else base.bias.detach().float()
        lay.dense = (w_t, bias, every_call)
        total += w_t.numel() * w_t.element_size()
    return total


def detach_dense_copies(sm) -> None:
    for lay in sm.layers.values():
        lay.dense = None


def takes_dense(x: torch.Tensor, dense: tuple | None) -> bool:
    """Whether a projection's input x takes the layer's dense copy: it has one, and x (batch, tokens, d) carries more
    than one token per sequence, or the copy serves every call."""
    return dense is not None and (dense[2] or (x.dim() >= 3 and x.shape[-2] > 1))


def dense_forward(x: torch.Tensor, dense: tuple) -> torch.Tensor:
    """x (..., d_in) through a dense copy: the result in x's dtype, as the 4-bit layer returns it."""
    w_t, bias, _ = dense
    y = torch.mm(x.reshape(-1, w_t.shape[0]).to(w_t.dtype), w_t).view(*x.shape[:-1], w_t.shape[1]).to(x.dtype)
    return y if bias is None else y + bias.to(x.dtype)

"""A plain reference for the fused forward: one stack at a time, experts through einsum, as the paper's code does.

Used by the equivalence tests and as the baseline of benchmarks/forward.py. Never used for serving.

    with reference_forward(sm): model(...)   # every StackedLinear computes its frozen stacks in a Python loop
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from brainstacks.layer import StackedLinear
from brainstacks.moe_lora import topk_gates
from brainstacks.stacks import StackedModel


def loop_delta(
    x: torch.Tensor,
    stacks: list[dict[str, torch.Tensor]],
    row_weights: torch.Tensor | None,
    scale: float,
    top_k: int,
) -> torch.Tensor:
    """Σ_s w[:, s] · scale · Σ_e g_{s,e}(x) B_{s,e} A_{s,e} x, one stack after another.

    x (B, T, d_in); stacks: [{"A": (E, r, d_in), "B": (E, d_out, r), "W": (E, d_in)}]; row_weights (B, S) or None.
    """
    out = None
    for s, st in enumerate(stacks):
        xs = x.to(st["A"].dtype)
        gates = topk_gates(F.linear(xs, st["W"]), top_k)  # (B, T, E)
        h = torch.einsum("bti,eri->bter", xs, st["A"])  # (B, T, E, r)
        y = torch.einsum("bter,eor->bteo", h, st["B"])  # (B, T, E, d_out)
        delta = torch.einsum("bte,bteo->bto", gates, y) * scale  # (B, T, d_out)
        if row_weights is not None:
            delta = delta * row_weights[:, s].to(delta.dtype)[:, None, None]
        out = delta if out is None else out + delta
    return out


@contextmanager
def reference_forward(sm: StackedModel) -> Iterator[None]:
    """Swap every layer's fused frozen path for the loop; restores the fused forward on exit."""
    weights = sm.weights
    dom_idx = [sm.domains.index(d) for d, _ in sm.stacks]
    row_w = weights[:, dom_idx].to(sm.device) if weights is not None else None

    def forward(self: StackedLinear, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if not self.state.enabled:
            return out
        if self.reference_stacks:
            out = out + loop_delta(x, self.reference_stacks, row_w, self.config.scale, self.config.top_k).to(out.dtype)
        if self.active is not None:
            delta = self.active(x)
            if self.state.active_mult is not None:
                delta = delta * self.state.active_mult[:, None, None].to(delta.dtype)
            out = out + delta.to(out.dtype)
        return out

    for lay in sm.layers.values():
        lay.reference_stacks = [lay.frozen(i) for i in range(lay.num_stacks)]
        lay.forward = types.MethodType(forward, lay)
    try:
        yield
    finally:
        for lay in sm.layers.values():
            del lay.forward
            del lay.reference_stacks

"""Projections that read the same input compute their frozen stacks together: q/k/v of an attention block, gate/up
of an MLP.

    y_q, y_k, y_v = q_proj(x), k_proj(x), v_proj(x)      # what the model does
    # the first member to run computes the frozen deltas of all three from x in one pass; the others take theirs

A decode step is bound by the number of small ops, not by FLOPs (SmolLM2-135M, batch 1: ~20 aten ops per
projection for the fused frozen delta, each a few µs). One pass over the group shares the A-and-gate matmul, the
top-k, the softmax, the scatter and the two multiplies among its members: for a Llama block, 7 projections' worth of
gating becomes 4. Each member keeps its own B matmul, fused with its add (no zero blocks are multiplied).

The group is an inference-time optimisation: it runs only with autograd off and no null-space capture, and only
while the members really are called with one tensor. A member called with a different tensor than the one the
group computed for (an architecture whose siblings read different inputs) computes alone; after two such misses the
group turns itself off for good. Results are the same as each member alone up to float summation order.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from brainstacks.moe_lora import topk_gates

SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # names that share one input in a block
MAX_MISSES = 2
CACHE_SIZE = 8  # packed subsets kept per group


class SharedInputGroup:
    """Member layers (StackedLinear) of one block that read the same input, in call order."""

    def __init__(self, members: list) -> None:
        self.members = members
        self.enabled = True
        self.misses = 0
        self._x: torch.Tensor | None = None
        self._pending: list[torch.Tensor | None] = [None] * len(members)
        self._packs: OrderedDict[tuple, tuple[torch.Tensor, list[torch.Tensor], int]] = OrderedDict()
        for i, m in enumerate(members):
            m.group, m.group_index = self, i

    def usable(self, st) -> bool:
        return self.enabled and st.capture is None and not torch.is_grad_enabled()

    def take(self, i: int, x: torch.Tensor, st, small_call: bool) -> torch.Tensor | None:
        """Member i's frozen delta for x: from the pass another member ran on this very tensor, else a new pass for
        every member. None when the group is off (the member computes alone)."""
        if self._x is x and self._pending[i] is not None:
            d, self._pending[i] = self._pending[i], None
            if not any(p is not None for p in self._pending):
                self._x = None
            return d
        if self._x is not None and any(p is not None for p in self._pending):  # members left without theirs
            self.misses += 1
            self._x, self._pending = None, [None] * len(self.members)
            if self.misses >= MAX_MISSES:
                self.enabled = False
                self._packs.clear()
                return None
        deltas = self.compute(x, st, small_call)
        self._pending = [None if j == i else d for j, d in enumerate(deltas)]
        self._x = x if len(self.members) > 1 else None
        return deltas[i]

    def reset(self) -> None:
        """Forget pending results and packings (after a repack of any member)."""
        self._x, self._pending = None, [None] * len(self.members)
        self._packs.clear()

    def packed(self, sel: tuple[int, ...] | None, small_call: bool) -> tuple[torch.Tensor, int]:
        """The members' A-and-gate rows stacked, transposed for torch.mm: every member's A rows, then every member's
        gate rows, so one matmul gives all h, then all logits, member-major."""
        key = (sel, small_call)  # a repack of any member resets the group (StackedLinear.set_packed)
        hit = self._packs.get(key)
        if hit is None:
            parts = [m.packed(sel, small_call) for m in self.members]
            cfg = self.members[0].config
            n = parts[0][2] * cfg.experts * self.members[0].rank
            AW = torch.cat([p[0][:n] for p in parts] + [p[0][n:] for p in parts]).contiguous()
            hit = (AW.t(), parts[0][2])
            self._packs[key] = hit
            if len(self._packs) > CACHE_SIZE:
                self._packs.popitem(last=False)
        else:
            self._packs.move_to_end(key)
        return hit

    def compute(self, x: torch.Tensor, st, small_call: bool) -> list[torch.Tensor]:
        """Every member's gated h (StackedLinear.gated_h) for x, in one gating pass: (rows·T, m·E·r) each."""
        AWt, m = self.packed(st.selected, small_call)
        cfg = self.members[0].config
        E, r, k, G = cfg.experts, self.members[0].rank, cfg.top_k, len(self.members)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        hw = torch.mm(x2 if x2.dtype == AWt.dtype else x2.to(AWt.dtype), AWt)  # (N, G*m*E*r + G*m*E)
        h, logits = hw.split([G * m * E * r, G * m * E], dim=-1)
        gates = topk_gates(logits.view(*lead, G * m, E), k)  # (..., G*m, E)
        gates = gates * cfg.scale if st.mult is None else gates * st.mult_view(x, gates.dtype, G)
        hg = (h.view(*lead, G * m, E, r) * gates.unsqueeze(-1)).view(-1, G * m * E * r)
        return list(hg.split(m * E * r, dim=-1))  # each member applies its own B (with the add, in one addmm)


def build_groups(layers: dict) -> list[SharedInputGroup]:
    """Groups of SIBLINGS among the wrapped layers {path: StackedLinear} (each member of at most one group)."""
    groups = []
    for names in SIBLINGS:
        by_parent: dict[str, list] = {}
        for path, lay in layers.items():
            parent, _, name = path.rpartition(".")
            if name in names:
                by_parent.setdefault(parent, []).append((names.index(name), lay))
        for members in by_parent.values():
            if len(members) > 1:
                groups.append(SharedInputGroup([lay for _, lay in sorted(members, key=lambda t: t[0])]))
    return groups

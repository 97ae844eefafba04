"""StackedLinear: a base projection plus every frozen stack, computed in a constant number of tensor ops.

    y = base(x) + Σ_s w[b, dom(s)] · scale · Σ_{e ∈ top-k_s(x)} g_{s,e}(x) · B_{s,e} A_{s,e} x   (+ active stack)

The frozen stacks of a layer are packed once, when stacks are attached, in domain order:

    AW  (S·E·r + S·E, d_in)   rows: A of every (stack, expert) at rank r, then each stack's router rows W
    BT  (S·E·r, d_out)        B transposed: rows in the same (stack, expert, rank) order (`Bp` is its (d_out, S·E·r)
                              view), so selecting stacks gathers whole rows, in proportion to what is selected

so the fused forward is one matmul for all A's and all gate logits, one top-k + softmax on (..., S, E), one
multiply by the per-row, per-stack multipliers (routing weight × scale) and one matmul for all B's — whatever the
number of stacks. Experts outside the top-k get gate 0 and cost FLOPs but no extra op; with small ranks that is far
cheaper than gathering. When only some domains carry weight, the routing state selects their stacks; the packed
subset is gathered once and cached (LRU, SUBSET_CACHE_SIZE per layer), so a domain that is 0 in every row costs
nothing, and all-zero costs the base layer alone. Which stacks are selected and their multipliers are computed once
per forward by the StackedModel, not per layer.

Small calls on a CPU with native bf16 (AMX): oneDNN's bf16 matmul has a fixed cost that dominates tiny products
(measured on a 2-core AMX EPYC, one thread: (1, 576) x (576, 40) takes 27 µs in bf16 and 4 µs in fp32; at 256 rows
bf16 is 4-8x faster). So when stacks are packed in a half type on the CPU, the layer also keeps a float32 copy and a
call with at most SMALL_CALL_ROWS rows (decode steps) computes on that copy; larger calls (prefill, training) use the
half-type packing. The values are the same (every bf16 value is a float32 value); only the accumulation differs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from brainstacks.config import StackConfig
from brainstacks.dense_base import dense_forward, takes_dense
from brainstacks.errors import RoutingError
from brainstacks.moe_lora import MoELoRA, topk_gates

SUBSET_CACHE_SIZE = 8  # packed stack subsets kept per layer (each a copy of the selected stacks' weights)
SMALL_CALL_ROWS = 32  # rows (tokens in a call) up to which a half-type CPU packing computes on its float32 copy


def needs_small_copy(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether stacks packed in `dtype` on `device` get a float32 copy for small calls (see the module docstring)."""
    return dtype in (torch.bfloat16, torch.float16) and torch.device(device).type == "cpu"


@dataclass
class RoutingState:
    """Shared by every StackedLinear of one model; set by StackedModel before each forward.

    `selected`: indices into the packed stacks to compute (None: all); `mult`: (rows, m) routing weight × scale per
    selected stack, or None for ungated (every stack at weight 1). `active_mult`: (rows,) weight of the active stack's
    domain, or None for 1. `enabled=False` turns every stack off (the base-only pass).
    """

    enabled: bool = True
    selected: tuple[int, ...] | None = None
    mult: torch.Tensor | None = None
    active_mult: torch.Tensor | None = None
    capture: dict[str, list[torch.Tensor]] | None = None  # null-space collection: pooled frozen deltas per layer
    capture_mask: torch.Tensor | None = None  # (B, T) valid tokens for pooling
    views: dict = field(default_factory=dict)  # mult shaped for x of each rank and dtype; cleared with mult

    def set_mult(self, mult: torch.Tensor | None) -> None:
        self.mult = mult
        self.views = {}

    def mult_view(self, x: torch.Tensor, dtype: torch.dtype, repeat: int = 1) -> torch.Tensor:
        """`mult` as (rows, 1, m, 1) for x (rows, T, d) or (rows, m, 1) for x (rows, d), in `dtype`, its columns
        `repeat` times over (a SharedInputGroup's members): shaped once per routing, not in each layer."""
        key = (x.dim(), dtype, repeat)
        v = self.views.get(key)
        if v is None:
            mult = self.mult.repeat(1, repeat) if repeat > 1 else self.mult
            v = self.views[key] = _rows(mult, x).unsqueeze(-1).to(dtype)
        elif v.shape[0] not in (1, x.shape[0]):
            _rows(self.mult, x)  # raises the RoutingError naming both sizes
        return v


class StackedLinear(nn.Module):
    """Wraps one target projection (nn.Linear or bitsandbytes Linear4bit); the base layer is never modified."""

    def __init__(self, base_layer: nn.Module, path: str, config: StackConfig, state: RoutingState):
        super().__init__()
        self.base_layer = base_layer
        self.path = path
        self.config = config
        self.state = state
        self.in_features = int(base_layer.in_features)
        self.out_features = int(base_layer.out_features)
        self.active: MoELoRA | None = None
        self.num_stacks = 0
        self.rank = config.rank  # the packing rank: config.rank, or a larger imported LoRA's (brainstacks/lora.py)
        # Packed frozen stacks (buffers so .to(device) moves them; not persistent: bundles hold them).
        self.register_buffer("AW", None, persistent=False)
        self.register_buffer("BT", None, persistent=False)
        self.fp32_copy: tuple[torch.Tensor, torch.Tensor] | None = None  # float32 (AW, BT) for small calls, or None
        self.group = None  # the SharedInputGroup this projection belongs to (brainstacks/shared_input.py), if any
        self.group_index = 0
        self.dense: tuple | None = None  # (W^T, bias, every_call): a 4-bit base's dense copy (dense_base.py)
        self._subsets: OrderedDict[tuple, tuple] = OrderedDict()  # (selection, small_call) -> _packing()

    # ---- packing ---------------------------------------------------------------------------------------------
    def pack(self, stacks: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                                     tuple[torch.Tensor, torch.Tensor] | None]:
        """The packed (AW, BT, fp32_copy) of `stacks`, built to the side: the layer's live tensors are not touched, so
        a hot reload can build every layer first and swap them in only once all succeeded (set_packed). `fp32_copy` is
        the float32 copy for small calls, or None (see needs_small_copy)."""
        if not stacks:
            return None, None, None
        E, r = self.config.experts, stacks[0]["A"].shape[1]
        A = torch.cat([s["A"].reshape(E * r, self.in_features) for s in stacks])  # (S*E*r, d_in)
        W = torch.cat([s["W"] for s in stacks])  # (S*E, d_in)
        AW = torch.cat([A, W]).contiguous()
        BT = torch.cat([s["B"].permute(0, 2, 1).reshape(E * r, self.out_features) for s in stacks]).contiguous()
        fp32_copy = (AW.float(), BT.float()) if needs_small_copy(AW.dtype, AW.device) else None
        return AW, BT, fp32_copy

    def set_packed(self, AW: torch.Tensor | None, BT: torch.Tensor | None, num_stacks: int,
                   fp32_copy: tuple[torch.Tensor, torch.Tensor] | None = None, rank: int | None = None) -> None:
        """Install tensors from `pack` (at packing rank `rank`): pointer assignments only (cannot fail half-way)."""
        self._subsets = OrderedDict()
        self.AW, self.BT, self.fp32_copy = AW, BT, fp32_copy
        self.rank = rank or self.config.rank
        if self.group is not None:
            self.group.reset()
        self.num_stacks = num_stacks

    def frozen(self, i: int) -> dict[str, torch.Tensor]:
        """Stack i back as {"A", "B", "W"} (copies, in the storage dtype)."""
        E, r, S = self.config.experts, self.rank, self.num_stacks
        n = E * r
        A = self.AW[i * n : (i + 1) * n].reshape(E, r, self.in_features)
        W = self.AW[S * n + i * E : S * n + (i + 1) * E]
        B = self.BT[i * n : (i + 1) * n].reshape(E, r, self.out_features).permute(0, 2, 1)
        return {"A": A.clone(), "B": B.clone(memory_format=torch.contiguous_format), "W": W.clone()}

    def packed(self, sel: tuple[int, ...] | None, small_call: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(AW, Bp, m) of the selected stacks: the float32 copy when `small_call` and the layer keeps one."""
        AW, Bp, _, _, m = self._packing(sel, small_call)
        return AW, Bp, m

    def _packing(self, sel: tuple[int, ...] | None, small_call: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                           torch.Tensor, int]:
        """(AW, Bp, AW.T, Bp.T, m), cached per selection: the transposed views feed torch.mm / addmm directly, so a
        forward dispatches no transpose of its own."""
        S = self.num_stacks
        small_call = small_call and self.fp32_copy is not None
        key = (None if sel is None or len(sel) == S else sel, small_call)
        hit = self._subsets.get(key)
        if hit is None:
            AW, BT = self.fp32_copy if small_call else (self.AW, self.BT)
            if key[0] is not None:
                E, r = self.config.experts, self.rank
                a_rows, w_rows = stack_rows(sel, S, E, r, AW.device)
                AW, BT = AW[torch.cat([a_rows, w_rows])].contiguous(), BT[a_rows].contiguous()
            hit = (AW, BT.t(), AW.t(), BT, S if key[0] is None else len(sel))
            self._subsets[key] = hit
            if len(self._subsets) > SUBSET_CACHE_SIZE:
                self._subsets.popitem(last=False)
        else:
            self._subsets.move_to_end(key)
        return hit

    # ---- forward ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if takes_dense(x, self.dense):  # prefill / router pass on a 4-bit base (dense_base.py)
            out = dense_forward(x, self.dense)
        else:
            out = self.base_layer(x)
        st = self.state
        if not st.enabled:
            return out
        if self.num_stacks and (st.selected is None or st.selected):
            small_call = x.numel() <= SMALL_CALL_ROWS * x.shape[-1]
            hg = None
            if self.group is not None and self.group.usable(st):
                hg = self.group.take(self.group_index, x, st, small_call)
            if hg is None:
                hg = self.gated_h(x, st, small_call)
            BpT = self._packing(st.selected, small_call)[3]
            if st.capture is None and hg.dtype == out.dtype:  # the B matmul and the add in one op
                out = torch.addmm(out.reshape(-1, self.out_features), hg, BpT).view(out.shape)
            else:
                delta = torch.mm(hg, BpT).view(out.shape)
                if st.capture is not None:
                    self._capture(delta, st)
                out = out + delta.to(out.dtype)
        if self.active is not None:
            delta = self.active(x)  # (..., d_out) fp32
            if st.active_mult is not None:
                delta = delta * _rows(st.active_mult.unsqueeze(-1), x).to(delta.dtype)
            out = out + delta.to(out.dtype)
        return out

    def gated_h(self, x: torch.Tensor, st: RoutingState, small_call: bool) -> torch.Tensor:
        """The selected stacks' A x, each expert's rank block scaled by its top-k gate and the row's multiplier:
        (rows·T, m·E·r) in the compute dtype, ready for the B matmul."""
        _, _, AWt, _, m = self._packing(st.selected, small_call)
        E, r, k = self.config.experts, self.rank, self.config.top_k
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        hw = torch.mm(x2 if x2.dtype == AWt.dtype else x2.to(AWt.dtype), AWt)  # (N, m*E*r + m*E)
        h, logits = hw.split([m * E * r, m * E], dim=-1)
        gates = topk_gates(logits.view(*lead, m, E), k)  # (..., m, E)
        gates = gates * self.config.scale if st.mult is None else gates * st.mult_view(x, gates.dtype)
        return (h.view(*lead, m, E, r) * gates.unsqueeze(-1)).view(-1, m * E * r)

    def _capture(self, delta: torch.Tensor, st: RoutingState) -> None:
        d = delta.float()
        if d.dim() == 3 and st.capture_mask is not None:
            m = st.capture_mask.to(d.dtype).unsqueeze(-1)  # (B, T, 1)
            pooled = (d * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, d_out)
        else:
            pooled = d.reshape(-1, d.shape[-1]) if d.dim() < 3 else d.mean(1)
        st.capture.setdefault(self.path, []).append(pooled.detach().cpu())

    def extra_repr(self) -> str:
        return f"{self.path}: {self.in_features}->{self.out_features}, frozen_stacks={self.num_stacks}"


def stack_rows(sel: tuple[int, ...], S: int, E: int, r: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of stacks `sel` in a packed AW of S stacks: their A rows (also their BT rows) and their gate rows W."""
    idx = torch.tensor(sel, device=device)
    a_rows = (idx[:, None] * (E * r) + torch.arange(E * r, device=device)).flatten()
    w_rows = S * E * r + (idx[:, None] * E + torch.arange(E, device=device)).flatten()
    return a_rows, w_rows


def _rows(mult: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast per-row multipliers (rows, ...) against x (rows, T, d) or (rows, d)."""
    rows = mult.shape[0]
    if x.dim() >= 3:
        if rows not in (1, x.shape[0]):
            raise RoutingError(f"routing weights have {rows} rows but the batch has {x.shape[0]} sequences")
        return mult.reshape(rows, *([1] * (x.dim() - 2)), *mult.shape[1:])
    if rows not in (1, x.shape[0]):
        raise RoutingError(f"routing weights have {rows} rows but the input has {x.shape[0]} rows")
    return mult

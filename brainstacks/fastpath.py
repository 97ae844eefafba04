"""The fused decoder: the served forward (prefill and decode steps) as a few dense tensor ops per layer.

The eager path runs transformers' modules: bitsandbytes' CPU 4-bit kernel handles each row of a step alone, the LM
head is read in float32, the cache grows by `cat`, and about 2,000 small ops are dispatched per step. Here, built
once from the loaded model (and rebuilt for new stacks at a hot reload, off the model thread):

- per layer, q/k/v are one merged projection and gate/up another, each a dense copy of the 4-bit base weight
  (bitsandbytes' own dequantization, brainstacks/quant.py) in the fastest kernel the device has
  (LINEAR_KERNELS): oneDNN's prepacked bf16 on a CPU with AMX or AVX512-BF16, float32 on other CPUs, bf16 on CUDA;
- the frozen stacks of a projection group (q/k/v, o, gate/up, down) are one float32 product for every A and every
  gate logit, one top-k, one multiply by the per-row multipliers, and one `addmm` (block-diagonal B) into the merged
  output: the same math as StackedLinear (brainstacks/layer.py), in a constant number of ops per group;
- the routing weights are one (B, D) tensor turned into the selected stacks and their multipliers once per batch
  change (`routing`), not per step, with no host sync in a step;
- the KV cache is brainstacks/kvcache.py's SlotKV: preallocated, written in place, rows unpadded.

Families: llama, mistral, qwen2 (q/k/v biases), qwen3 (q/k norms). Others (gemma's scaled embeddings, soft-capping
and (1 + w) norms) are refused by `unsupported_reason`, and the server falls back to the eager path with a warning.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from brainstacks.kvcache import SlotKV
from brainstacks.layer import stack_rows
from brainstacks.moe_lora import topk_gates

log = logging.getLogger("brainstacks.fastpath")

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
LINEAR_KERNELS = ("mkldnn-bf16", "fp32", "bf16")
PACK_CACHE_SIZE = 8  # stack selections kept packed (each a gathered copy of the selected stacks' weights)
GROUPS = (("qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")), ("o", ("self_attn.o_proj",)),
          ("gu", ("mlp.gate_proj", "mlp.up_proj")), ("down", ("mlp.down_proj",)))


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the fused decoder cannot serve `model` exactly, or None when it can."""
    cfg = model.config
    mt = getattr(cfg, "model_type", None)
    if mt not in FAMILIES:
        return f"model family {mt!r} (the fused decoder serves {', '.join(FAMILIES)})"
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        return f"activation {act!r}"
    rope = getattr(cfg, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) not in ("default", "linear",
                                                                                           "llama3", None):
        return f"rope type {rope.get('rope_type')!r}"
    return None


def pick_kernel(device: torch.device) -> str:
    """The linear kernel for `device` (see the module docstring)."""
    if device.type == "cuda":
        return "bf16"
    from brainstacks.dtypes import cpu_has_fast_bf16

    if cpu_has_fast_bf16():
        try:
            w = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(32, 32, dtype=torch.bfloat16), None)
            torch.ops.mkldnn._linear_pointwise(torch.zeros(1, 32, dtype=torch.bfloat16), w, None, "none", [], "")
            return "mkldnn-bf16"
        except (RuntimeError, AttributeError) as e:  # a torch built without oneDNN, or a CPU it refuses
            log.warning("oneDNN bf16 linear unavailable (%s); the fused decoder uses float32", e)
    return "fp32"


class DenseLinear:
    """y = x Wᵀ (+ b) in float32 out, with W held in `kernel`'s layout. x (N, d_in) float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str):
        self.kernel = kernel
        self.d_out, self.d_in = weight.shape
        self.bias = None if bias is None else bias.detach().float()
        if kernel == "mkldnn-bf16":
            self.w = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16).contiguous(), None)
        elif kernel == "bf16":
            self.w = weight.detach().to(torch.bfloat16).contiguous()
        else:
            self.w = weight.detach().float().t().contiguous()  # (d_in, d_out): torch.mm reads it row-major
        self.nbytes = self.w.numel() * self.w.element_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "fp32":
            return torch.mm(x, self.w) if self.bias is None else torch.addmm(self.bias, x, self.w)
        if self.kernel == "mkldnn-bf16":
            y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.w, None, "none", [], "").float()
        else:
            y = F.linear(x.to(torch.bfloat16), self.w).float()
        return y if self.bias is None else y + self.bias


def base_weight(mod: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A projection's float32 (d_out, d_in) weight and bias: a StackedLinear's base layer, 4-bit or dense."""
    from brainstacks.quant import dequantize, is_4bit

    base = getattr(mod, "base_layer", mod)
    w = dequantize(base) if is_4bit(base) else base.weight.detach().float()
    b = getattr(base, "bias", None)
    return w, (None if b is None else b.detach().float())


@dataclass
class GroupPack:
    """The selected stacks of one projection group: AWt (d_in, P·m·E·r + P·m·E) and block-diagonal Bbd
    (P·m·E·r, Σ d_out), float32."""

    AWt: torch.Tensor
    Bbd: torch.Tensor
    members: int
    m: int


def pack_group(members: list[tuple[torch.Tensor, torch.Tensor]], sel: tuple[int, ...], S: int, E: int, r: int
               ) -> GroupPack:
    """Gather stacks `sel` of each member's packed (AW, BT) (StackedLinear's layout) into one GroupPack."""
    dev = members[0][0].device
    a_rows, w_rows = stack_rows(sel, S, E, r, dev)
    A = [AW.index_select(0, a_rows).float() for AW, _ in members]
    W = [AW.index_select(0, w_rows).float() for AW, _ in members]
    Bs = [BT.index_select(0, a_rows).float() for _, BT in members]
    n = len(sel) * E * r
    Bbd = torch.zeros(n * len(members), sum(b.shape[1] for b in Bs), device=dev)
    col = 0
    for p, b in enumerate(Bs):
        Bbd[p * n : (p + 1) * n, col : col + b.shape[1]] = b
        col += b.shape[1]
    return GroupPack(torch.cat(A + W).t().contiguous(), Bbd, len(members), len(sel))


@dataclass
class Routing:
    """What a batch's (B, D) weights mean to the layers: the selected stacks (indices into the packed order) and
    their (B, m) multipliers (routing weight × scale), on the device. Built once per batch change."""

    selected: tuple[int, ...]
    mult: torch.Tensor | None  # (B, m) float32, None when no stack is selected


class FusedDecoder:
    """Prefill and decode for one model (with its StackedModel, if any) over SlotKV caches."""

    def __init__(self, model: nn.Module, stacked=None, kernel: str | None = None):
        why = unsupported_reason(model)
        if why is not None:
            raise NotImplementedError(f"the fused decoder does not serve this model: {why}")
        self.model, self.stacked = model, stacked
        cfg = model.config
        self.device = next(model.parameters()).device
        self.kernel = kernel or pick_kernel(self.device)
        inner = model.model
        self.layers = []
        self.nbytes = 0
        for i, lay in enumerate(inner.layers):
            at = lay.self_attn
            w = [base_weight(getattr(at, n)) for n in ("q_proj", "k_proj", "v_proj")]
            bias = None if all(b is None for _, b in w) else torch.cat(
                [b if b is not None else torch.zeros(x.shape[0]) for x, b in w])
            qkv = DenseLinear(torch.cat([x for x, _ in w]), bias, self.kernel)
            o = DenseLinear(*base_weight(at.o_proj), self.kernel)
            g, u = base_weight(lay.mlp.gate_proj), base_weight(lay.mlp.up_proj)
            gu_bias = None if g[1] is None else torch.cat([g[1], u[1]])
            gu = DenseLinear(torch.cat([g[0], u[0]]), gu_bias, self.kernel)
            down = DenseLinear(*base_weight(lay.mlp.down_proj), self.kernel)
            self.nbytes += qkv.nbytes + o.nbytes + gu.nbytes + down.nbytes
            qn = getattr(at, "q_norm", None)
            kn = getattr(at, "k_norm", None)
            types = getattr(cfg, "layer_types", None)
            window = getattr(cfg, "sliding_window", None)
            sliding = window is not None and (types[i] == "sliding_attention" if types else
                                              getattr(cfg, "use_sliding_window", True))
            self.layers.append({
                "ln1": (lay.input_layernorm.weight.detach().float(), _eps(lay.input_layernorm)),
                "ln2": (lay.post_attention_layernorm.weight.detach().float(), _eps(lay.post_attention_layernorm)),
                "qkv": qkv, "o": o, "gu": gu, "down": down,
                "qn": None if qn is None else (qn.weight.detach().float(), _eps(qn)),
                "kn": None if kn is None else (kn.weight.detach().float(), _eps(kn)),
                "window": int(window) if sliding else None,
            })
        self.embed = inner.embed_tokens
        self.norm = (inner.norm.weight.detach().float(), _eps(inner.norm))
        self.head = DenseLinear(*base_weight(model.lm_head), self.kernel)
        self.nbytes += self.head.nbytes
        self.Hq = int(cfg.num_attention_heads)
        self.Hkv = int(getattr(cfg, "num_key_value_heads", None) or self.Hq)
        self.Dh = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.Hq)
        self.inter = int(cfg.intermediate_size)
        self.rotary = inner.rotary_emb
        self._cos = self._sin = None
        self._packs: OrderedDict[tuple, list[dict[str, GroupPack]]] = OrderedDict()
        self._source: list[dict[str, list]] = []
        self._num_stacks = 0
        self.refresh_stacks()

    # ---- stacks --------------------------------------------------------------------------------------------------
    def refresh_stacks(self) -> None:
        """Re-read the stacked model's packed frozen stacks (after StackedModel.commit): the selections packed for
        the old stacks are dropped."""
        sm = self.stacked
        self._packs = OrderedDict()
        self._source = []
        self._num_stacks = 0 if sm is None else len(sm.stacks)
        self._rank = 0 if sm is None else sm.pack_rank  # the layers' packing rank (brainstacks/lora.py)
        if not self._num_stacks:
            return
        for lay in self.model.model.layers:
            per = {}
            for name, paths in GROUPS:
                mods = [lay.get_submodule(p) for p in paths]
                per[name] = [m.fp32_copy if m.fp32_copy is not None else (m.AW, m.BT) for m in mods]
            self._source.append(per)

    def _packs_for(self, sel: tuple[int, ...]) -> list[dict[str, GroupPack]]:
        hit = self._packs.get(sel)
        if hit is None:
            c = self.stacked.config
            hit = [{name: pack_group(members, sel, self._num_stacks, c.experts, self._rank)
                    for name, members in per.items()} for per in self._source]
            self._packs[sel] = hit
            while len(self._packs) > PACK_CACHE_SIZE:
                self._packs.popitem(last=False)
        else:
            self._packs.move_to_end(sel)
        return hit

    def routing(self, weights: torch.Tensor | None) -> Routing:
        """The selected stacks and (B, m) multipliers of weights (B, D) in the stacked model's domain order (host
        tensor; None or no stacks: base only). Packs the selection now, so a step never does."""
        sm = self.stacked
        if weights is None or sm is None or not self._num_stacks or weights.numel() == 0:
            return Routing((), None)
        w = weights.detach().float().cpu()
        doms = sm.domains
        live = (w != 0).any(0)
        cols = [doms.index(d) for d, _ in sm.stacks]
        sel = tuple(i for i, c in enumerate(cols) if live[c])
        if not sel:
            return Routing((), None)
        self._packs_for(sel)
        mult = (w[:, [cols[i] for i in sel]] * sm.config.scale).to(self.device)
        return Routing(sel, mult)

    # ---- forward -------------------------------------------------------------------------------------------------
    def new_cache(self, rows: int, capacity: int) -> SlotKV:
        return SlotKV(len(self.layers), self.Hkv, self.Dh, rows=rows, capacity=capacity, dtype=torch.float32,
                      device=self.device)

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], routing: Routing, capacity: int = 0) -> tuple[SlotKV, torch.Tensor]:
        """One right-padded forward over the prompts: their cache (rows in prompt order) and last-position logits
        (rows, V) float32. `capacity`: columns to preallocate per row (e.g. prompt + max_tokens)."""
        k, W = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(k, W, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        kv = self.new_cache(k, max(capacity, W + 1))
        pos = torch.arange(W, device=self.device)
        cos, sin = self._rope(W)
        cos, sin = cos[pos].repeat(k, 1).unsqueeze(1), sin[pos].repeat(k, 1).unsqueeze(1)  # (k·W, 1, Dh)
        valid = pos[None, :] < lens[:, None]  # (k, W) keys that exist
        causal = pos[None, :] <= pos[:, None]  # (W, W) query i sees key j <= i
        masks = {}
        mult = None if routing.mult is None else routing.mult.repeat_interleave(W, dim=0)  # (k·W, m)
        x = self.embed(ids.to(self.device)).float().reshape(k * W, -1)
        for li, L in enumerate(self.layers):
            win = L["window"]
            if win not in masks:
                m = causal if win is None else causal & (pos[:, None] - pos[None, :] < win)
                masks[win] = (m[None] & valid[:, None, :]).unsqueeze(1)  # (k, 1, W, W)
            q, kk, v = self._qkv(li, L, x, cos, sin, routing, mult)
            q = q.view(k, W, self.Hq, self.Dh).transpose(1, 2)
            kk = kk.view(k, W, self.Hkv, self.Dh).transpose(1, 2)
            v = v.view(k, W, self.Hkv, self.Dh).transpose(1, 2)
            kv.write_prefill(li, kk, v)
            a = F.scaled_dot_product_attention(q, kk, v, attn_mask=masks[win], enable_gqa=self.Hq != self.Hkv)
            x = self._rest(li, L, x, a.transpose(1, 2).reshape(k * W, -1), routing, mult)
        last = x.view(k, W, -1)[torch.arange(k, device=self.device), lens - 1]  # (k, d)
        kv.set_lengths([len(p) for p in prompts])
        return kv, self._logits(last)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, kv: SlotKV, routing: Routing) -> torch.Tensor:
        """One step: tokens (B,) each at its row's next position; writes one column per row; logits (B, V)."""
        B = len(kv)
        kv.reserve(kv.width + 1)
        width = kv.width + 1
        pos = kv.lengths  # (B,) the new token's position = the row's length
        cos, sin = self._rope(width)
        cos, sin = cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)  # (B, 1, Dh)
        cols = torch.arange(width, device=self.device)
        masks = {}
        x = self.embed(tokens.to(self.device)).float()  # (B, d)
        for li, L in enumerate(self.layers):
            win = L["window"]
            if win not in masks:
                m = cols[None, :] <= pos[:, None]
                if win is not None:
                    m = m & (pos[:, None] - cols[None, :] < win)
                masks[win] = m[:, None, None, :]  # (B, 1, 1, width)
            q, kk, v = self._qkv(li, L, x, cos, sin, routing, routing.mult)
            kv.write_step(li, kk.view(B, self.Hkv, self.Dh), v.view(B, self.Hkv, self.Dh))
            K, V = kv.view(li, width)
            a = F.scaled_dot_product_attention(q.view(B, self.Hq, 1, self.Dh), K, V, attn_mask=masks[win],
                                               enable_gqa=self.Hq != self.Hkv)
            x = self._rest(li, L, x, a.reshape(B, -1), routing, routing.mult)
        kv.advance()
        return self._logits(x)

    # ---- pieces --------------------------------------------------------------------------------------------------
    def _delta(self, li: int, group: str, out: torch.Tensor, x: torch.Tensor, routing: Routing,
               mult: torch.Tensor | None) -> torch.Tensor:
        """out + the selected stacks' delta for one projection group (out (N, Σ d_out) from the base)."""
        if not routing.selected:
            return out
        g = self._packs_for(routing.selected)[li][group]
        c = self.stacked.config
        E, r, P, m = c.experts, self._rank, g.members, g.m
        N = x.shape[0]
        hw = torch.mm(x, g.AWt)  # (N, P·m·E·r + P·m·E): every A and every gate logit
        h, logits = hw.split([P * m * E * r, P * m * E], dim=1)
        gates = topk_gates(logits.reshape(N, P, m, E), c.top_k) * mult.view(N, 1, m, 1)
        hg = (h.reshape(N, P, m, E, r) * gates.unsqueeze(-1)).reshape(N, -1)
        return torch.addmm(out, hg, g.Bbd)

    def _qkv(self, li, L, x, cos, sin, routing, mult):
        h = F.rms_norm(x, (x.shape[-1],), *L["ln1"])
        out = self._delta(li, "qkv", L["qkv"](h), h, routing, mult)  # (N, (Hq + 2 Hkv) Dh)
        N, Dh = x.shape[0], self.Dh
        nq, nk = self.Hq * Dh, self.Hkv * Dh
        q, k, v = out.split([nq, nk, nk], dim=1)
        q, k = q.reshape(N, self.Hq, Dh), k.reshape(N, self.Hkv, Dh)
        if L["qn"] is not None:
            q, k = F.rms_norm(q, (Dh,), *L["qn"]), F.rms_norm(k, (Dh,), *L["kn"])
        return _rope(q, cos, sin), _rope(k, cos, sin), v

    def _rest(self, li, L, x, a, routing, mult):
        x = x + self._delta(li, "o", L["o"](a), a, routing, mult)
        h = F.rms_norm(x, (x.shape[-1],), *L["ln2"])
        gu = self._delta(li, "gu", L["gu"](h), h, routing, mult)
        g, u = gu.split([self.inter, self.inter], dim=1)
        act = F.silu(g) * u
        return x + self._delta(li, "down", L["down"](act), act, routing, mult)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.rms_norm(x, (x.shape[-1],), *self.norm))

    def _rope(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and the sign-folded sin tables (positions, Dh) covering n positions, from the model's own rotary
        module (its scaling included); grown by doubling."""
        if self._cos is None or self._cos.shape[0] < n:
            size = max(n, 256, 2 * (0 if self._cos is None else self._cos.shape[0]))
            pos = torch.arange(size, device=self.device)[None]
            cos, sin = self.rotary(torch.zeros(1, device=self.device, dtype=torch.float32), pos)
            cos, sin = cos[0].float(), sin[0].float()
            half = self.Dh // 2
            self._cos, self._sin = cos, torch.cat([-sin[:, :half], sin[:, half:]], dim=1)
        return self._cos, self._sin


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin for x (N, H, Dh), with rotate_half's sign folded into the sin table."""
    N, H, Dh = x.shape
    swapped = x.view(N, H, 2, Dh // 2).flip(2).reshape(N, H, Dh)
    return torch.addcmul(x * cos, swapped, sin)


def _eps(norm: nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))

"""The trainable MoE-LoRA delta on one projection (docs/DESIGN.md §2), and the top-k gate shared with the frozen path.

    δ(x) = scale · Σ_{e ∈ top-k(x)} g_e(x) · B_e A_e x,     scale = alpha / sqrt(r)  (rsLoRA; alpha / r otherwise)
    logits(x) = W_r x + softplus(W_n x) · ε,  ε ~ N(0, I) in training only
    g(x) = softmax over the top-k logits (the others are -inf, so their gate is exactly 0)

Initialisation follows the paper: A Kaiming-uniform, B zeros (so a new stack starts as an exact no-op),
W_r ~ N(0, 0.02), W_n = 0.

Load balancing: `N · Σ_e P(e) f(e)` with P(e) the mean full-softmax probability of expert e (differentiable) and
f(e) the fraction of top-k slots routed to e (a count). The paper's code took P from detached logits, so its loss had
no gradient; here P keeps the graph, so the gate actually learns to balance.

With a null space V (d_out, K) the output is projected onto its orthogonal complement: δ ← δ − (δ V) Vᵀ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from brainstacks.config import StackConfig
from brainstacks.errors import StackFormatError


def stack_tensor_shapes(targets: dict[str, tuple[int, int]], config: StackConfig) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of one stack over projections {path: (d_out, d_in)}: the adapter's parameters
    A, B and W of each projection, named f"{path}.A" etc. on disk and in memory."""
    E, r = config.experts, config.rank
    out: dict[str, tuple[int, ...]] = {}
    for path, (d_out, d_in) in targets.items():
        out[f"{path}.A"], out[f"{path}.B"], out[f"{path}.W"] = (E, r, d_in), (E, d_out, r), (E, d_in)
    return out


def stack_tensor_problem(tensors: dict[str, torch.Tensor], want: dict[str, tuple[int, ...]]) -> str | None:
    """The first way one stack's tensors differ from `want` (stack_tensor_shapes), or None: a missing tensor, one no
    target expects, a wrong shape, a non-float dtype. The one check of both boundaries: bundle files
    (brainstacks.bundle.load_stack) and StackedModel.prepare/install, each naming its own context."""
    missing = sorted(set(want) - set(tensors))
    if missing:
        return f"missing tensor {missing[0]} ({len(missing)} missing)"
    extra = sorted(set(tensors) - set(want))
    if extra:
        return f"unexpected tensor {extra[0]} (not a wrapped target of this base)"
    for name, shape in want.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            return f"shape mismatch for {name}: has {tuple(t.shape)}, the base needs {shape}"
        if not t.is_floating_point():
            return f"{name} has non-float dtype {t.dtype}"
    return None


def topk_gates(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Gate weights from router logits (..., E): softmax over the top-k entries, exact zeros elsewhere."""
    top = logits.topk(k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, top.indices, torch.softmax(top.values, dim=-1))


def load_balance_loss(logits: torch.Tensor, k: int) -> torch.Tensor:
    """N · Σ_e P(e) f(e) over all tokens of `logits` (..., E). Differentiable through P."""
    flat = logits.reshape(-1, logits.shape[-1])  # (N, E)
    n_exp = flat.shape[-1]
    probs = torch.softmax(flat.float(), dim=-1).mean(0)  # (E,) P(e), keeps the graph
    with torch.no_grad():
        chosen = torch.zeros_like(flat, dtype=torch.float32).scatter(-1, flat.topk(k, dim=-1).indices, 1.0)
        frac = chosen.mean(0) / k  # (E,) f(e), sums to 1
    return n_exp * (probs * frac).sum()


class MoELoRA(nn.Module):
    """A trainable MoE-LoRA delta for one projection d_in → d_out (fp32 parameters)."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        config: StackConfig,
        nullspace: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.config = config
        self.d_in, self.d_out = d_in, d_out
        E, r = config.experts, config.rank
        self.A = nn.Parameter(torch.empty(E, r, d_in, device=device))  # (E, r, d_in)
        self.B = nn.Parameter(torch.zeros(E, d_out, r, device=device))  # (E, d_out, r)
        self.W = nn.Parameter(torch.empty(E, d_in, device=device))  # (E, d_in) router W_r
        self.W_noise = nn.Parameter(torch.zeros(E, d_in, device=device))  # (E, d_in) noise W_n (training only)
        for e in range(E):  # per expert, as nn.Linear(d_in, r) would initialise it
            nn.init.kaiming_uniform_(self.A.data[e], a=math.sqrt(5))
        nn.init.normal_(self.W, std=0.02)
        if nullspace is not None:
            if nullspace.shape[0] != d_out:
                raise StackFormatError(f"null space has {nullspace.shape[0]} rows, projection has d_out={d_out}")
            nullspace = nullspace.to(device=device, dtype=torch.float32)
        self.register_buffer("V", nullspace, persistent=False)  # (d_out, K) or None
        self.aux: torch.Tensor | None = None  # load-balancing loss of the last forward

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.linear(x, self.W)  # (..., E)
        if self.training:
            noise_std = F.softplus(F.linear(x, self.W_noise))
            logits = logits + noise_std * torch.randn_like(logits)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_in) → δ (..., d_out) in the parameters' dtype (fp32)."""
        x = x.to(self.A.dtype)
        E, r = self.config.experts, self.config.rank
        logits = self.logits(x)  # (..., E)
        self.aux = load_balance_loss(logits, self.config.top_k) if self.training else None
        gates = topk_gates(logits, self.config.top_k)  # (..., E)
        h = F.linear(x, self.A.reshape(E * r, self.d_in))  # (..., E*r)
        h = h.unflatten(-1, (E, r)) * gates.unsqueeze(-1)  # (..., E, r)
        B_cat = self.B.permute(1, 0, 2).reshape(self.d_out, E * r)  # (d_out, E*r)
        delta = F.linear(h.flatten(-2), B_cat) * self.config.scale  # (..., d_out)
        if self.V is not None:
            delta = delta - (delta @ self.V) @ self.V.T
        return delta

    @torch.no_grad()
    def frozen_tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """A, B, W for freezing: the null space folded into B (B_e ← B_e − V Vᵀ B_e, in fp32), then cast to `dtype`."""
        B = self.B.float()
        if self.V is not None:
            V = self.V.float()
            B = B - V @ (V.T @ B)  # (E, d_out, r): every expert's output columns leave span(V)
        return {"A": self.A.detach().to(dtype).clone(), "B": B.to(dtype).contiguous(),
                "W": self.W.detach().to(dtype).clone()}

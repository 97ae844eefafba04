"""The sigmoid meta-router (docs/DESIGN.md §2): prompt → an independent weight in [0, 1] per domain.

Features come from one base-only pass (every stack off) over the raw prompt truncated to `router_tokens`:
    f_t = mid_weight · h_t[layer L/2] + last_weight · h_t[final]                       (B, T, d)
The module:
    z = LayerNorm(Linear(d → H)(f))                                                    (B, T, H)
    g = attention-pool of z with one learned global query                              (B, H)
    c_d = attention-pool of z with one learned query per domain                        (B, D, H)
    u_d = MLP([g, c_d]): 2H → mlp_hidden → H (GELU, dropout, LayerNorm)                (B, D, H)
    logit_d = head(u_d) / exp(τ),  τ clamped so the temperature stays in [0.3, 3]       (B, D)
    p_d = sigmoid(logit_d)   — independent per domain, so several domains can be fully on at once.
Serving policy (`apply_policy`): p ≤ min_weight → 0 (domain skipped entirely), then per-domain floors.
`router_features` is the one code path for features in training and serving; `router_inputs` the one for turning
prompts into the router's token batch, and `route_prompts` the one from prompts to serving weights:

    w = route_prompts(stacked, tokenizer, router, ["What is 2 + 2?", [1, 15, 27]])   # (N, D) in router.domains order
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from brainstacks.config import RouterConfig
from brainstacks.errors import RoutingError
from brainstacks.stacks import StackedModel
from brainstacks.text import encode_prompt, pad_batch


def _backbone(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (saves the vocab projection); the full model when not found."""
    inner = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    return inner if isinstance(inner, nn.Module) else model


@torch.no_grad()
def router_features(
    sm: StackedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: RouterConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Base-only hidden-state features of the first `router_tokens` tokens: (B, T', d) fp32 and a (B, T') bool mask."""
    cfg = config or RouterConfig()
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    # Truncate each row to its first router_tokens real tokens; works for right and left padding alike.
    keep = attention_mask.bool() & (attention_mask.long().cumsum(-1) <= cfg.router_tokens)
    cols = keep.any(0)
    ids, mask = input_ids[:, cols], keep[:, cols]
    dev = sm.device
    with sm.base_only():
        out = _backbone(sm.model)(input_ids=ids.to(dev), attention_mask=mask.long().to(dev), output_hidden_states=True)
    hs = out.hidden_states  # (L+1) × (B, T', d): embeddings, then each layer; the last is after the final norm
    n_layers = len(hs) - 1
    feats = cfg.mid_weight * hs[max(1, n_layers // 2)].float() + cfg.last_weight * hs[-1].float()
    return feats, mask.to(feats.device)


def _attend(z: torch.Tensor, queries: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product pooling of z (B, T, H) by queries (Q, H) → (B, Q, H), ignoring masked tokens."""
    scores = torch.einsum("bth,qh->bqt", z, queries) / math.sqrt(z.shape[-1])  # (B, Q, T)
    scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    return torch.einsum("bqt,bth->bqh", torch.softmax(scores, dim=-1).nan_to_num(0.0), z)


class MetaRouter(nn.Module):
    """Scores each domain independently from base-only prompt features."""

    def __init__(self, d_model: int, domains: list[str], config: RouterConfig | None = None):
        super().__init__()
        if not domains:
            raise RoutingError("a router needs at least one domain")
        self.config = cfg = config or RouterConfig()
        self.d_model = d_model
        self.domains = list(domains)
        H = cfg.hidden
        self.proj = nn.Linear(d_model, H)
        self.norm = nn.LayerNorm(H)
        self.global_query = nn.Parameter(torch.randn(H) * cfg.query_init_std)
        self.domain_queries = nn.Parameter(torch.randn(len(domains), H) * cfg.query_init_std)
        self.mlp = nn.Sequential(
            nn.Linear(2 * H, cfg.mlp_hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.mlp_hidden, H), nn.GELU(), nn.Dropout(cfg.dropout), nn.LayerNorm(H),
        )
        self.head = nn.Linear(H, 1)  # shared across domains
        self.log_tau = nn.Parameter(torch.zeros(()))

    def temperature(self) -> torch.Tensor:
        lo, hi = math.log(self.config.min_temperature), math.log(self.config.max_temperature)
        return self.log_tau.clamp(lo, hi).exp()

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """feats (B, T, d), mask (B, T) → logits (B, D), already divided by the temperature."""
        z = self.norm(self.proj(feats.to(self.proj.weight.dtype)))  # (B, T, H)
        mask = mask.bool()
        g = _attend(z, self.global_query[None], mask)  # (B, 1, H)
        c = _attend(z, self.domain_queries, mask)  # (B, D, H)
        u = self.mlp(torch.cat([g.expand_as(c), c], dim=-1))  # (B, D, H)
        return self.head(u).squeeze(-1) / self.temperature()

    def probs(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(feats, mask))

    def describe(self) -> dict:
        """What router.json records: the domains in order, sizes and the config."""
        return {"domains": self.domains, "d_model": self.d_model, "config": self.config.to_dict()}


def apply_policy(probs: torch.Tensor, domains: list[str], min_weight: float, floors: dict[str, float] | None = None
                 ) -> torch.Tensor:
    """Serving weights from router probabilities (B, D): ≤ min_weight → 0, then per-domain floors."""
    w = torch.where(probs > min_weight, probs, torch.zeros_like(probs))
    for name, floor in (floors or {}).items():
        if name not in domains:
            raise RoutingError(f"floor for unknown domain {name!r}; domains: {domains}")
        i = domains.index(name)
        w[:, i] = w[:, i].clamp_min(float(floor))
    return w


@torch.no_grad()
def route(sm: StackedModel, router: MetaRouter, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
          apply: bool = True) -> torch.Tensor:
    """Router weights (B, D) in `router.domains` order for a batch of prompts (policy applied unless apply=False)."""
    feats, mask = router_features(sm, input_ids, attention_mask, router.config)
    router.eval()
    p = router.probs(feats.to(next(router.parameters()).device), mask.to(next(router.parameters()).device))
    return apply_policy(p, router.domains, router.config.min_weight, router.config.floors) if apply else p


def weights_for_model(sm: StackedModel, router_domains: list[str], w: torch.Tensor) -> torch.Tensor:
    """Reorder router weights (B, D_router) into `sm.domains` order; domains the router doesn't score get 0."""
    out = torch.zeros(w.shape[0], len(sm.domains), dtype=w.dtype)
    for j, name in enumerate(router_domains):
        if name in sm.domains:
            out[:, sm.domains.index(name)] = w[:, j].cpu()
    return out


def router_inputs(tokenizer, prompts: Sequence[str | Sequence[int]], router_tokens: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """What the router reads for each prompt: its ids (text through `encode_prompt`, token ids as they are), cut to the
    first `router_tokens`, right-padded: (input_ids, attention_mask), both (B, T) long. The pad value is masked out."""
    ids = [(encode_prompt(tokenizer, p) if isinstance(p, str) else list(p))[:router_tokens] for p in prompts]
    return pad_batch(ids, 0)


@torch.no_grad()
def route_prompts(sm: StackedModel, tokenizer, router: MetaRouter, prompts: Sequence[str | Sequence[int]],
                  batch_size: int = 16, apply: bool = True) -> torch.Tensor:
    """Serving weights (N, D) float32 on CPU, in `router.domains` order, for prompts given as text or token ids: the one
    path from prompts to router weights (encode, truncate to router_tokens, pad, base-only pass, router, then the
    policy unless apply=False, which returns the raw probabilities)."""
    out = torch.zeros(len(prompts), len(router.domains))
    for s in range(0, len(prompts), batch_size):
        ids, mask = router_inputs(tokenizer, prompts[s : s + batch_size], router.config.router_tokens)
        out[s : s + ids.shape[0]] = route(sm, router, ids, mask, apply=apply).float().cpu()
    return out

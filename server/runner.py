"""The model side of the engine: one object that owns the model, its tokenizer and (with a bundle) the stacks and
router.

The engine (server/engine.py) never touches transformers or brainstacks directly: it calls

    runner.forward(input_ids, attention_mask, position_ids, cache, weights)   -> last-position logits (B, V)
    runner.route(prompts)                                                      -> [{domain: w}, ...]
    runner.new_cache()                                                         -> an empty KV cache

and reads `runner.domains` (the column order of every weights tensor) and `runner.bundle_version`.
`weights` is a (B, D) float tensor in `runner.domains` order, or None when there are no domains. Routing weights are
applied through the stacked model's `set_weights` before every forward, so every row of a batch carries its own.

Everything here runs on the engine's single model thread; nothing is thread-safe on purpose.
"""

from __future__ import annotations

import collections
import inspect
from typing import Any

import torch

from brainstacks.text import eos_token_ids

# routed weights depend only on the router and the first router_tokens prompt tokens: repeated prompts (shared system
# prompts, retries) skip the router pass. Cleared whenever the router is swapped, so a reload never serves stale ones.
ROUTE_CACHE_SIZE = 4096


class ModelRunner:
    """Wraps a causal LM (plain, or stacked with a router) behind the small interface the engine needs."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        stacked: Any = None,
        router: Any = None,
        bundle_version: int = 0,
        bundle_dir: str | None = None,
        manifest: Any = None,
        fingerprint: dict | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stacked = stacked
        self._route_cache: collections.OrderedDict[tuple, dict[str, float]] = collections.OrderedDict()
        self.router = router.eval() if router is not None else None
        self.bundle_version = bundle_version
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.fingerprint = fingerprint
        self.stack_meta: dict[str, list[dict]] = {}  # per domain, each stack's verified stack.json (sha256, bytes)
        self.router_meta: dict | None = None
        self.route_tokens = 0  # ServerSettings.router_tokens: 0 = the router's own router_tokens
        self.dense_bytes = 0  # bytes of the dense prefill copies (settings.dense_prefill; brainstacks/dense_base.py)
        self.device = next(model.parameters()).device
        # sizes live in the text config (a multimodal config, e.g. Gemma3Config, nests them in text_config)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.vocab_size = int(cfg.vocab_size)
        self.max_model_len = int(getattr(cfg, "max_position_embeddings", 2048) or 2048)
        self.eos_token_ids = eos_token_ids(model, tokenizer)  # tokenizer + config + generation_config.json
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renamed past_key_values -> cache (the old name is deprecated, not gone)
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # ------------------------------------------------------------------ domains
    @property
    def domains(self) -> list[str]:
        return list(self.stacked.domains) if self.stacked is not None else []

    def weights_tensor(self, rows: list[dict[str, float]]) -> torch.Tensor | None:
        """(B, D) weights in domain order; a domain a row does not name gets 0 (e.g. added by a hot reload)."""
        doms = self.domains
        if not doms:
            return None
        w = torch.tensor([[r.get(d, 0.0) for d in doms] for r in rows], dtype=torch.float32)
        return w.to(self.device)

    # ------------------------------------------------------------------ model calls
    def new_cache(self):
        """An all-full-attention DynamicCache. Not built from the config on purpose: sliding-window layers crop their
        cache with one length for the whole batch, which breaks rows of different lengths; full layers plus the
        model's sliding-window mask are exact (left padding shifts a row's queries and keys alike)."""
        from transformers import DynamicCache

        return DynamicCache()

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, S) with S = cached + T
        position_ids: torch.Tensor,  # (B, T)
        cache,
        weights: torch.Tensor | None,  # (B, D) or None
    ) -> torch.Tensor:
        """One forward over new tokens; returns the logits of each row's last position, float32 (B, V)."""
        if self.stacked is not None:
            self.stacked.set_weights(weights if weights is not None else torch.zeros(input_ids.shape[0], 0))
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: cache},
        )
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def route(self, prompts: list[list[int]]) -> list[dict[str, float]]:
        """Router weights for each prompt: one base-only pass over at most router_tokens tokens, then the policy."""
        doms = self.domains
        if not doms:
            return [{} for _ in prompts]
        if self.router is None:
            # a bundle without a router: every domain at full weight (the ungated composition)
            return [dict.fromkeys(doms, 1.0) for _ in prompts]
        n = self.router_tokens
        keys = [tuple(p[:n]) for p in prompts]
        out: list[dict[str, float] | None] = [self._route_cache.get(k) for k in keys]
        todo = [i for i, w in enumerate(out) if w is None]
        if todo:
            for i, w in zip(todo, self._route_uncached([list(keys[i]) for i in todo]), strict=True):
                out[i] = w
                self._route_cache[keys[i]] = w
                while len(self._route_cache) > ROUTE_CACHE_SIZE:
                    self._route_cache.popitem(last=False)
        for k in keys:
            self._route_cache.move_to_end(k)
        return [dict(w) for w in out]

    def _route_uncached(self, cut: list[list[int]]) -> list[dict[str, float]]:
        from brainstacks.router import route_prompts

        doms = self.domains
        w = route_prompts(self.stacked, self.tokenizer, self.router, cut, batch_size=len(cut))  # (B, D_router), policy
        rdoms = self.router_domains
        return [{d: float(w[i, j]) for j, d in enumerate(rdoms) if d in doms} for i in range(len(cut))]

    @property
    def router(self):
        return self._router

    @router.setter
    def router(self, router) -> None:
        """Swap the router (hot reload); cached routing results belonged to the old one."""
        self._router = router
        self._route_cache.clear()

    @property
    def router_tokens(self) -> int:
        """Prompt tokens routing reads: the router's own router_tokens, or fewer with `route_tokens` (the
        router_tokens setting; 0 = the router's own)."""
        from brainstacks.config import RouterConfig

        own = int(getattr(self.router, "config", RouterConfig()).router_tokens)
        return min(own, self.route_tokens) if self.route_tokens else own

    @property
    def router_domains(self) -> list[str]:
        r = self.router
        for attr in ("domains", "domain_names"):
            if r is not None and getattr(r, attr, None) is not None:
                return list(getattr(r, attr))
        return self.domains

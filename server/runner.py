"""The model side of the engine: one object that owns the model, its tokenizer and (with a bundle) the stacks and
router.

The engine (server/engine.py, through server/batch.py) never touches transformers or brainstacks directly: it calls

    runner.route(prompts)                        -> [{domain: w}, ...]
    runner.routing(weights)                      -> what the layers need for (B, D) weights (once per batch change)
    runner.prefill(prompts, routing)             -> (kv cache, last-position logits (k, V))
    runner.decode(last_tokens, kv, routing)      -> logits (B, V); the cache grows by one column

and reads `runner.domains` (the column order of every weights tensor), `runner.bundle_version` and
`runner.stacks_version` (bumped by `stacks_changed` after a hot reload swapped the stacks).

Two decode paths (`--decode-path`): *fused* (brainstacks/fastpath.py: merged dense projections, fused stack groups,
brainstacks/kvcache.py's in-place SlotKV) and *eager* (transformers' modules over a left-padded DynamicCache, the
stacked model's `set_weights` before every forward). Both give every row of a batch its own weights.

Everything here runs on the engine's single model thread; nothing is thread-safe on purpose.
"""

from __future__ import annotations

import collections
import inspect
from typing import Any

import torch

from brainstacks.text import eos_token_ids, pad_batch
from server.served import ServedBundle

# routed weights depend only on the router and the first router_tokens prompt tokens: repeated prompts (shared system
# prompts, retries) skip the router pass. Cleared whenever the router is swapped, so a reload never serves stale ones.
ROUTE_CACHE_SIZE = 4096
PREFILL_HEADROOM = 128  # decode columns a fused prefill preallocates per row (SlotKV doubles when they run out)


class ModelRunner:
    """Wraps a causal LM (plain, or stacked with a router) behind the small interface the engine needs."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        stacked: Any = None,
        router: Any = None,
        served: ServedBundle | None = None,
        router_tokens_cap: int = 0,
        dense_bytes: int = 0,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stacked = stacked
        self._route_cache: collections.OrderedDict[tuple, dict[str, float]] = collections.OrderedDict()
        self.router = router.eval() if router is not None else None
        self.served = served or ServedBundle()  # replaced whole by a reload, never edited (server/served.py)
        self.router_tokens_cap = router_tokens_cap  # ServerSettings.router_tokens: 0 = the router's own router_tokens
        self.dense_bytes = dense_bytes  # bytes of the dense prefill copies (settings.dense_prefill; dense_base.py)
        self.device = next(model.parameters()).device
        # sizes live in the text config (a multimodal config, e.g. Gemma3Config, nests them in text_config)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.vocab_size = int(cfg.vocab_size)
        self.max_model_len = int(getattr(cfg, "max_position_embeddings", 2048) or 2048)
        self.eos_token_ids = eos_token_ids(model, tokenizer)  # tokenizer + config + generation_config.json
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renamed past_key_values -> cache (the old name is deprecated, not gone)
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.fused = None  # a brainstacks.fastpath.FusedDecoder when the fused path serves (use_fused)
        self.stacks_version = 0

    # ------------------------------------------------------------------ what is served (read-only views)
    @property
    def bundle_version(self) -> int:
        return self.served.version

    @property
    def bundle_dir(self) -> str | None:
        return self.served.dir

    @property
    def manifest(self) -> Any:
        return self.served.manifest

    # ------------------------------------------------------------------ decode path
    @property
    def decode_path(self) -> str:
        return "fused" if self.fused is not None else "eager"

    def use_fused(self, decoder) -> None:
        """Serve prefill and decode through `decoder` (a FusedDecoder over this runner's model), or None: eager."""
        self.fused = decoder
        self.stacks_version += 1

    def stacks_changed(self) -> None:
        """The stacked model's frozen stacks were swapped (StackedModel.commit): re-read them, and make every
        batch rebuild its routing."""
        if self.fused is not None:
            self.fused.refresh_stacks()
        self.stacks_version += 1

    # ------------------------------------------------------------------ domains
    @property
    def domains(self) -> list[str]:
        return list(self.stacked.domains) if self.stacked is not None else []

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

    def routing(self, weights: torch.Tensor | None):
        """What prefill/decode take for (B, D) host weights: the fused decoder's Routing (selected stacks and their
        multipliers, on the device), or the weights on the device for the eager path."""
        if self.fused is not None:
            return self.fused.routing(weights)
        return None if weights is None else weights.to(self.device)

    def prefill(self, prompts: list[list[int]], routing):
        """One forward over the prompts, each row with its own weights: (kv, last-position logits (k, V))."""
        if self.fused is not None:
            return self.fused.prefill(prompts, routing, capacity=max(map(len, prompts)) + PREFILL_HEADROOM)
        from brainstacks.kvcache import EagerKV

        ids, mask = pad_batch(prompts, 0, left=True)  # (k, width) each; pad id 0 is masked out
        pos_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self.new_cache()
        logits = self.forward(ids, mask, pos_ids, cache, routing)
        return EagerKV(cache, mask, torch.tensor([len(p) for p in prompts], dtype=torch.long)), logits

    def decode(self, last: torch.Tensor, kv, routing) -> torch.Tensor:
        """One step: every row's last token at its next position; (B, V) logits."""
        if self.fused is not None:
            return self.fused.decode(last, kv, routing)
        mask, pos = kv.step_inputs()
        logits = self.forward(last.unsqueeze(1), mask, pos, kv.cache, routing)
        kv.advance()
        return logits

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
            for i, w in zip(todo, self.route_uncached([list(keys[i]) for i in todo]), strict=True):
                out[i] = w
                self._route_cache[keys[i]] = w
                while len(self._route_cache) > ROUTE_CACHE_SIZE:
                    self._route_cache.popitem(last=False)
        for k in keys:
            self._route_cache.move_to_end(k)
        return [dict(w) for w in out]

    def route_uncached(self, cut: list[list[int]]) -> list[dict[str, float]]:
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
        self.clear_route_cache()

    def clear_route_cache(self) -> None:
        """Forget cached routing results (a new router, or a measurement of the uncached path)."""
        self._route_cache.clear()

    @property
    def router_tokens(self) -> int:
        """Prompt tokens routing reads: the router's own router_tokens, or fewer with `router_tokens_cap` (the
        router_tokens setting; 0 = the router's own)."""
        from brainstacks.config import RouterConfig

        own = int(getattr(self.router, "config", RouterConfig()).router_tokens)
        return min(own, self.router_tokens_cap) if self.router_tokens_cap else own

    @property
    def router_domains(self) -> list[str]:
        r = self.router
        for attr in ("domains", "domain_names"):
            if r is not None and getattr(r, attr, None) is not None:
                return list(getattr(r, attr))
        return self.domains

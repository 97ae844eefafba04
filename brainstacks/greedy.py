"""Greedy decoding of whole prompts on the fused decoder (brainstacks/fastpath.py), for offline evaluation."""

from __future__ import annotations

import torch

from brainstacks.fastpath import FusedDecoder, Routing


def greedy(dec: FusedDecoder, prompts: list[list[int]], weights: torch.Tensor | None, max_new_tokens: int,
           eos: set[int] | frozenset[int] = frozenset()) -> list[list[int]]:
    """Greedy completions of `prompts` (token ids) under weights (B, D) (None: the base alone), each cut before
    its first `eos` token: one prefill and at most max_new_tokens - 1 decode steps, a row leaving the batch
    (SlotKV.select) when it ends. For offline evaluation (training.demo.evidence); the server's engine
    batches live requests itself."""
    routing = dec.routing(weights)
    out: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens <= 0 or not prompts:
        return out
    kv, logits = dec.prefill(prompts, routing, capacity=max(len(p) for p in prompts) + max_new_tokens)
    rows = list(range(len(prompts)))  # kv row i holds prompt rows[i]
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1).tolist()
        keep = []
        for i, t in enumerate(nxt):
            if t in eos:
                continue
            out[rows[i]].append(t)
            keep.append(i)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            order = kv.select(keep)
            rows = [rows[i] for i in order]
            idx = torch.tensor(order, device=dec.device)
            routing = Routing(routing.selected, None if routing.mult is None else routing.mult[idx])
            last = torch.tensor([nxt[i] for i in order], device=dec.device)
        else:
            last = torch.tensor(nxt, device=dec.device)
        logits = dec.decode(last, kv, routing)
    return out

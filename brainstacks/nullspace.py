"""Null-space projection against earlier domains (docs/DESIGN.md §2).

Before a new domain trains, sample inputs run through the model with every frozen stack on (ungated). At each
wrapped projection the summed output delta of the frozen stacks is mean-pooled per sample, giving a matrix
M (samples, d_out). Its top-K right singular vectors V (d_out, K), from randomized SVD (`torch.svd_lowrank`), span
the output directions earlier domains use. The new stack's output is kept in the orthogonal complement,
δ ← δ − (δ V) Vᵀ, during training (MoELoRA) and, folded into B when the stack freezes, at inference too.
Only V is stored, never the dense d_out × d_out projector.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from brainstacks.errors import StackFormatError
from brainstacks.stacks import StackedModel


@torch.no_grad()
def collect_directions(
    sm: StackedModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    samples: int,
    directions: int,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Top-`directions` output directions of the frozen stacks at every wrapped layer, from `samples` inputs.

    batches: (input_ids (B, T), attention_mask (B, T)). Returns {layer path: V (d_out, K)} in fp32 on CPU, with
    K = min(directions, samples seen, d_out). Empty when the model has no frozen stacks.
    """
    if sm.active_domain is not None:
        raise StackFormatError("collect null-space directions before starting the new stack")
    if not sm.stacks:
        return {}
    st = sm.state
    prev_weights = sm.weights
    sm.set_weights(None)  # ungated: every frozen stack at weight 1, as during training
    st.capture = {}
    seen = 0
    was_training = sm.model.training
    sm.model.eval()
    try:
        for ids, mask in batches:
            dev = sm.device
            st.capture_mask = mask.to(dev)
            sm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev))
            seen += ids.shape[0]
            if seen >= samples:
                break
        captured = st.capture
    finally:
        st.capture, st.capture_mask = None, None
        sm.set_weights(prev_weights)
        sm.model.train(was_training)
    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for path, chunks in captured.items():
            M = torch.cat(chunks)[:samples].float()  # (n, d_out)
            k = min(directions, M.shape[0], M.shape[1])
            _, _, V = torch.svd_lowrank(M, q=k, niter=4)  # V (d_out, k), orthonormal columns
            out[path] = V.contiguous()
    return out

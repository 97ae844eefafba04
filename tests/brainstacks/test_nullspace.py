"""Null-space projection: collected from frozen deltas, enforced in training, folded into B so it holds at inference."""

from __future__ import annotations

import torch

from brainstacks.base import load_base
from brainstacks.config import StackConfig
from brainstacks.nullspace import collect_directions
from brainstacks.stacks import StackedModel
from brainstacks.tiny_models import add_random_stacks, randomize_active


def residual_ratio(delta: torch.Tensor, V: torch.Tensor) -> float:
    """‖Vᵀ δ‖ / ‖δ‖ over all rows of δ (..., d_out): 0 when δ lies entirely in the complement of span(V)."""
    d = delta.reshape(-1, delta.shape[-1]).float()
    return float((d @ V.float()).norm() / d.norm().clamp_min(1e-30))


def sample_batches(n: int, seq: int = 8, bs: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(0, n, bs):
        ids = torch.randint(4, 200, (bs, seq), generator=g)
        yield ids, torch.ones_like(ids)


def active_delta(sm: StackedModel, domain: str, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output delta of `domain`'s newest frozen stack alone, captured at every layer."""
    w = torch.zeros(1, len(sm.domains))
    w[0, sm.domains.index(domain)] = 1.0
    captured: dict[str, torch.Tensor] = {}
    # what each layer adds to its base projection, on that layer's own input: the stacks' delta, seen from outside
    hooks = [lay.register_forward_hook(lambda mod, inp, out, p=p: captured.__setitem__(p, out - mod.base_layer(inp[0])))
             for p, lay in sm.layers.items()]
    try:
        with sm.routing(w), torch.no_grad():
            sm.model(ids)
    finally:
        for h in hooks:
            h.remove()
    return captured


def test_fold_makes_projection_exact_at_inference(base_dirs):
    lb = load_base(base_dirs["llama"], quantize="none")
    sm = StackedModel(lb.model, StackConfig(rank=4, frozen_dtype="float32"))
    add_random_stacks(sm, {"first": 2})
    V = collect_directions(sm, sample_batches(64), samples=64, directions=8)
    assert set(V) == set(sm.layers)
    for p, v in V.items():
        assert v.shape == (sm.layers[p].out_features, 8)
        assert torch.allclose(v.T @ v, torch.eye(8), atol=1e-4)  # orthonormal basis, not a dense projector
    sm.add_domain("second")
    sm.start_stack("second", nullspace=V)
    randomize_active(sm, seed=5)
    sm.freeze_active("float32")
    fresh = torch.randint(4, 200, (3, 7), generator=torch.Generator().manual_seed(123))
    deltas = active_delta(sm, "second", fresh)
    assert min(float(d.norm()) for d in deltas.values()) > 1e-3  # the stack does add something at every layer
    worst = max(residual_ratio(deltas[p], V[p]) for p in V)
    assert worst <= 1e-5, worst
    # without the projection the same kind of stack does use those directions
    sm.add_domain("free")
    sm.start_stack("free")
    randomize_active(sm, seed=6)
    sm.freeze_active("float32")
    free = active_delta(sm, "free", fresh)
    assert max(residual_ratio(free[p], V[p]) for p in V) > 1e-2


def test_bf16_storage_figure(base_dirs):
    """With bf16 storage the fold is exact up to bf16 rounding: the residual is ~1e-3, far below unprojected."""
    lb = load_base(base_dirs["llama"], quantize="none")
    sm = StackedModel(lb.model, StackConfig(rank=4, frozen_dtype="bfloat16"))
    add_random_stacks(sm, {"first": 2}, dtype="bfloat16")
    V = collect_directions(sm, sample_batches(64), samples=64, directions=8)
    sm.add_domain("second")
    sm.start_stack("second", nullspace=V)
    randomize_active(sm, seed=5)
    sm.freeze_active()
    deltas = active_delta(sm, "second", torch.randint(4, 200, (3, 7)))
    worst = max(residual_ratio(deltas[p], V[p]) for p in V)
    print(f"bf16 storage: max ||V^T d|| / ||d|| = {worst:.2e}")
    assert worst <= 2e-2


def test_training_with_projection_still_lowers_loss(base_dirs):
    lb = load_base(base_dirs["llama"], quantize="nf4")
    sm = StackedModel(lb.model, StackConfig(rank=4))
    add_random_stacks(sm, {"first": 1}, dtype="bfloat16")
    V = collect_directions(sm, sample_batches(32), samples=32, directions=8)
    sm.add_domain("second")
    params = sm.start_stack("second", nullspace=V)
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.randint(4, 200, (4, 10), generator=torch.Generator().manual_seed(1))
    lb.model.train()
    losses = []
    for _ in range(10):
        loss = lb.model(ids, labels=ids).loss
        opt.zero_grad()
        (loss + 0.01 * sm.aux_loss()).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    m = next(iter(sm.active_modules().values()))
    x = torch.randn(5, m.d_in)
    assert residual_ratio(m(x), m.V) < 1e-5  # the projection holds during training too

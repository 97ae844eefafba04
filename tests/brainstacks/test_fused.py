"""The fused routed forward equals a plain loop over stacks, for any mix of per-row weights (fp32, ≤ 1e-5 rel)."""

from __future__ import annotations

import random

import pytest
import torch

from brainstacks.base import load_base
from brainstacks.config import StackConfig
from brainstacks.reference import reference_forward
from brainstacks.stacks import StackedModel
from brainstacks.tiny_models import add_random_stacks, randomize_active


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def random_layout(rng: random.Random) -> dict[str, int]:
    n_domains = rng.randint(1, 5)
    n_stacks = rng.randint(n_domains, 10)
    counts = [1] * n_domains
    for _ in range(n_stacks - n_domains):
        counts[rng.randrange(n_domains)] += 1
    return {f"d{i}": c for i, c in enumerate(counts)}


def random_weights(rng: random.Random, rows: int, domains: int) -> torch.Tensor:
    w = torch.tensor([[rng.choice([0.0, 0.0, rng.random(), 1.0]) for _ in range(domains)] for _ in range(rows)])
    if not w.any():  # keep at least one live domain so the comparison exercises the stacks
        w[0, rng.randrange(domains)] = 0.7
    return w


def layer_errors(sm: StackedModel, x_by_width: dict[int, torch.Tensor]) -> float:
    """Worst relative error of any wrapped layer's output, fused vs loop, on the given inputs."""
    worst = 0.0
    with torch.no_grad():
        fused = {p: lay(x_by_width[lay.in_features]) for p, lay in sm.layers.items()}
        with reference_forward(sm):
            for p, lay in sm.layers.items():
                worst = max(worst, rel_err(fused[p], lay(x_by_width[lay.in_features])))
    return worst


@pytest.mark.parametrize("trial", range(6))
def test_fused_equals_loop_reference(base_dirs, trial):
    """Per layer, on fresh random inputs, ≤ 1e-5 relative error in fp32; whole-model logits ≤ 1e-4 (the same
    per-layer rounding differences, ~4e-7, compound through the layers and the LM head)."""
    rng = random.Random(trial)
    torch.manual_seed(trial)
    family = ["llama", "qwen2"][trial % 2]
    lb = load_base(base_dirs[family], quantize="none")
    sm = StackedModel(lb.model, StackConfig(rank=4, experts=4, top_k=2, frozen_dtype="float32"))
    layout = random_layout(rng)
    add_random_stacks(sm, layout, seed=trial * 100)
    with_active = trial % 3 != 0
    if with_active:
        sm.start_stack(rng.choice(sm.domains))
        randomize_active(sm, seed=999 + trial)
    lb.model.eval()
    widths = {lay.in_features for lay in sm.layers.values()}
    for _ in range(3):  # fresh inputs and fresh mixed weights each time
        rows = rng.randint(1, 4)
        T = rng.randint(1, 9)
        w = random_weights(rng, rows, len(sm.domains))
        with sm.routing(w):
            assert layer_errors(sm, {d: torch.randn(rows, T, d) for d in widths}) <= 1e-5, (layout, w)
            ids = torch.randint(4, 200, (rows, T))
            fused = lb.model(ids).logits
            with reference_forward(sm):
                ref = lb.model(ids).logits
        with sm.base_only():
            base = lb.model(ids).logits
        assert rel_err(fused, ref) <= 1e-4, (layout, w)
        assert not torch.allclose(ref, base)  # the stacks really contribute
    # ungated (training) mode too
    with sm.routing(None):
        assert layer_errors(sm, {d: torch.randn(2, 5, d) for d in widths}) <= 1e-5
        ids = torch.randint(4, 200, (2, 5))
        fused = lb.model(ids).logits
        with reference_forward(sm):
            assert rel_err(fused, lb.model(ids).logits) <= 1e-4


def test_generate_with_kv_cache_mixed_rows(base_dirs):
    """Prefill and decode through model.generate (KV cache), each row with its own weights, match the loop."""
    lb = load_base(base_dirs["llama"], quantize="none")
    sm = StackedModel(lb.model, StackConfig(rank=4, frozen_dtype="float32"))
    add_random_stacks(sm, {"a": 2, "b": 1, "c": 3}, seed=7)
    torch.manual_seed(0)
    ids = torch.randint(4, 200, (3, 6))
    mask = torch.ones_like(ids)
    w = torch.tensor([[1.0, 0.0, 0.4], [0.0, 0.0, 0.0], [0.2, 0.9, 0.0]])
    kw = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True,
              pad_token_id=1)
    with sm.routing(w):
        fused = lb.model.generate(ids, attention_mask=mask, **kw)
        with reference_forward(sm):
            ref = lb.model.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(fused.sequences, ref.sequences)
    for a, b in zip(fused.logits, ref.logits, strict=True):
        assert rel_err(a, b) <= 1e-4  # whole-model logits: per-layer ~4e-7 rounding differences compound
    # a row alone gives the same continuation as inside the mixed batch
    with sm.routing(w[2:3]):
        alone = lb.model.generate(ids[2:3], attention_mask=mask[2:3], **kw)
    assert torch.equal(alone.sequences[0], fused.sequences[2])


def test_zero_weights_cost_nothing(base_dirs):
    lb = load_base(base_dirs["llama"], quantize="nf4")
    sm = StackedModel(lb.model, StackConfig(rank=4))  # bf16 frozen storage over an nf4 base
    add_random_stacks(sm, {"a": 2, "b": 2, "c": 1}, dtype="bfloat16")
    ids = torch.randint(4, 200, (2, 5))
    with sm.base_only():
        base = lb.model(ids).logits
    with sm.routing(torch.zeros(2, 3)):
        assert sm.state.selected == ()
        assert torch.equal(lb.model(ids).logits, base)  # exactly the base layer's result
    with sm.routing(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.5, 0.0]])):
        assert sm.state.selected == (2, 3)  # only domain b's two stacks are computed
        layer = next(iter(sm.layers.values()))
        lb.model(ids)
        AW, Bp, m = layer.packed(sm.state.selected)
        assert m == 2 and Bp.shape[1] == 2 * 4 * 4
        assert not torch.equal(lb.model(ids).logits, base)


def test_fused_op_count_does_not_grow_with_stacks(base_dirs):
    """No Python loop over stacks or experts: the number of ops dispatched is the same for 1 and 10 stacks."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for layout in ({"a": 1}, {"a": 3, "b": 3, "c": 2, "d": 1, "e": 1}):
        lb = load_base(base_dirs["llama"], quantize="none")
        sm = StackedModel(lb.model, StackConfig(rank=4, frozen_dtype="float32"))
        add_random_stacks(sm, layout)
        layer = next(iter(sm.layers.values()))
        x = torch.randn(2, 3, layer.in_features)
        with sm.routing(torch.ones(2, len(layout))), torch.no_grad(), Count() as c:
            layer(x)
        counts.append(c.n)
    assert counts[0] == counts[1]

"""Dense copies of 4-bit base projections for multi-token calls (brainstacks/dense_base.py): the copy is the weight the
NF4 layer represents, only multi-token calls use it, and the live 4-bit layers are left exactly as they were."""

from __future__ import annotations

import pytest
import torch
from bitsandbytes import functional as F

from brainstacks.base import load_base
from brainstacks.config import StackConfig
from brainstacks.dense_base import attach_dense_copies, detach_dense_copies
from brainstacks.quant import is_4bit
from brainstacks.stacks import StackedModel
from brainstacks.tiny_models import add_random_stacks


def stacked(path, quantize="nf4", for_training=False):
    lb = load_base(path, quantize=quantize, for_training=for_training)
    torch.manual_seed(0)  # start_stack draws A from the global generator: the same stacks in every call
    sm = StackedModel(lb.model, StackConfig(rank=4, experts=4, top_k=2, frozen_dtype="float32"))
    add_random_stacks(sm, {"a": 1, "b": 1}, seed=5)
    return lb.model, sm


W = torch.tensor([[0.7, 0.2], [0.0, 1.0]])


def logits(model, sm, ids):
    with torch.no_grad(), sm.routing(W[: ids.shape[0]]):
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # qwen2: q/k/v carry biases
def test_multi_token_calls_use_the_dequantized_weight_and_decode_steps_do_not(base_dirs, family):
    model, sm = stacked(base_dirs[family])
    ids = torch.randint(4, 200, (2, 7))
    nf4 = logits(model, sm, ids)  # also makes bitsandbytes repack every layer for its CPU kernel
    one = logits(model, sm, ids[:, :1])
    # the reference: the same quantized weights, dequantized by bitsandbytes' public dequantize_4bit from the
    # canonical layout into nn.Linear (a base loaded for training is never repacked)
    ref_model, ref_sm = stacked(base_dirs[family], for_training=True)
    rounded = False  # a CPU with AVX512-BF16 serves with a bf16 absmax: the copy follows the kernel, not the codes
    for path, lay in ref_sm.layers.items():
        q = lay.base_layer
        assert is_4bit(q)
        rounded |= bool(getattr(sm.layers[path].base_layer, "support_avx512bf16_for_cpu", False))
        lin = torch.nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
        lin.weight.data = F.dequantize_4bit(q.weight.data, q.weight.quant_state).float()
        if q.bias is not None:
            lin.bias.data = q.bias.data.float()
        lay.base_layer = lin
    ref = logits(ref_model, ref_sm, ids)

    n = attach_dense_copies(sm, torch.float32)
    assert n == sum(4 * lay.in_features * lay.out_features for lay in sm.layers.values())
    tol = 2e-2 if rounded else 1e-4
    torch.testing.assert_close(logits(model, sm, ids), ref, atol=tol * ref.abs().max().item(), rtol=tol)
    assert torch.equal(logits(model, sm, ids[:, :1]), one), "a single-token call must stay on the 4-bit kernel"
    for lay in sm.layers.values():  # which path a call takes: copies that are visibly wrong
        lay.dense = (torch.zeros_like(lay.dense[0]), *lay.dense[1:])
    assert not torch.allclose(logits(model, sm, ids), ref, atol=1e-2), "multi-token calls must take the copy"
    assert torch.equal(logits(model, sm, ids[:, :1]), one)

    attach_dense_copies(sm, torch.bfloat16)
    bf = logits(model, sm, ids)
    assert (bf - ref).abs().max() <= 0.02 * ref.abs().max()  # bf16 rounding of weights and outputs only

    detach_dense_copies(sm)
    assert torch.equal(logits(model, sm, ids), nf4), "the live 4-bit layers must be left exactly as they were"


def test_an_unquantized_base_gets_no_copies(base_dirs):
    _, sm = stacked(base_dirs["llama"], quantize="none")
    assert attach_dense_copies(sm) == 0
    assert all(lay.dense is None for lay in sm.layers.values())


def test_every_call_copy_of_a_training_base_gives_the_same_forward_and_gradients(base_dirs):
    """every_call (GRPO rollouts, training): a base loaded for training runs bitsandbytes' dequantize-then-matmul
    path, so a float32 copy is the same weight: logits and the active stack's gradients match, decode steps included."""
    from brainstacks.tiny_models import randomize_active

    model, sm = stacked(base_dirs["llama"], for_training=True)
    sm.start_stack("b")
    randomize_active(sm, seed=1)
    model.eval()  # the active stack's dropout off: both runs see the same function
    ids = torch.randint(4, 200, (2, 7))

    def run(x):
        model.zero_grad(set_to_none=True)
        with sm.routing(W):
            out = model(input_ids=x).logits.float()
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in sm.active_modules()["model.layers.0.mlp.up_proj"].parameters()
                              if p.grad is not None]

    before = [run(ids), run(ids[:, :1])]
    attach_dense_copies(sm, torch.float32, every_call=True)
    after = [run(ids), run(ids[:, :1])]
    for (lb, gb), (la, ga) in zip(before, after, strict=True):
        torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
        assert gb and len(ga) == len(gb)
        for x, y in zip(ga, gb, strict=True):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-4)

"""Shared-input groups (brainstacks/shared_input.py): q/k/v and gate/up compute their frozen stacks in one gating
pass, with the same results as each projection alone."""

from __future__ import annotations

import torch

from brainstacks.base import load_base
from brainstacks.config import StackConfig
from brainstacks.stacks import StackedModel
from brainstacks.tiny_models import add_random_stacks


def model_with_stacks(base_dirs, family="llama"):
    lb = load_base(base_dirs[family], quantize="nf4")
    sm = StackedModel(lb.model, StackConfig(rank=4, experts=4, top_k=2, frozen_dtype="float32"))
    add_random_stacks(sm, {"a": 2, "b": 1, "c": 1}, seed=3)
    return lb, sm


def test_groups_are_the_siblings_that_share_an_input(base_dirs):
    lb, sm = model_with_stacks(base_dirs)
    names = sorted(tuple(m.path.rpartition(".")[2] for m in g.members) for g in sm.groups)
    n_layers = lb.model.config.num_hidden_layers
    assert names == sorted([("q_proj", "k_proj", "v_proj")] * n_layers + [("gate_proj", "up_proj")] * n_layers)


def test_grouped_decode_equals_each_projection_alone(base_dirs):
    lb, sm = model_with_stacks(base_dirs)
    ids = torch.randint(4, 200, (3, 6))
    w = torch.tensor([[0.7, 0.0, 0.3], [0.0, 1.0, 0.0], [0.2, 0.5, 0.9]])
    kw = dict(max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    out = {}
    computes = []
    for on in (False, True):
        sm.share_inputs(on)
        with torch.no_grad(), sm.routing(w):
            if on:
                real = type(sm.groups[0]).compute

                def counting(self, *a, real=real):
                    computes.append(1)
                    return real(self, *a)

                type(sm.groups[0]).compute = counting
            try:
                out[on] = lb.model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
            finally:
                if on:
                    type(sm.groups[0]).compute = real
    assert computes, "the grouped path never ran"
    assert all(g.enabled and g.misses == 0 for g in sm.groups)
    assert torch.equal(out[False].sequences, out[True].sequences)
    for a, b in zip(out[False].scores, out[True].scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_members_called_with_different_inputs_compute_alone_and_the_group_turns_off(base_dirs):
    lb, sm = model_with_stacks(base_dirs)
    attn = lb.model.model.layers[0].self_attn
    g = attn.q_proj.group
    w = torch.tensor([[0.5, 0.5, 0.5]])
    xq, xk, xv = (torch.randn(1, 2, attn.q_proj.in_features) for _ in range(3))  # k, v never read q's input
    with torch.no_grad(), sm.routing(w):
        g.enabled = False
        want = [attn.q_proj(xq), attn.k_proj(xk), attn.v_proj(xv)]
        g.enabled = True
        got = [attn.q_proj(xq), attn.k_proj(xk), attn.v_proj(xv)]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not g.enabled and g.misses == 2


def test_training_and_repacks_bypass_or_reset_the_group(base_dirs):
    lb, sm = model_with_stacks(base_dirs)
    q = lb.model.model.layers[0].self_attn.q_proj
    x = torch.randn(1, 2, q.in_features)
    with sm.routing(torch.tensor([[1.0, 0.0, 0.0]])):
        assert not q.group.usable(sm.state)  # autograd on: each projection alone
        with torch.no_grad():
            q(x)  # leaves k and v's deltas pending
            assert q.group._x is x
            sm.remove_domain("c")  # a repack resets every group
            assert q.group._x is None and not q.group._packs

"""The MoE-LoRA delta: the paper's init and scale, top-k gating, noise only in training, a load-balancing gradient."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from brainstacks.config import StackConfig
from brainstacks.moe_lora import MoELoRA, load_balance_loss, topk_gates


def test_init_and_scale():
    cfg = StackConfig(experts=4, rank=16, alpha=16)
    m = MoELoRA(64, 96, cfg)
    assert cfg.scale == 16 / math.sqrt(16)
    assert StackConfig(rank=16, alpha=16, rslora=False).scale == 1.0
    assert torch.count_nonzero(m.B) == 0 and torch.count_nonzero(m.W_noise) == 0
    assert 0.01 < m.W.std().item() < 0.03  # N(0, 0.02)
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) on fan_in 64
    assert m.A.abs().max() <= bound and m.A.abs().max() > 0.8 * bound
    m.eval()
    assert torch.count_nonzero(m(torch.randn(3, 64))) == 0  # a new stack is an exact no-op


def test_topk_gates_exact_zeros_and_softmax():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    g = topk_gates(logits, 2)
    expected = torch.zeros(1, 4)
    expected[0, 1], expected[0, 2] = torch.softmax(torch.tensor([3.0, 2.0]), 0)
    assert_close(g, expected)


def test_forward_matches_manual_computation():
    torch.manual_seed(0)
    cfg = StackConfig(experts=3, top_k=2, rank=4, alpha=8)
    m = MoELoRA(16, 32, cfg).eval()
    torch.nn.init.normal_(m.B, std=0.1)
    x = torch.randn(5, 16)
    out = m(x)
    ref = torch.zeros(5, 32)
    for n in range(5):
        logits = m.W @ x[n]
        top = logits.topk(2).indices
        w = torch.softmax(logits[top], 0)
        for j, e in enumerate(top):
            ref[n] += w[j] * (m.B[e] @ (m.A[e] @ x[n])) * cfg.scale
    assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_noise_only_in_training():
    torch.manual_seed(0)
    m = MoELoRA(16, 32, StackConfig(rank=4))
    torch.nn.init.normal_(m.B, std=0.1)
    x = torch.randn(8, 16)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))  # noisy gate logits change the routing


def test_load_balance_loss_has_gradient():
    """The paper's code took P from detached logits; ours must carry a gradient into the gate."""
    torch.manual_seed(0)
    m = MoELoRA(16, 32, StackConfig(experts=4, top_k=2, rank=4)).train()
    m(torch.randn(64, 16))
    assert m.aux is not None and m.aux.requires_grad
    m.aux.backward()
    assert m.W.grad is not None and m.W.grad.abs().sum() > 0
    # and it pushes toward balance: skew the router, the loss exceeds its balanced value (1.0) and decreases with SGD
    with torch.no_grad():
        m.W.zero_()
        m.W[0] += 0.5
        m.W_noise.fill_(-20.0)  # softplus(-20) ≈ 0: no noise, deterministic
    x = torch.randn(256, 16).abs()
    opt = torch.optim.SGD([m.W], lr=0.5)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = load_balance_loss(m.logits(x), 2)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert first > 1.05 and loss.item() < first - 0.05

"""DPO loss against a hand computation; sequence log-probs against a direct sum."""

from __future__ import annotations

import math

import torch

from training.dpo import dpo_loss, sequence_logprobs
from training.tokenization import IGNORE_INDEX


def test_dpo_loss_matches_hand_computation():
    pc, pr = torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -4.0])
    rc, rr = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])
    loss, st = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # pair 0: r_w = 0.5*(1) = 0.5, r_l = 0.5*(-1) = -0.5, margin 1.0; pair 1: r_w = 0, r_l = 0.5, margin -0.5
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 / (1 + math.exp(0.5)))) / 2
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    assert math.isclose(st.reward_margin, 0.25, rel_tol=1e-6)
    assert math.isclose(st.chosen_reward, 0.25, rel_tol=1e-6) and math.isclose(st.rejected_reward, 0.0, abs_tol=1e-7)
    assert st.accuracy == 0.5


def test_dpo_gradient_flows_to_policy_only():
    pc = torch.tensor([-3.0], requires_grad=True)
    pr = torch.tensor([-3.0], requires_grad=True)
    rc = torch.tensor([-3.0], requires_grad=True)
    rr = torch.tensor([-3.0], requires_grad=True)
    loss, st = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert math.isclose(float(loss), math.log(2), rel_tol=1e-6) and st.reward_margin == 0.0
    loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # raise chosen, lower rejected
    assert rc.grad is None and rr.grad is None


def test_sequence_logprobs_sums_answer_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 1], [IGNORE_INDEX, 2, 2, IGNORE_INDEX, IGNORE_INDEX]])
    logp = torch.log_softmax(logits, -1)
    expected0 = logp[0, 1, 3] + logp[0, 2, 4] + logp[0, 3, 1]
    expected1 = logp[1, 0, 2] + logp[1, 1, 2]
    torch.testing.assert_close(sequence_logprobs(logits, labels), torch.stack([expected0, expected1]))

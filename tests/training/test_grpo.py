"""GRPO: advantages, the clipped loss and k3 against hand computations, log-probs against generate's own logits,
and the loop on a tiny model (one batched generate per step through the StackedModel; a learnable reward rises)."""

from __future__ import annotations

import math

import pytest
import torch

from brainstacks.base import load_base
from brainstacks.config import StackConfig
from brainstacks.stacks import StackedModel
from brainstacks.text import encode_prompt, pad_batch
from brainstacks.tiny_models import randomize_active, tiny_base
from training import rewards as rewards_module
from training.config import GRPOConfig, TrainConfig
from training.grpo import completion_logprobs, group_advantages, grpo_loss, sample, train_grpo


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("grpo") / "base")


@pytest.fixture
def lb(base_dir):
    return load_base(base_dir, "nf4", "float32", "cpu", for_training=True)


def fresh(lb) -> StackedModel:
    return StackedModel(lb.model, StackConfig(experts=4, top_k=2, rank=4, alpha=8))


def test_group_advantages_are_normalised_within_each_group():
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), 4, 1e-4)
    assert torch.allclose(a[:4], torch.tensor([3.0, -1.0, -1.0, -1.0]) / math.sqrt(3), atol=1e-3)
    assert torch.equal(a[4:], torch.zeros(4))  # a group that all scores the same teaches nothing


def test_loss_clip_and_k3_match_hand_computation():
    cfg = GRPOConfig(clip=0.2, kl_coef=0.5)
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.0]]))  # ratios 1.5 and 0.5 on the first tokens
    adv, mask = torch.tensor([1.0, -1.0]), torch.tensor([[1, 1], [1, 0]])
    loss, st = grpo_loss(logp, old, None, adv, mask, cfg)
    # row 0 (A=1): min(1.5, 1.2) = 1.2, min(1, 1) = 1 -> -(1.2 + 1)/2; row 1 (A=-1): min(-0.5, -0.8) = -0.8 -> 0.8
    assert math.isclose(float(loss), (-(1.2 + 1.0) / 2 + 0.8) / 2, rel_tol=1e-5)
    assert math.isclose(st["clip_frac"], 2 / 3, rel_tol=1e-5)
    same, st = grpo_loss(logp, logp.detach(), logp.detach(), torch.zeros(2), mask, cfg)
    assert float(same) == 0.0 and st["kl"] == 0.0  # k3 vanishes at the reference
    ref = torch.zeros(2, 2)
    _, st = grpo_loss(logp, logp.detach(), ref, torch.zeros(2), mask, cfg)
    d = ref - logp
    k3 = torch.exp(d) - d - 1
    assert math.isclose(st["kl"], float(((k3[0, 0] + k3[0, 1]) / 2 + k3[1, 0]) / 2), rel_tol=1e-5)
    assert st["kl"] > 0


def test_completion_logprobs_match_generate_with_left_padding(lb):
    sm = fresh(lb)
    sm.add_domain("toy")
    sm.start_stack("toy")
    randomize_active(sm)
    sm.model.eval()
    tok = lb.tokenizer
    prompts = ["what is 1 plus 2 ?", "patient dose", "what is 3 plus 4 and the heart drug value ?"]
    ids, mask = pad_batch([encode_prompt(tok, p) for p in prompts], tok.pad_token_id, left=True)
    T = ids.shape[1]
    with torch.no_grad():
        out = sm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, eos_token_id=[],
                                pad_token_id=tok.pad_token_id, output_logits=True, return_dict_in_generate=True)
        want = torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, out.sequences[:, T:, None])[..., 0]
        full = torch.cat([mask, torch.ones_like(out.sequences[:, T:])], 1)
        got = completion_logprobs(sm, out.sequences, full, 5)
    assert torch.allclose(got, want, atol=1e-4)
    ids, full, cmask = sample(sm, tok, prompts, 6, None, [tok.eos_token_id])
    assert ids.shape[1] == full.shape[1] and cmask.shape == (3, ids.shape[1] - T)


def test_loop_rolls_out_once_per_step_through_the_stacked_model_and_learns(lb, monkeypatch):
    sm = fresh(lb)
    calls = []
    generate = sm.model.generate

    def counting(*a, **kw):
        calls.append((kw["input_ids"].shape[0], kw.get("do_sample"), sm.active_domain))
        return generate(*a, **kw)

    monkeypatch.setattr(sm.model, "generate", counting)
    # a dense reward the tiny random model can learn: the share of digits among the generated words
    monkeypatch.setitem(rewards_module.REWARDS, "exact_answer",
                        lambda c, r: sum(w.isdigit() for w in c.split()) / max(1, len(c.split())))
    recs = [{"prompt": f"what is {i} plus {i} ?", "answer": "1"} for i in range(10)]
    cfg = GRPOConfig(group_size=8, max_new_tokens=6, temperature=1.0, kl_coef=0.01, steps=16, prompts_per_step=4,
                     eval_prompts=4, eval_every=100)
    res = train_grpo(sm, "toy", recs, recs[:4], lb.tokenizer, cfg, TrainConfig(lr=1e-2), log=lambda _: None)
    rollouts = [c for c in calls if c[1]]
    assert len(rollouts) == res.generate_calls == cfg.steps  # one generate per step...
    assert all(rows == 32 and dom == "toy" for rows, _, dom in rollouts)  # ...of every row, the new stack active
    assert res.rollout_rows == 32 * cfg.steps and len(res.history) == cfg.steps
    assert res.reward_after > res.reward_before  # greedy, on the held-out prompts
    assert all(h["kl"] >= 0 for h in res.history) and res.history[-1]["kl"] > 0
    assert sm.num_stacks("toy") == 1 and sm.active_domain is None  # frozen

"""The meta-router module: shapes, independence, temperature bounds, one feature path, serving policy."""

from __future__ import annotations

import pytest
import torch

from brainstacks.base import load_base
from brainstacks.config import RouterConfig, StackConfig
from brainstacks.errors import RoutingError
from brainstacks.router import MetaRouter, apply_policy, route, route_prompts, router_features, weights_for_model
from brainstacks.stacks import StackedModel
from brainstacks.tiny_models import add_random_stacks


@pytest.fixture()
def stacked(base_dirs):
    lb = load_base(base_dirs["llama"], quantize="nf4")
    sm = StackedModel(lb.model, StackConfig(rank=4))
    add_random_stacks(sm, {"math": 1, "code": 1}, dtype="bfloat16")
    return sm


def test_features_are_base_only_and_truncated(stacked):
    ids = torch.randint(4, 200, (2, 12))
    cfg = RouterConfig(router_tokens=5)
    feats, mask = router_features(stacked, ids, None, cfg)
    assert feats.shape == (2, 5, stacked.model.config.hidden_size) and mask.all()
    # same features whatever the routing weights: the pass runs with every stack off
    with stacked.routing(torch.ones(2, 2)):
        again, _ = router_features(stacked, ids, None, cfg)
    assert torch.equal(feats, again)
    # left padding does not change a row's features
    padded = torch.cat([torch.full((1, 3), 1), ids[:1, :5]], 1)
    pmask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    pf, pm = router_features(stacked, padded, pmask, cfg)
    assert pm.sum() == 5
    assert torch.allclose(pf[0][pm[0]], feats[0], atol=1e-4)


def test_router_shapes_independence_and_temperature():
    torch.manual_seed(0)
    r = MetaRouter(64, ["a", "b", "c"], RouterConfig(hidden=32, mlp_hidden=32)).eval()
    feats, mask = torch.randn(4, 6, 64), torch.ones(4, 6, dtype=torch.bool)
    mask[1, 3:] = False
    p = r.probs(feats, mask)
    assert p.shape == (4, 3) and ((p > 0) & (p < 1)).all()
    # masked tokens are ignored
    f2 = feats.clone()
    f2[1, 3:] = 100.0
    assert torch.allclose(r.probs(f2, mask)[1], p[1])
    # independent sigmoids: probabilities need not sum to one
    assert not torch.allclose(p.sum(-1), torch.ones(4))
    with torch.no_grad():
        r.log_tau.fill_(10.0)
    assert r.temperature().item() == pytest.approx(3.0)
    with torch.no_grad():
        r.log_tau.fill_(-10.0)
    assert r.temperature().item() == pytest.approx(0.3)


def test_policy_min_weight_and_floors():
    p = torch.tensor([[0.10, 0.12, 0.5], [0.9, 0.05, 0.13]])
    w = apply_policy(p, ["chat", "math", "code"], 0.12, {"chat": 0.2})
    assert torch.allclose(w, torch.tensor([[0.2, 0.0, 0.5], [0.9, 0.0, 0.13]]))
    with pytest.raises(RoutingError, match="unknown domain"):
        apply_policy(p, ["chat", "math", "code"], 0.12, {"legal": 0.2})


def test_route_end_to_end_and_reorder(stacked):
    r = MetaRouter(stacked.model.config.hidden_size, ["code", "math"], RouterConfig(hidden=32, mlp_hidden=32))
    w = route(stacked, r, torch.randint(4, 200, (3, 9)))
    assert w.shape == (3, 2)
    mw = weights_for_model(stacked, r.domains, w)
    assert torch.equal(mw[:, 0], w[:, 1]) and torch.equal(mw[:, 1], w[:, 0])  # model order is math, code


def test_route_prompts_is_route_per_prompt(base_dirs):
    """Text and token ids alike, batched and cut to router_tokens, give what route() gives each prompt alone."""
    lb = load_base(base_dirs["llama"], quantize="nf4")
    sm = StackedModel(lb.model, StackConfig(rank=4))
    add_random_stacks(sm, {"math": 1, "code": 1}, dtype="bfloat16")
    torch.manual_seed(0)
    r = MetaRouter(sm.model.config.hidden_size, ["code", "math"], RouterConfig(hidden=32, mlp_hidden=32,
                                                                              router_tokens=6, min_weight=0.5))
    from brainstacks.text import encode_prompt

    texts = ["one two three four five six seven eight nine", "hi", "a b c"]
    ids = [encode_prompt(lb.tokenizer, t) for t in texts]
    alone = torch.cat([route(sm, r, torch.tensor([i[:6]])) for i in ids])  # (3, 2)
    assert torch.allclose(route_prompts(sm, lb.tokenizer, r, texts, batch_size=2), alone, atol=1e-5)
    assert torch.allclose(route_prompts(sm, lb.tokenizer, r, ids), alone, atol=1e-5)
    raw = route_prompts(sm, lb.tokenizer, r, texts, apply=False)
    assert torch.allclose(apply_policy(raw, r.domains, 0.5), alone, atol=1e-5)
    assert ((raw > 0) & (raw < 1)).all() and len(ids[0]) > 6

"""The outcome-based oracle, target mixing and router loss on hand-made loss tables (docs/DESIGN.md §2)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.training.oracle_tables import table_combo_loss
from training.config import RouterTrainConfig
from training.router_targets import (
    greedy_oracle,
    label_vector,
    mix_target,
    router_loss,
    split_by_prompt,
)

D = ["chat", "math", "code"]
S = frozenset


def oracle_search(domains, base: float, single, combos=None, threshold: float = RouterTrainConfig.greedy_threshold):
    """greedy_oracle for one example; combos is a table {frozenset(names): loss} or a function of the set."""
    if combos is None:
        fn = None
    elif callable(combos):
        fn = lambda qs: [combos(c) for _, c in qs]  # noqa: E731
    else:
        fn = table_combo_loss([combos])
    return greedy_oracle(domains, [base], [single], fn, threshold)[0]


def test_no_single_domain_beats_base_gives_empty_oracle():
    assert oracle_search(D, 1.0, {"chat": 1.2, "math": 1.0, "code": 1.5}, {}) == S()


def test_best_single_domain_when_no_addition_helps_enough():
    combos = {S({"math", "chat"}): 0.795, S({"math", "code"}): 0.9}
    # chat lowers by 0.005 only: not > 0.01
    assert oracle_search(D, 1.0, {"chat": 0.95, "math": 0.8, "code": 1.1}, combos) == S({"math"})


def test_greedy_adds_the_best_domain_then_stops():
    single = {"chat": 0.9, "math": 0.7, "code": 1.2}
    combos = {
        S({"math", "chat"}): 0.65,  # -0.05
        S({"math", "code"}): 0.68,  # -0.02 (worse than chat)
        S({"math", "chat", "code"}): 0.645,  # -0.005: not added
    }
    assert oracle_search(D, 1.0, single, combos) == S({"math", "chat"})
    combos[S({"math", "chat", "code"})] = 0.60  # -0.05: added
    assert oracle_search(D, 1.0, single, combos) == S(D)


def test_threshold_is_strict_and_configurable():
    single = {"chat": 0.9, "math": 0.5, "code": 1.2}
    combos = {S({"math", "chat"}): 0.4921875, S({"math", "code"}): 0.6, S(D): 0.7}  # chat: -0.0078125 (exact)
    assert oracle_search(D, 1.0, single, combos) == S({"math"})
    assert oracle_search(D, 1.0, single, combos, threshold=0.0078125) == S({"math"})  # strictly greater only
    assert oracle_search(D, 1.0, single, combos, threshold=0.005) == S({"math", "chat"})
    assert oracle_search(D, 1.0, single, None) == S({"math"})  # no combination table: best single


def test_callable_combination_loss_and_missing_table_entry():
    calls = []

    def combo(c):
        calls.append(c)
        return 0.5 - 0.1 * len(c)

    assert oracle_search(D, 1.0, {"chat": 0.9, "math": 0.45, "code": 1.2}, combo) == S(D)
    assert S({"math", "chat"}) in calls and S({"math", "code"}) in calls
    with pytest.raises(KeyError, match="combination"):
        oracle_search(D, 1.0, {"chat": 0.9, "math": 0.45, "code": 1.2}, {S({"math", "chat"}): 0.1})


def test_batched_oracle_asks_each_round_in_one_call():
    base = [1.0, 1.0, 0.5]
    single = [[0.9, 0.7, 1.2], [0.6, 0.95, 0.99], [0.6, 0.7, 0.8]]  # third: base is best
    tables = [
        {S({"math", "chat"}): 0.6, S({"math", "code"}): 0.69, S(D): 0.7},
        {S({"chat", "math"}): 0.7, S({"chat", "code"}): 0.595},
        {},
    ]
    batches = []
    lookup = table_combo_loss(tables)

    def combo(qs):
        batches.append(list(qs))
        return lookup(qs)

    sets = greedy_oracle(D, base, single, combo)
    assert sets == [S({"math", "chat"}), S({"chat"}), S()]
    assert len(batches) == 2  # round 1: both improving examples together; round 2: only example 0
    assert {i for i, _ in batches[0]} == {0, 1} and len(batches[0]) == 4
    assert batches[1] == [(0, S(D))]
    # dict rows work as well as sequences
    named = [dict(zip(D, r, strict=True)) for r in single]
    assert greedy_oracle(D, base, named, lookup) == sets


def test_targets_mix_oracle_with_labels():
    assert label_vector(["math"], D) == [0.0, 1.0, 0.0]
    assert label_vector(["math", "chat"], D) == [1.0, 1.0, 0.0]
    t = mix_target({"chat", "math"}, {"math"}, D)
    assert t == pytest.approx([0.8, 1.0, 0.0])
    assert mix_target(set(), {"code"}, D) == pytest.approx([0.0, 0.0, 0.2])
    with pytest.raises(KeyError, match="law"):
        label_vector(["law"], D)


def test_router_loss_is_bce_plus_confidence_penalty():
    p = torch.tensor([[0.9, 0.5, 0.3]])
    t = torch.tensor([[1.0, 0.0, 0.2]])
    bce = (
        -sum(
            ti * math.log(pi) + (1 - ti) * math.log(1 - pi) for pi, ti in zip([0.9, 0.5, 0.3], [1, 0, 0.2], strict=True)
        )
        / 3
    )
    pen = (0.0 + 0.3 + 0.1) / 3  # max(0, 0.3 - |p - 0.5|): 0.9 -> 0, 0.5 -> 0.3, 0.3 -> 0.1
    torch.testing.assert_close(router_loss(p, t), torch.tensor(bce + 0.05 * pen), rtol=1e-5, atol=1e-6)
    logits = torch.logit(p)
    torch.testing.assert_close(router_loss(p, t, logits=logits), router_loss(p, t), rtol=1e-5, atol=1e-6)
    # confident correct predictions cost less than undecided ones
    assert router_loss(torch.tensor([[0.99]]), torch.tensor([[1.0]])) < router_loss(
        torch.tensor([[0.6]]), torch.tensor([[1.0]])
    )


def test_split_by_unique_prompt():
    prompts = [f"p{i % 20}" for i in range(100)]
    tr, va = split_by_prompt(prompts, 0.2, seed=0)
    assert sorted(tr + va) == list(range(100))
    assert not {prompts[i] for i in tr} & {prompts[i] for i in va}
    assert len({prompts[i] for i in va}) == 4
    assert split_by_prompt(prompts, 0.2, seed=0) == (tr, va)
    tr2, va2 = split_by_prompt(["a", "a", "b"], 0.0)
    assert tr2 and va2


def test_curriculum_prefix_seeds_reach_the_training_composition():
    """Alone, each domain is worse than the base; together with the domain trained before it, b is best."""
    from tests.training.oracle_tables import table_combo_loss
    from training.router_targets import greedy_oracle

    domains = ["a", "b"]
    table = [{frozenset(["a", "b"]): 1.0, frozenset(["a"]): 3.0, frozenset(["b"]): 3.5}]
    without = greedy_oracle(domains, [2.0], [[3.0, 3.5]], table_combo_loss(table))
    assert without == [frozenset()]  # greedy from singles never starts: the base wins
    seeded = greedy_oracle(domains, [2.0], [[3.0, 3.5]], table_combo_loss(table), seeds=[frozenset(["a", "b"])])
    assert seeded == [frozenset(["a", "b"])]

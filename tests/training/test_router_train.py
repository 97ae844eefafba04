"""Router training on a tiny random base: the batched oracle agrees with exhaustive scoring; separable domains route."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

from brainstacks.config import RouterConfig, StackConfig
from tests.training.oracle_tables import table_combo_loss
from training.config import RouterTrainConfig
from training.data_files import Record
from training.losses import dataset_loss, example_losses
from training.router_examples import build_router_examples, score_oracle
from training.router_targets import greedy_oracle
from training.router_train import fit_router, routing_report

DOMAINS = ["math", "med", "code"]
WORDS = {
    "math": "add sum plus minus times equals math answer".split(),
    "med": "patient drug dose blood heart mg kg".split(),
    "code": "def return print list function value python".split(),
}


def make_stacked(tmp: Path):
    from brainstacks.base import load_base
    from brainstacks.stacks import StackedModel
    from brainstacks.tiny_models import tiny_base

    lb = load_base(tiny_base(tmp / "base", hidden=64, layers=2), quantize="none")
    sm = StackedModel(lb.model, StackConfig(experts=2, top_k=1, rank=4, targets=("q_proj", "v_proj", "down_proj")))
    torch.manual_seed(0)
    for d in DOMAINS:  # random frozen stacks so every composition changes the losses
        sm.add_domain(d)
        sm.start_stack(d)
        for mod in sm.active_modules().values():
            mod.B.data.normal_(0, 0.5)
        sm.freeze_active()
    return sm, lb.tokenizer


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    return make_stacked(tmp_path_factory.mktemp("router"))


def records(domain: str, n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.choices(WORDS[domain], k=rng.randint(3, 6))
        out.append(
            Record(Path(f"{domain}.jsonl"), i + 1, {"prompt": " ".join(words), "completion": " ".join(words[:2])})
        )
    return out


def test_batched_oracle_matches_exhaustive_scoring(stacked):
    sm, tok = stacked
    recs = {d: ("prompt_completion", records(d, 4, seed=i)) for i, d in enumerate(DOMAINS)}
    cfg = RouterTrainConfig(oracle_samples=3, examples_per_domain=4, greedy_threshold=0.0)
    exs = build_router_examples(recs, [(["math", "med"], "prompt_completion", records("math", 2, 9))], tok, 32, cfg)
    assert len(exs) == 14 and sum(e.scored for e in exs) == 9
    assert [sorted(e.labels) for e in exs[-2:]] == [["math", "med"]] * 2
    sets = score_oracle(sm, exs, DOMAINS, cfg, batch_size=4, progress=False)
    scored = [e.example for e in exs if e.scored]
    # exhaustive: every combination's loss, one forward per combination
    combos = [frozenset(c) for r in range(1, 4) for c in itertools.combinations(DOMAINS, r)]
    table = {c: example_losses(sm, scored, sm.weights_tensor(dict.fromkeys(c, 1.0))[0]) for c in combos}
    base = example_losses(sm, scored, base_only=True)
    single = [[float(table[frozenset([d])][i]) for d in DOMAINS] for i in range(len(scored))]
    per_ex = [{c: float(table[c][i]) for c in combos} for i in range(len(scored))]
    prefixes = [frozenset(DOMAINS[:k]) for k in range(2, len(DOMAINS) + 1)]  # the curriculum seeds
    expected = greedy_oracle(DOMAINS, base.tolist(), single, table_combo_loss(per_ex), 0.0, seeds=prefixes)
    assert sets == expected
    assert any(len(s) >= 2 for s in sets)  # random stacks: some combinations help, so the greedy search ran
    torch.testing.assert_close(base, example_losses(sm, scored, torch.zeros(3)), rtol=1e-5, atol=1e-5)


def test_router_learns_separable_domains_and_reports(stacked):
    sm, tok = stacked
    recs = {d: ("prompt_completion", records(d, 40, seed=10 + i)) for i, d in enumerate(DOMAINS)}
    cfg = RouterTrainConfig(oracle_samples=0, examples_per_domain=40, epochs=30)  # labels only: random stacks
    exs = build_router_examples(recs, [], tok, 32, cfg)
    fit = fit_router(sm, tok, exs, RouterConfig(hidden=64, mlp_hidden=64), cfg, seed=0, progress=False)
    rep = fit.report
    assert rep["overall_accuracy"] >= 0.9, rep["confusion"]
    assert set(rep["confusion"]) == set(DOMAINS) and sum(sum(r.values()) for r in rep["confusion"].values()) > 0
    assert fit.history[fit.best_epoch]["valid_loss"] == min(h["valid_loss"] for h in fit.history)
    assert fit.history[-1]["train_loss"] < fit.history[1]["train_loss"]
    # held-out prompts through the serving code path put the top weight on the right domain
    from brainstacks.router import route
    from brainstacks.text import encode_prompt

    for i, d in enumerate(DOMAINS):
        for rec in records(d, 3, seed=100 + i):
            ids = torch.tensor([encode_prompt(tok, rec.data["prompt"])])
            w = route(sm, fit.router, ids, apply=False)
            assert fit.router.domains[int(w.argmax())] == d, (rec.data["prompt"], w)


def test_routing_report_counts():
    from training.router_examples import RouterExample

    exs = [
        RouterExample("a", frozenset(["math"])),
        RouterExample("b", frozenset(["med"])),
        RouterExample("c", frozenset(["med"])),
        RouterExample("d", frozenset(["math", "med"])),
    ]
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.3], [0.2, 0.7], [0.6, 0.6]])
    rep = routing_report(probs, exs, ["math", "med"])
    assert rep["confusion"] == {"math": {"math": 1, "med": 0}, "med": {"math": 1, "med": 1}}
    assert rep["accuracy"] == {"math": 1.0, "med": 0.5} and rep["overall_accuracy"] == pytest.approx(2 / 3)
    assert rep["mean_weight"]["med"]["med"] == pytest.approx((0.3 + 0.7 + 0.6) / 3)


def test_dataset_loss_is_token_weighted(stacked):
    sm, tok = stacked
    from training.tokenization import tokenize_sft

    a = tokenize_sft(tok, {"prompt": "add", "completion": "sum plus minus times"}, "prompt_completion")
    b = tokenize_sft(tok, {"prompt": "add", "completion": "sum"}, "prompt_completion")
    la, lb_ = example_losses(sm, [a, b], None).tolist()
    na, nb = a.n_label_tokens, b.n_label_tokens
    assert dataset_loss(sm, [a, b]) == pytest.approx((la * na + lb_ * nb) / (na + nb), rel=1e-5)


def test_router_examples_from_chat_and_text_records(tiny_tok):
    from training.tokenization import IGNORE_INDEX

    tok = tiny_tok
    msgs = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "two plus two"},
        {"role": "assistant", "content": "four"},
    ]
    recs = {
        "chat": ("messages", [Record(Path("c.jsonl"), 1, {"messages": msgs})]),
        "prose": ("text", [Record(Path("t.jsonl"), 1, {"text": "the patient has a fever"})]),
    }
    cfg = RouterTrainConfig(oracle_samples=1, examples_per_domain=5)
    chat, prose = build_router_examples(recs, [], tok, 64, cfg)
    assert chat.prompt.endswith("<|user|>\ntwo plus two\n<|assistant|>\n") and chat.labels == {"chat"}
    answer = [i for i, lab in zip(chat.example.input_ids, chat.example.labels, strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(answer) == "four</s>\n"  # only the answer to the routed prompt
    assert prose.prompt == "the patient" and prose.scored
    answer = [i for i, lab in zip(prose.example.input_ids, prose.example.labels, strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(answer) == " has a fever</s>"


def test_targets_mix_oracle_labels_and_mixed_sets():
    from training.router_examples import RouterExample, targets_of

    exs = [
        RouterExample("a", frozenset(["math"]), scored=True, oracle=frozenset(["math", "code"])),
        RouterExample("b", frozenset(["med"]), scored=True, oracle=frozenset()),
        RouterExample("c", frozenset(["code"])),  # not scored: one-hot label
        RouterExample("d", frozenset(["math", "med"])),  # mixed set: multi-hot
    ]
    t = targets_of(exs, DOMAINS, 0.8)
    torch.testing.assert_close(t, torch.tensor([[1.0, 0.0, 0.8], [0.0, 0.2, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))


def test_unscored_examples_take_their_domains_typical_oracle_set():
    from training.router_examples import RouterExample, propagate_oracle, targets_of

    both, alone = frozenset(["math", "med"]), frozenset(["med"])
    scored = [RouterExample(f"s{i}", frozenset(["med"]), scored=True, oracle=o) for i, o in
              enumerate([both, both, alone])]
    twin = RouterExample("s0 raw", frozenset(["med"]), twin=scored[2])  # keeps its own twin's verdict
    rest = [RouterExample("u", frozenset(["med"])), RouterExample("v", frozenset(["med"]), held_out=True),
            RouterExample("w", frozenset(["code"])), RouterExample("x", frozenset(["math", "code"]))]
    typical = propagate_oracle([*scored, twin, *rest])
    assert typical == {"med": both}  # the most frequent verdict; code has no scored example
    assert rest[0].propagated == both and rest[1].propagated == both and twin.propagated is None
    assert rest[2].propagated is None and rest[3].propagated is None  # no verdict / several labels: keep the label
    t = targets_of([scored[2], twin, *rest], DOMAINS, 0.8)
    torch.testing.assert_close(t, torch.tensor([
        [0.0, 1.0, 0.0], [0.0, 1.0, 0.0],  # scored alone, and its twin
        [0.8, 1.0, 0.0], [0.8, 1.0, 0.0],  # unscored and held out: 0.8 * {math, med} + 0.2 * {med}
        [0.0, 0.0, 1.0], [1.0, 0.0, 1.0],
    ]))  # fmt: skip

"""The inner loop: best-snapshot restore, round stopping and discarding, and the DPO stage."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from brainstacks.base import load_base
from brainstacks.config import StackConfig
from brainstacks.stacks import StackedModel
from brainstacks.tiny_models import tiny_base
from tests.toy_recipes import TOY_DOMAINS
from training.boosting import train_domain, validation_loss
from training.config import TrainConfig
from training.data_files import Record
from training.tokenization import DomainData, pad_id_of, tokenize_records


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("b") / "base")


def toy(tokenizer, name: str, n: int, stage: str = "sft") -> DomainData:
    r = random.Random(name)
    rows = []
    for _ in range(n):
        p, c = TOY_DOMAINS[name](r)
        rows.append({"prompt": p, "chosen": c, "rejected": "return list"} if stage == "dpo" else {"prompt": p,
                                                                                                  "completion": c})
    recs = [Record(Path("<toy>"), i + 1, row) for i, row in enumerate(rows)]
    fmt = "preference" if stage == "dpo" else "prompt_completion"
    ex = tokenize_records(tokenizer, recs, fmt, 32, stage)
    return DomainData(name, fmt, ex[: n - 8], ex[n - 8 :], recs[: n - 8], recs[n - 8 :])


def test_rounds_snapshot_and_stopping(base):
    lb = load_base(base, quantize="nf4")
    sm = StackedModel(lb.model, StackConfig(rank=4))
    data = toy(lb.tokenizer, "math", 40)
    cfg = TrainConfig(steps_per_round=10, max_rounds=3, min_improvement=0.5, lr=3e-3, batch_size=8, eval_every=2,
                      seq_len=32)
    res = train_domain(sm, data, cfg, pad_id=pad_id_of(lb.tokenizer), progress=False, log=lambda _: None)
    first = res.rounds[0]
    assert first.kept and first.best_val < first.start_val
    # the restored snapshot is the best one seen: the loss now equals the recorded best (up to bf16 storage rounding)
    assert validation_loss(sm, data, cfg, pad_id_of(lb.tokenizer), "sft") == pytest.approx(res.val_after, abs=5e-3)
    # a demanding min_improvement stops after the round that fails it, and that round is discarded
    assert len(res.rounds) < 3 or all(r.kept for r in res.rounds)
    kept = [r for r in res.rounds if r.kept]
    assert sm.num_stacks("math") == len(kept) and sm.active_domain is None
    if len(res.rounds) > 1:
        assert not res.rounds[-1].kept or res.rounds[-1].start_val - res.rounds[-1].best_val >= 0.5


def test_dpo_stage_prefers_chosen(base):
    lb = load_base(base, quantize="nf4")
    sm = StackedModel(lb.model, StackConfig(rank=4))
    data = toy(lb.tokenizer, "medical", 40, stage="dpo")
    cfg = TrainConfig(steps_per_round=12, lr=5e-3, batch_size=8, eval_every=3, seq_len=32, dpo_beta=0.5)
    res = train_domain(sm, data, cfg, stage="dpo", pad_id=pad_id_of(lb.tokenizer), progress=False, log=lambda _: None)
    assert len(res.rounds) == 1 and res.rounds[0].kept
    assert res.val_after < res.val_before  # DPO validation loss falls from log(2)
    assert res.val_before == pytest.approx(0.6931, abs=1e-3)  # a new stack is a no-op: policy == reference
    assert sm.num_stacks("medical") == 1


def test_batches_see_every_row_once_an_epoch_next_to_rows_of_its_length():
    from training.boosting import LENGTH_POOL, _batches
    from training.tokenization import Collator, SFTExample

    rng = random.Random(3)
    lengths = [rng.randint(5, 200) for _ in range(8 * LENGTH_POOL * 3)]  # three pools of 8-row batches
    rows = [SFTExample([k + 1] * n, [k + 1] * n) for k, n in enumerate(lengths)]  # token = row id + 1
    gen = _batches(rows, 8, Collator(0), seed=0)
    epoch = [next(gen) for _ in range(len(rows) // 8)]
    seen = sorted(int(b["input_ids"][r, 0]) - 1 for b in epoch for r in range(8))
    assert seen == list(range(len(rows)))  # every row once
    padded = sum(b["attention_mask"].numel() for b in epoch)
    real = sum(int(b["attention_mask"].sum()) for b in epoch)
    shuffled = list(range(len(rows)))
    random.Random(0).shuffle(shuffled)
    at_random = sum(8 * max(lengths[i] for i in shuffled[s : s + 8]) for s in range(0, len(rows), 8))
    assert padded < 1.15 * real < at_random  # random batches pad ~1.5x here
    firsts = [int(b["input_ids"][0, 0]) for b in epoch]
    assert firsts != sorted(firsts, key=lambda t: lengths[t - 1])  # the batches themselves are not in length order
    nxt = [next(gen) for _ in range(len(rows) // 8)]  # the next epoch is another order
    assert [int(b["input_ids"][0, 0]) for b in nxt] != firsts

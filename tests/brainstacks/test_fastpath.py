"""The fused decoder (brainstacks/fastpath.py) against transformers' own forward, and its slot KV cache.

Tolerance: with the float32 kernel (CPUs without native bf16) the fused logits match the eager model's to 1e-3 of
their largest magnitude (measured: at most 3e-4, on qwen2 with its q/k/v biases); with a bf16 kernel (oneDNN on
AMX / AVX512-BF16 CPUs) to 5e-2 (bf16 keeps 8 bits of mantissa). Greedy tokens agree on both.
"""

from __future__ import annotations

import pytest
import torch

from brainstacks.base import load_base
from brainstacks.config import StackConfig
from brainstacks.fastpath import FusedDecoder, unsupported_reason
from brainstacks.kvcache import SlotKV
from brainstacks.stacks import StackedModel
from brainstacks.tiny_models import add_random_stacks, tiny_base

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [12, 13], [20, 21, 22, 23, 24]]
WEIGHTS = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [0.3, 1.0, 0.0]])  # distinct mixes, one base-only row


def tolerance(dec: FusedDecoder) -> float:
    return 1e-3 if dec.kernel == "fp32" else 5e-2


@pytest.fixture(scope="module")
def family_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused_bases")
    return {f: tiny_base(root / f, family=f) for f in ("llama", "qwen2", "qwen3", "mistral")}


def stacked(path, quantize):
    lb = load_base(path, quantize=quantize, dtype="float32", device="cpu")
    sm = StackedModel(lb.model, StackConfig(experts=4, rank=4, top_k=2))
    add_random_stacks(sm, {"a": 1, "b": 2, "c": 1}, dtype="bfloat16", std=0.2)
    return lb.model, sm


def greedy(dec, prompts, weights, steps):
    R = dec.routing(weights)
    kv, logits = dec.prefill(prompts, R)
    out, last = [logits], logits.argmax(-1)
    seqs = [[int(t)] for t in last]
    for _ in range(steps):
        logits = dec.decode(last, kv, R)
        out.append(logits)
        last = logits.argmax(-1)
        for s, t in zip(seqs, last, strict=True):
            s.append(int(t))
    return seqs, out


@pytest.mark.parametrize("quantize", ["none", "nf4"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_fused_matches_the_eager_model_with_per_row_mixes(family_bases, family, quantize):
    model, sm = stacked(family_bases[family], quantize)
    dec = FusedDecoder(model, sm)
    seqs, logits = greedy(dec, PROMPTS, WEIGHTS, steps=6)
    tol = tolerance(dec)
    for i, p in enumerate(PROMPTS):
        with torch.no_grad(), sm.routing(WEIGHTS[i : i + 1]):
            ref = model(input_ids=torch.tensor([p + seqs[i][:-1]])).logits[0, len(p) - 1 :]  # every decoded position
        assert ref.argmax(-1).tolist() == seqs[i], f"{family}/{quantize} row {i}: greedy tokens differ"
        ours = torch.stack([lg[i] for lg in logits])
        err = float((ours - ref).abs().max() / ref.abs().max())
        assert err < tol, f"{family}/{quantize} row {i}: relative logit error {err:.2e} >= {tol}"


def test_batched_rows_equal_solo_rows_and_zero_weight_is_the_base(family_bases):
    model, sm = stacked(family_bases["llama"], "nf4")
    dec = FusedDecoder(model, sm)
    batched, blogits = greedy(dec, PROMPTS, WEIGHTS, steps=5)
    for i, p in enumerate(PROMPTS):
        solo, slogits = greedy(dec, [p], WEIGHTS[i : i + 1], steps=5)
        assert solo[0] == batched[i]
        for b, s in zip(blogits, slogits, strict=True):
            torch.testing.assert_close(b[i], s[0], rtol=0, atol=1e-4)
    base = FusedDecoder(model, None)  # no stacks at all
    plain, _ = greedy(base, [PROMPTS[1]], None, steps=5)
    assert plain[0] == batched[1]  # row 1 has weight 0 everywhere: the base model's tokens


def test_unsupported_families_are_named():
    from transformers import AutoModelForCausalLM

    from brainstacks.tiny_models import tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("gemma2"))
    assert "gemma2" in unsupported_reason(model)
    with pytest.raises(NotImplementedError, match="gemma2"):
        FusedDecoder(model)


def _filled(rows, lengths):
    kv = SlotKV(2, 1, 4, rows=rows, capacity=8, dtype=torch.float32, device="cpu")
    for b in range(rows):
        kv.K[:, b] = float(b + 1)
        kv.V[:, b] = -float(b + 1)
    kv.set_lengths(lengths)
    return kv



def test_slot_cache_select_moves_rows_into_holes_and_reports_the_order():
    kv = _filled(5, [3, 4, 5, 6, 7])
    order = kv.select([0, 2, 4])
    assert sorted(order) == [0, 2, 4] and len(kv) == 3
    for slot, old in enumerate(order):
        assert float(kv.K[0, slot, 0, 0, 0]) == old + 1 and float(kv.V[1, slot, 0, 0, 0]) == -(old + 1)
        assert kv.host_lengths[slot] == [3, 4, 5, 6, 7][old]
    assert kv.lengths.tolist() == kv.host_lengths


def test_slot_cache_extend_grows_slots_and_capacity_and_take_repeats_rows():
    a, b = _filled(1, [3]), _filled(2, [5, 2])
    b.reserve(71)  # b needs more columns than a holds
    b.set_lengths([70, 2])
    with torch.inference_mode():
        b.K[:, :, :, 64:71] = 9.0
    a.extend(b)
    assert len(a) == 3 and a.slots >= 3 and a.capacity >= 71 and a.host_lengths == [3, 70, 2]
    assert float(a.K[0, 1, 0, 69, 0]) == 9.0 and float(a.K[0, 0, 0, 0, 0]) == 1.0
    t = a.take([2, 2, 0])
    assert t.host_lengths == [2, 2, 3] and float(t.K[0, 1, 0, 0, 0]) == float(a.K[0, 2, 0, 0, 0])

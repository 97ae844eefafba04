"""StackedModel bookkeeping: domains, one active stack, freezing, attach/detach, base weights untouched."""

from __future__ import annotations

import pytest
import torch

from brainstacks.base import load_base
from brainstacks.config import StackConfig
from brainstacks.errors import RoutingError, StackFormatError
from brainstacks.stacks import StackedModel
from brainstacks.tiny_models import add_random_stacks, randomize_active


def base_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "base_layer" in k or "embed" in k or "norm" in k}


def test_domains_stacks_and_base_untouched(base_dirs):
    lb = load_base(base_dirs["llama"], quantize="none")
    before = {k: v.clone() for k, v in lb.model.state_dict().items()}
    sm = StackedModel(lb.model, StackConfig(rank=4))
    sm.add_domain("math")
    params = sm.start_stack("math")
    assert params and all(p.requires_grad for p in params)
    with pytest.raises(StackFormatError, match="already active"):
        sm.start_stack("math")
    randomize_active(sm)
    domain, k = sm.freeze_active()
    assert (domain, k) == ("math", 0) and sm.active_domain is None
    layer = next(iter(sm.layers.values()))
    from brainstacks.dtypes import packed_dtype

    # compact bf16 storage by default; computed in float32 on a CPU without native bf16 (40x faster there)
    assert layer.AW.dtype == packed_dtype(torch.bfloat16, layer.AW.device) and not layer.AW.requires_grad
    t = sm.stack_tensors("math", 0)
    assert all(v.dtype == torch.bfloat16 for v in t.values())
    sm.add_domain("code")
    sm.attach_stack("code", t)
    assert sm.stacks == [("math", 0), ("code", 0)]
    assert torch.equal(sm.stack_tensors("code", 0)[next(iter(t))], t[next(iter(t))])
    sm.remove_domain("math")
    assert sm.domains == ["code"] and sm.stacks == [("code", 0)]
    after = lb.model.state_dict()
    for key, v in before.items():
        wrapped = key.replace("q_proj.", "q_proj.base_layer.").replace("k_proj.", "k_proj.base_layer.")
        for name in ("v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            wrapped = wrapped.replace(f"{name}.", f"{name}.base_layer.")
        assert torch.equal(after[wrapped], v), key


def test_stack_order_follows_domain_order(base_dirs):
    lb = load_base(base_dirs["llama"], quantize="none")
    sm = StackedModel(lb.model, StackConfig(rank=4, frozen_dtype="float32"))
    add_random_stacks(sm, {"a": 1, "b": 1})
    t = sm.stack_tensors("a", 0)
    sm.attach_stack("a", t)  # a second stack of the first domain is packed before b's
    assert sm.stacks == [("a", 0), ("a", 1), ("b", 0)]
    assert all(torch.equal(sm.stack_tensors("a", 1)[n], t[n]) for n in t)


def test_bad_input_is_refused(base_dirs):
    lb = load_base(base_dirs["llama"], quantize="none")
    sm = StackedModel(lb.model, StackConfig(rank=4))
    with pytest.raises(StackFormatError, match="invalid domain name"):
        sm.add_domain("../evil")
    sm.add_domain("a")
    with pytest.raises(RoutingError, match="unknown domain"):
        sm.start_stack("b")
    add_random_stacks(sm, {"a": 1})
    t = sm.stack_tensors("a", 0)
    bad = dict(t)
    key = next(k for k in bad if k.endswith(".A"))
    bad[key] = bad[key][:, :2]
    with pytest.raises(StackFormatError, match="shape"):
        sm.attach_stack("a", bad)
    missing = dict(t)
    missing.pop(key)
    with pytest.raises(StackFormatError, match="missing tensor"):
        sm.attach_stack("a", missing)
    with pytest.raises(RoutingError, match="shape"):
        sm.set_weights(torch.ones(2, 3))
    with pytest.raises(RoutingError, match=">= 0"):
        sm.set_weights(torch.tensor([[-1.0]]))
    with pytest.raises(StackFormatError, match="already wrapped"):
        StackedModel(lb.model, StackConfig(rank=4))


def test_active_stack_trains_and_snapshot_restores(base_dirs):
    lb = load_base(base_dirs["llama"], quantize="nf4")
    sm = StackedModel(lb.model, StackConfig(rank=4))
    sm.add_domain("a")
    params = sm.start_stack("a")
    snap = sm.active_state()
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.randint(4, 200, (4, 8))
    lb.model.train()
    losses = []
    for _ in range(8):
        out = lb.model(ids, labels=ids)
        loss = out.loss + sm.config.aux_loss_coef * sm.aux_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]  # trains through the NF4 base on CPU
    sm.load_active_state(snap)
    assert all(torch.equal(v, sm.active_state()[k]) for k, v in snap.items())


def test_attach_many_packs_once_and_clear(base_dirs):
    lb = load_base(base_dirs["llama"], quantize="none")
    sm = StackedModel(lb.model, StackConfig(rank=4, frozen_dtype="float32"))
    add_random_stacks(sm, {"a": 1, "b": 1})
    ta, tb = sm.stack_tensors("a", 0), sm.stack_tensors("b", 0)
    sm.clear()
    assert sm.domains == [] and sm.stacks == []
    sm.add_domain("b")
    sm.add_domain("a")
    packs = []
    layer = next(iter(sm.layers.values()))
    orig = layer.pack
    layer.pack = lambda stacks: (packs.append(len(stacks)), orig(stacks))[1]
    assert sm.attach_stacks([("a", ta), ("b", tb), ("a", ta)]) == [0, 0, 1]
    assert packs == [3]  # one repack for the three stacks
    assert sm.stacks == [("b", 0), ("a", 0), ("a", 1)]  # domain order, then k
    assert all(torch.equal(sm.stack_tensors("a", 1)[n], ta[n]) for n in ta)


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_bf16_stacks_compute_in_fp32_on_cpus_without_bf16(base_dirs, monkeypatch, fast_bf16):
    """Stored (and saved) in bf16 either way; packed in float32 where the CPU would emulate bf16 (40x slower)."""
    import brainstacks.dtypes as dtypes_mod

    monkeypatch.setattr(dtypes_mod, "cpu_has_fast_bf16", lambda: fast_bf16)
    lb = load_base(base_dirs["llama"], quantize="none")
    sm = StackedModel(lb.model, StackConfig(rank=4))
    sm.add_domain("math")
    sm.start_stack("math")
    randomize_active(sm)
    sm.freeze_active()
    layer = next(iter(sm.layers.values()))
    assert layer.AW.dtype == (torch.bfloat16 if fast_bf16 else torch.float32)
    t = sm.stack_tensors("math", 0)
    assert all(v.dtype == torch.bfloat16 for v in t.values())  # bundles keep their size
    sm.add_domain("code")
    sm.attach_stack("code", t)  # a bf16 stack joins the packed ones (no dtype-mix refusal)
    assert all(torch.equal(sm.stack_tensors("code", 0)[n], t[n]) for n in t)  # exact round trip
    with pytest.raises(StackFormatError, match="mix dtypes"):
        sm.attach_stack("code", {n: v.float() for n, v in t.items()})


def test_bf16_packing_on_a_fast_bf16_cpu_keeps_a_float32_copy_for_small_calls(base_dirs, monkeypatch):
    """Decode-sized calls (<= SMALL_CALL_ROWS rows) compute on the float32 copy (bf16 matmuls of a few rows are
    slower than fp32 even with AMX), larger ones on the bf16 packing; both agree with the loop reference, and the
    copy follows every repack and subset."""
    import brainstacks.dtypes as dtypes_mod
    from brainstacks.layer import SMALL_CALL_ROWS
    from brainstacks.reference import reference_forward

    monkeypatch.setattr(dtypes_mod, "cpu_has_fast_bf16", lambda: True)
    lb = load_base(base_dirs["llama"], quantize="none")
    sm = StackedModel(lb.model, StackConfig(rank=4))
    add_random_stacks(sm, {"a": 1, "b": 2}, dtype="bfloat16")
    layer = next(iter(sm.layers.values()))
    assert layer.AW.dtype == torch.bfloat16 and layer.fp32_copy[0].dtype == torch.float32
    assert torch.equal(layer.fp32_copy[0], layer.AW.float()) and torch.equal(layer.fp32_copy[1], layer.BT.float())
    w = torch.tensor([[0.0, 0.8], [0.0, 0.3]])  # domain b only: a subset of the packing
    calls = []
    real = layer._packing

    def spy(sel, small):
        out = real(sel, small)
        calls.append(out[0].dtype)
        return out

    monkeypatch.setattr(layer, "_packing", spy)
    for T, dtype in ((1, torch.float32), (SMALL_CALL_ROWS, torch.bfloat16)):  # 2 rows x T tokens
        calls.clear()
        x = torch.randn(2, T, layer.in_features)
        with torch.no_grad(), sm.routing(w):
            fused = layer(x)
            with reference_forward(sm):
                ref = layer(x)
        assert set(calls) == {dtype}
        assert ((fused - ref).norm() / ref.norm()).item() < 1e-2  # bf16 reference: its own rounding
    assert all(v.dtype == torch.bfloat16 for v in sm.stack_tensors("b", 1).values())  # saved in bf16

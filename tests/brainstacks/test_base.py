"""load_base: families, quantisation kinds, fingerprints, and clear refusals."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from brainstacks.base import fingerprint_mismatches, load_base
from brainstacks.errors import BaseModelError, ConfigError
from brainstacks.tiny_models import tiny_base


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("quantize", ["nf4", "none"])
def test_load_families(base_dirs, family, quantize):
    lb = load_base(base_dirs[family], quantize=quantize)
    layer0 = lb.model.model.layers[0]
    q = layer0.self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit if quantize == "nf4" else nn.Linear)
    if quantize == "nf4":
        assert q.weight.quant_type == "nf4" and q.weight.quant_state.nested  # double quantisation
    assert len(lb.fingerprint["targets"]) == 7 * 2
    assert all(not p.requires_grad for p in lb.model.parameters())
    ids = lb.tokenizer("the patient dose is 5 mg", return_tensors="pt").input_ids
    assert torch.isfinite(lb.model(ids).logits).all()


def test_fp4_and_fingerprint_is_quantization_independent(base_dirs):
    a = load_base(base_dirs["llama"], quantize="fp4")
    b = load_base(base_dirs["llama"], quantize="none")
    assert a.model.model.layers[0].mlp.down_proj.weight.quant_type == "fp4"
    assert a.fingerprint == b.fingerprint
    c = load_base(base_dirs["qwen2"], quantize="none")
    assert fingerprint_mismatches(a.fingerprint, c.fingerprint)  # other architecture → differences named


def test_nf4_close_to_full_precision(base_dirs):
    full = load_base(base_dirs["llama"], quantize="none").model
    q = load_base(base_dirs["llama"], quantize="nf4").model
    ids = torch.randint(4, 100, (2, 6))
    a, b = full(ids).logits, q(ids).logits
    rel = (a - b).norm() / a.norm()
    assert 0 < rel < 0.2  # quantised (not identical), but close


def test_refusals(tmp_path):
    with pytest.raises(BaseModelError, match="no config.json"):
        load_base(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="quantize"):
        load_base(tmp_path, quantize="int3")
    odd = tiny_base(tmp_path / "odd", intermediate=100)  # gate/up out_features 100: not a multiple of 32
    with pytest.raises(BaseModelError, match="divisible by 32.*gate_proj|divisible by 32.*up_proj"):
        load_base(odd, quantize="nf4")
    assert load_base(odd, quantize="none").model is not None


def test_gradient_through_nf4_base_is_exact_after_an_eval_pass(base_dirs):
    """bitsandbytes repacks 4-bit weights for an inference kernel without autograd after an eval pass on AVX512-BF16
    CPUs; start_stack must undo that, so stack gradients equal those through the same weights held dense."""
    import bitsandbytes as bnb

    from brainstacks.config import StackConfig
    from brainstacks.stacks import StackedModel
    from brainstacks.tiny_models import randomize_active

    ids = torch.randint(4, 200, (2, 6))

    def build(quantize):
        lb = load_base(base_dirs["llama"], quantize=quantize)
        sm = StackedModel(lb.model, StackConfig(rank=4))
        sm.add_domain("a")
        return lb, sm

    lb, sm = build("nf4")
    lb.model.eval()
    with torch.no_grad():
        lb.model(ids)  # may repack the 4-bit weights
    torch.manual_seed(0)
    sm.start_stack("a")
    randomize_active(sm)
    dense_lb, dense_sm = build("none")
    with torch.no_grad():  # the dense twin holds exactly the dequantized 4-bit weights and the same stack
        for path, lay in sm.layers.items():
            w = bnb.functional.dequantize_4bit(lay.base_layer.weight.data, lay.base_layer.weight.quant_state)
            dense_sm.layers[path].base_layer.weight.copy_(w)
    dense_sm.start_stack("a")
    dense_sm.load_active_state(sm.active_state())
    grads = []
    for model, s in ((lb.model, sm), (dense_lb.model, dense_sm)):
        model.train()
        for m in s.active_modules().values():
            m.eval()  # no gate noise: both runs route identically (grads still flow)
        model(ids, labels=ids).loss.backward()
        grads.append(torch.cat([m.A.grad.flatten() for m in s.active_modules().values()]))
    assert ((grads[0] - grads[1]).norm() / grads[1].norm()).item() < 1e-3

"""int8 storage of frozen stacks (`frozen_dtype = "int8"`): bounded rounding, half the bytes of bfloat16 on disk,
the loaded bundle serving exactly the values training froze, and refusals of files that do not match the config."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from brainstacks import int8_storage
from brainstacks.base import load_base
from brainstacks.bundle import DomainEntry, Manifest, load_bundle, next_version, save_stack, write_manifest
from brainstacks.config import StackConfig, parse_dtype
from brainstacks.errors import BundleError
from brainstacks.files import sha256_file
from brainstacks.stacks import StackedModel
from brainstacks.tiny_models import randomize_active


def test_round_trip_error_is_bounded_per_row_and_scales_are_few():
    g = torch.Generator().manual_seed(0)
    t = {"A": torch.randn(4, 8, 300, generator=g) * torch.linspace(0.01, 3.0, 8).view(1, 8, 1),
         "B": torch.randn(4, 96, 8, generator=g) * 0.02}
    q = int8_storage.quantize(t)
    assert q["A"].dtype == torch.int8 and q["A" + int8_storage.SCALE_SUFFIX].shape == (4, 8, 1)
    assert q["B" + int8_storage.SCALE_SUFFIX].shape == (4, 1, 8)  # reduced over d_out, the largest dimension
    back = int8_storage.dequantize(q, torch.float32, "t")
    for name, axis in (("A", 2), ("B", 1)):
        bound = t[name].abs().amax(dim=axis, keepdim=True) / 254 + 1e-7
        assert bool(((back[name] - t[name]).abs() <= bound).all()), name
    # the small-range rows keep their own precision: a global scale would lose the 0.01 rows entirely
    assert (back["A"][:, 0] - t["A"][:, 0]).abs().max() < 3e-4  # a global scale: steps of ~0.04


def _bundle(base_dir, out, frozen_dtype):
    lb = load_base(base_dir, quantize="none")
    sm = StackedModel(lb.model, StackConfig(rank=4, frozen_dtype=frozen_dtype))
    sm.add_domain("math")
    sm.start_stack("math")
    randomize_active(sm, std=0.05, seed=3)
    sm.freeze_active()
    rel = save_stack(out, "math", 0, sm.stack_tensors("math", 0), {"val_loss": 1.0}, frozen_dtype)
    write_manifest(out, Manifest(version=next_version(out), base={"path": str(base_dir), "fingerprint": lb.fingerprint},
                                 stack_config=sm.config.to_dict(), domains=[DomainEntry("math", [rel])], router=None))
    return lb, sm, out / rel / "stack.safetensors"


def test_int8_bundle_is_half_the_bytes_and_serves_what_training_froze(base_dirs, tmp_path):
    lb, sm, f8 = _bundle(base_dirs["llama"], tmp_path / "int8", "int8")
    _, _, f16 = _bundle(base_dirs["llama"], tmp_path / "bf16", "bfloat16")
    assert f8.stat().st_size < 0.62 * f16.stat().st_size
    stored = load_file(str(f8))
    assert {t.dtype for n, t in stored.items() if not n.endswith(int8_storage.SCALE_SUFFIX)} == {torch.int8}
    assert json.loads((f8.parent / "stack.json").read_text())["dtype"] == "int8"
    ids = torch.randint(4, 200, (2, 9), generator=torch.Generator().manual_seed(1))
    w = torch.ones(2, 1)
    with torch.no_grad(), sm.routing(w):
        want = lb.model(ids).logits
    served = load_bundle(tmp_path / "int8", quantize="none")
    assert served.stacked.stack_tensors("math", 0)["model.layers.0.self_attn.q_proj.A"].dtype == parse_dtype("int8")
    with torch.no_grad(), served.stacked.routing(w):
        got = served.base.model(ids).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    with torch.no_grad(), served.stacked.base_only():
        base_logits = served.base.model(ids).logits
    assert (got - base_logits).abs().max() > 1e-3  # the stack does something


def test_files_that_do_not_match_the_config_are_refused(base_dirs, tmp_path):
    _bundle(base_dirs["llama"], tmp_path / "bf16", "bfloat16")
    m = json.loads((tmp_path / "bf16/manifest.json").read_text())
    m["stack_config"]["frozen_dtype"] = "int8"
    (tmp_path / "bf16/manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="stored unquantized, but the bundle's stack_config.frozen_dtype is 'int8'"):
        load_bundle(tmp_path / "bf16", quantize="none")

    _, _, f8 = _bundle(base_dirs["llama"], tmp_path / "int8", "int8")
    tensors = load_file(str(f8))
    name = next(n for n in tensors if n.endswith(int8_storage.SCALE_SUFFIX))
    del tensors[name]
    save_file(tensors, str(f8))
    meta = json.loads((f8.parent / "stack.json").read_text())
    meta["sha256"] = sha256_file(f8)
    (f8.parent / "stack.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"has no \.int8_scale scales"):
        load_bundle(tmp_path / "int8", quantize="none")

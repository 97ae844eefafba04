"""PEFT LoRA adapters as frozen stacks (brainstacks/adapters.py, brainstacks/lora.py), against the real `peft`
library on tiny random bases of two families: PEFT's own logits, the weighted sum of two adapters, batched against
solo beside trained stacks, and every refusal leaving the bundle as it was."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from brainstacks.adapters import import_adapter, remove_domain_version
from brainstacks.bundle import load_bundle, read_manifest, resolve_bundle_dir
from brainstacks.errors import AdapterError
from brainstacks.tiny_models import tiny_base
from tests.peft_adapters import make_adapter

peft = pytest.importorskip("peft")

FAMILIES = ("llama", "qwen2")
IDS = torch.tensor([[5, 9, 17, 4, 30, 8, 11, 6], [7, 7, 21, 13, 5, 40, 2, 9]])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter_bases")
    return {f: tiny_base(root / f, family=f, seed=3) for f in FAMILIES}


def peft_logits(base: Path, adapters: list[Path], quantize: str = "none") -> torch.Tensor:
    """PEFT's own forward for one adapter (on the same base: NF4 through bitsandbytes' layers when asked)."""
    from brainstacks.base import load_base

    lb = load_base(base, quantize=quantize)
    pm = peft.PeftModel.from_pretrained(lb.model, str(adapters[0]))
    pm.eval()
    with torch.no_grad():
        return pm(input_ids=IDS).logits.float()


def our_logits(bundle: Path, weights: dict[str, float], quantize: str = "none") -> torch.Tensor:
    lb = load_bundle(bundle, quantize=quantize)
    sm = lb.stacked
    with torch.no_grad(), sm.routing(sm.weights_tensor(weights, rows=IDS.shape[0])):
        return lb.base.model(input_ids=IDS).logits.float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_imported_adapter_gives_peft_logits(bases, family, quantize, tmp_path):
    base = bases[family]
    ad = make_adapter(base, tmp_path / "ad", r=4, alpha=8.0, rslora=(quantize == "nf4"))
    res = import_adapter(tmp_path / "bundle", "math", ad, base=base, frozen_dtype="float32")
    assert res.version == 1 and res.rank == 4 and res.modules == 3 * 2  # q, v, down on 2 layers
    want = peft_logits(base, [ad], quantize)
    got = our_logits(tmp_path / "bundle", {"math": 1.0}, quantize)
    base_only = our_logits(tmp_path / "bundle", {}, quantize)
    assert rel(base_only, want) > 1e-2  # the adapter changes the logits, so the comparison can fail
    assert rel(got, want) < 1e-5, rel(got, want)


def test_bfloat16_storage_stays_within_its_rounding(bases, tmp_path):
    base = bases["llama"]
    ad = make_adapter(base, tmp_path / "ad")
    import_adapter(tmp_path / "b", "a", ad, base=base)  # the default storage dtype: bfloat16
    assert read_manifest(resolve_bundle_dir(tmp_path / "b")).stack_config["frozen_dtype"] == "bfloat16"
    assert rel(our_logits(tmp_path / "b", {"a": 1.0}), peft_logits(base, [ad])) < 2e-2


def test_two_adapters_are_the_weighted_sum_of_their_deltas(bases, tmp_path):
    """base + w1·ΔW1 + w2·ΔW2 on every projection, ranks 4 and 12, different targets, one with rsLoRA."""
    from transformers import AutoModelForCausalLM

    base = bases["llama"]
    a1 = make_adapter(base, tmp_path / "a1", r=4, alpha=8.0, targets=("q_proj", "o_proj", "up_proj"), seed=1)
    a2 = make_adapter(base, tmp_path / "a2", r=12, alpha=6.0, targets=("k_proj", "v_proj", "o_proj", "gate_proj"),
                      rslora=True, seed=2)
    b = tmp_path / "bundle"
    import_adapter(b, "one", a1, base=base, frozen_dtype="float32")
    assert import_adapter(b, "two", a2, frozen_dtype="float32").version == 2  # rank 12 > the bundle's 4
    w1, w2 = 0.7, 1.3
    got = our_logits(b, {"one": w1, "two": w2})

    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    with torch.no_grad():
        for ad, w in ((a1, w1), (a2, w2)):
            cfg = json.loads((ad / "adapter_config.json").read_text())
            from safetensors.torch import load_file

            t = load_file(str(ad / "adapter_model.safetensors"))
            s = cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg["use_rslora"] else cfg["r"])
            for name, A in t.items():
                if ".lora_A." not in name:
                    continue
                path = name.removeprefix("base_model.model.").split(".lora_A.")[0]
                B = t[name.replace(".lora_A.", ".lora_B.")]
                model.get_submodule(path).weight += w * s * (B @ A)
        want = model(input_ids=IDS).logits.float()
    assert rel(got, want) < 1e-5, rel(got, want)


def test_batched_equals_solo_with_imported_and_trained_stacks(bases, tmp_path):
    """A bundle of trained MoE-LoRA stacks (4 experts, rank 4) plus an imported rank-8 adapter (4 expert copies at
    packing rank 8): each row of a mixed batch equals that row run alone."""
    from brainstacks.base import load_base
    from brainstacks.bundle import DomainEntry, Manifest, save_stack, write_manifest
    from brainstacks.config import StackConfig
    from brainstacks.stacks import StackedModel
    from brainstacks.tiny_models import add_random_stacks

    base = bases["qwen2"]
    cfg = StackConfig(experts=4, top_k=2, rank=4, frozen_dtype="float32")
    lb = load_base(base, quantize="none")
    sm = StackedModel(lb.model, cfg)
    add_random_stacks(sm, {"math": 1, "code": 2})
    b = tmp_path / "bundle"
    entries = [DomainEntry(d, [save_stack(b, d, k, sm.stack_tensors(d, k)) for k in range(sm.num_stacks(d))])
               for d in sm.domains]
    write_manifest(b, Manifest(1, {"path": str(base), "fingerprint": lb.fingerprint}, cfg.to_dict(), entries))
    ad = make_adapter(base, tmp_path / "ad", r=8)
    import_adapter(b, "imported", ad, keep=0)

    lb2 = load_bundle(b, quantize="none")
    sm2 = lb2.stacked
    assert sm2.domains == ["math", "code", "imported"] and sm2.pack_rank == 8
    rows = [{"math": 1.0}, {"imported": 1.0, "code": 0.5}, {"math": 0.3, "code": 1.0, "imported": 0.8}]
    ids = torch.cat([IDS, IDS[:1]])
    with torch.no_grad():
        w = torch.cat([sm2.weights_tensor(r) for r in rows])
        with sm2.routing(w):
            batched = lb2.base.model(input_ids=ids).logits
        for i, r in enumerate(rows):
            with sm2.routing(sm2.weights_tensor(r)):
                solo = lb2.base.model(input_ids=ids[i : i + 1]).logits
            assert rel(batched[i], solo[0]) < 1e-5, i
        # the trained stacks give the same logits as before the import (the padding to rank 8 adds exact zeros)
        with sm.routing(sm.weights_tensor({"math": 1.0, "code": 0.4})):
            before = lb.model(input_ids=IDS).logits
        with sm2.routing(sm2.weights_tensor({"math": 1.0, "code": 0.4})):
            after = lb2.base.model(input_ids=IDS).logits
    assert rel(after, before) < 1e-6
    # 4 expert copies, config.scale = 16 / sqrt(4) = 8 divided out of B: still PEFT's own logits
    assert rel(our_logits(b, {"imported": 1.0}), peft_logits(base, [ad])) < 1e-5


def test_the_fused_decoder_serves_an_imported_adapter(bases, tmp_path):
    from brainstacks.fastpath import FusedDecoder

    base = bases["llama"]
    ad = make_adapter(base, tmp_path / "ad", r=6, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"))
    import_adapter(tmp_path / "b", "x", ad, base=base, frozen_dtype="float32")
    lb = load_bundle(tmp_path / "b", quantize="none")
    fd = FusedDecoder(lb.base.model, lb.stacked, kernel="fp32")
    prompts = [IDS[0].tolist(), IDS[1].tolist()]
    _, fused = fd.prefill(prompts, fd.routing(torch.tensor([[1.0], [0.5]])))
    sm = lb.stacked
    with torch.no_grad(), sm.routing(torch.tensor([[1.0], [0.5]])):
        eager = lb.base.model(input_ids=IDS).logits[:, -1].float()
    assert rel(fused, eager) < 1e-4


# ---- refusals: a clear error naming the file and field, and nothing changed on disk ------------------------------
def snapshot(d: Path) -> dict[str, bytes]:
    """Every file of the bundle (the writer lock's holder note aside)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
            and p.name != ".train.lock"}


@pytest.fixture()
def one_bundle(bases, tmp_path):
    base = bases["llama"]
    ad = make_adapter(base, tmp_path / "first", r=4)
    import_adapter(tmp_path / "bundle", "math", ad, base=base)
    return base, tmp_path / "bundle"


def _edit_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("change, match", [
    ({"peft_type": "IA3"}, r"adapter_config\.json: field 'peft_type' is 'IA3'"),
    ({"peft_type": "LOHA"}, r"'peft_type' is 'LOHA'"),
    ({"peft_type": "PREFIX_TUNING"}, r"'peft_type' is 'PREFIX_TUNING'"),
    ({"use_dora": True}, r"field 'use_dora' is set: DoRA"),
    ({"modules_to_save": ["lm_head"]}, r"field 'modules_to_save' lists \['lm_head'\]"),
    ({"bias": "all"}, r"field 'bias' is 'all'"),
    ({"r": 0}, r"field 'r' must be a positive number"),
])
def test_unsupported_configs_are_refused(one_bundle, tmp_path, change, match):
    _, b = one_bundle
    before = snapshot(b)
    bad = _edit_config(b.parent / "first", tmp_path / "bad", **change)
    with pytest.raises(AdapterError, match=match):
        import_adapter(b, "other", bad)
    assert snapshot(b) == before


def test_bad_adapters_are_refused_and_nothing_changes(one_bundle, bases, tmp_path):
    base, b = one_bundle
    before = snapshot(b)
    first = b.parent / "first"
    other = tiny_base(tmp_path / "wide", family="llama", hidden=96, intermediate=160, heads=4, kv_heads=2)
    cases = [
        (make_adapter(other, tmp_path / "wide_ad"), r"wide_ad/adapter_model\.safetensors: shape mismatch for "
                                                    r"model\.layers\.0\.\S+\.lora_A: the adapter has \(4, \d+\), "
                                                    r"the base needs \(r, \d+\)"),
        (make_adapter(base, tmp_path / "head", targets=("q_proj", "lm_head")), r"module 'lm_head' .* not a "
                                                                               r"projection this bundle wraps"),
        (first, r"domain 'math' exists already"),
    ]
    trunc = shutil.copytree(first, tmp_path / "trunc")
    data = (trunc / "adapter_model.safetensors").read_bytes()
    (trunc / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    cases.append((trunc, r"trunc/adapter_model\.safetensors: not a readable safetensors file"))
    nan = shutil.copytree(first, tmp_path / "nan")
    from safetensors.torch import load_file, save_file

    t = load_file(str(nan / "adapter_model.safetensors"))
    k = sorted(t)[0]
    t[k][0, 0] = float("nan")
    save_file(t, str(nan / "adapter_model.safetensors"))
    cases.append((nan, rf"nan/adapter_model\.safetensors: tensor '{k}' holds non-finite values"))
    for src, match in cases:
        with pytest.raises(AdapterError, match=match):
            import_adapter(b, "math" if src == first else "other", src)
        assert snapshot(b) == before, src
    with pytest.raises(AdapterError, match="holds neither adapter_config.json"):
        import_adapter(b, "other", tmp_path)
    with pytest.raises(AdapterError, match="holds no bundle; give --base"):
        import_adapter(tmp_path / "nothing", "x", first)
    assert snapshot(b) == before


def test_replace_and_remove_are_new_versions(one_bundle, tmp_path):
    base, b = one_bundle
    v1 = read_manifest(resolve_bundle_dir(b)).version
    ad2 = make_adapter(base, tmp_path / "second", r=4, seed=5)
    res = import_adapter(b, "math", ad2, replace=True)
    m = read_manifest(resolve_bundle_dir(b))
    assert res.version == m.version == v1 + 1 and m.domains[0].stacks == ["stacks/math/1"]
    assert (b / "versions" / str(v1) / "stacks/math/0/stack.safetensors").is_file()  # the old version, unchanged
    import_adapter(b, "code", make_adapter(base, tmp_path / "third", seed=6))
    v, where = remove_domain_version(b, "math")
    m = read_manifest(resolve_bundle_dir(b))
    assert m.version == v == v1 + 3 and m.domain_names == ["code"] and where == b / "versions" / str(v)
    with pytest.raises(AdapterError, match="no domain 'math'"):
        remove_domain_version(b, "math")


def test_a_published_bundle_without_a_working_copy_is_imported_into(one_bundle, tmp_path):
    """A bundle that is only versions/<n> + CURRENT (published elsewhere): a refused import writes nothing, a good
    one makes ROOT the working copy and publishes the next version."""
    base, b = one_bundle
    (b / "manifest.json").unlink()
    shutil.rmtree(b / "stacks")
    before = snapshot(b)
    with pytest.raises(AdapterError, match="domain 'math' exists already"):
        import_adapter(b, "math", b.parent / "first")
    assert snapshot(b) == before  # nothing materialised for a refused import
    res = import_adapter(b, "code", make_adapter(base, tmp_path / "code_ad", seed=9))
    m = read_manifest(resolve_bundle_dir(b))
    assert res.version == 2 and m.domain_names == ["math", "code"] and (b / "manifest.json").is_file()
    assert load_bundle(b, quantize="none").stacked.domains == ["math", "code"]


def test_more_refusals_name_the_cause_and_change_nothing(one_bundle, tmp_path):
    base, b = one_bundle
    before = snapshot(b)
    deep = tiny_base(tmp_path / "deep", family="llama", layers=3)
    with pytest.raises(AdapterError, match=r"module 'model\.layers\.2\.\S+' does not exist in this base .* another "
                                           r"base, e\.g\. one with more layers"):
        import_adapter(b, "other", make_adapter(deep, tmp_path / "deep_ad"))
    huge = _edit_config(b.parent / "first", tmp_path / "huge", lora_alpha=1e300, r=4)
    with pytest.raises(AdapterError, match="is not finite once its scale is folded in"):
        import_adapter(b, "other", huge)
    bad_pattern = _edit_config(b.parent / "first", tmp_path / "pattern", alpha_pattern={"q_proj": -1})
    with pytest.raises(AdapterError, match="gets lora_alpha -1.0 .* must be a positive number"):
        import_adapter(b, "other", bad_pattern)
    for name in ("base", "all"):
        with pytest.raises(AdapterError, match=f"domain name '{name}' is reserved"):
            import_adapter(b, name, b.parent / "first")
    assert snapshot(b) == before


def test_a_working_copy_left_before_its_router_step_is_not_published(bases, tmp_path):
    """A trained domain the router does not score (a `train` killed before its router step) in the working copy:
    an import refuses rather than publish a version the loaders would refuse."""
    from brainstacks.base import load_base
    from brainstacks.bundle import DomainEntry, Manifest, save_router, save_stack, write_manifest
    from brainstacks.config import StackConfig
    from brainstacks.router import MetaRouter
    from brainstacks.stacks import StackedModel
    from brainstacks.tiny_models import add_random_stacks

    base = bases["llama"]
    cfg = StackConfig(experts=2, top_k=1, rank=4, frozen_dtype="float32")
    lb = load_base(base, quantize="none")
    sm = StackedModel(lb.model, cfg)
    add_random_stacks(sm, {"math": 1, "code": 1})
    b = tmp_path / "bundle"
    entries = [DomainEntry(d, [save_stack(b, d, 0, sm.stack_tensors(d, 0))]) for d in sm.domains]
    router = save_router(b, MetaRouter(lb.fingerprint["hidden_size"], ["math"]))  # does not score code
    write_manifest(b, Manifest(2, {"path": str(base), "fingerprint": lb.fingerprint}, cfg.to_dict(), entries, router))
    before = snapshot(b)
    with pytest.raises(AdapterError, match=r"trained domain 'code' is not scored by the bundle's router"):
        import_adapter(b, "mine", make_adapter(base, tmp_path / "ad"))
    assert snapshot(b) == before

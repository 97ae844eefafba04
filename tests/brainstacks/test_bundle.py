"""The docs/DESIGN.md §4 bundle: round trip, atomic manifest, refusal of every kind of bad bundle with a named file."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from brainstacks.base import load_base
from brainstacks.bundle import (
    MANIFEST,
    DomainEntry,
    Manifest,
    load_bundle,
    next_version,
    read_manifest,
    save_router,
    save_stack,
    write_manifest,
)
from brainstacks.config import RouterConfig, StackConfig
from brainstacks.errors import BundleError, FingerprintMismatch
from brainstacks.router import MetaRouter
from brainstacks.stacks import StackedModel
from brainstacks.tiny_models import add_random_stacks


def build_bundle(base_dir, out, layout=None) -> tuple[StackedModel, Manifest]:
    lb = load_base(base_dir, quantize="none")
    sm = StackedModel(lb.model, StackConfig(rank=4))
    add_random_stacks(sm, layout or {"math": 2, "code": 1}, dtype="bfloat16")
    entries = [DomainEntry(d, [save_stack(out, d, k, sm.stack_tensors(d, k), {"val_loss": 1.0})
                               for k in range(sm.num_stacks(d))]) for d in sm.domains]
    router = MetaRouter(lb.model.config.hidden_size, sm.domains, RouterConfig(hidden=32, mlp_hidden=32))
    m = Manifest(version=next_version(out), base={"path": str(base_dir), "fingerprint": lb.fingerprint},
                 stack_config=sm.config.to_dict(), domains=entries, router=save_router(out, router))
    write_manifest(out, m)
    return sm, m


def test_round_trip(base_dirs, tmp_path):
    sm, m = build_bundle(base_dirs["llama"], tmp_path)
    assert sorted(os.listdir(tmp_path)) == [MANIFEST, "router", "stacks"]
    assert (tmp_path / "stacks/math/1/stack.safetensors").is_file() and (tmp_path / "router/router.json").is_file()
    data = json.loads((tmp_path / MANIFEST).read_text())
    assert set(data) == {"format_version", "version", "base", "stack_config", "domains", "router"}
    assert data["domains"][0] == {"name": "math", "stacks": ["stacks/math/0", "stacks/math/1"]}
    assert json.loads((tmp_path / "router/router.json").read_text())["domains"] == ["math", "code"]
    lb = load_bundle(tmp_path, quantize="nf4")
    assert lb.stacked.domains == ["math", "code"] and lb.stacked.stacks == sm.stacks
    for d, k in sm.stacks:
        a, b = sm.stack_tensors(d, k), lb.stacked.stack_tensors(d, k)
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert lb.router is not None and lb.router.domains == ["math", "code"]
    assert next_version(tmp_path) == 2


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_bundle_files_get_the_umask_permissions(base_dirs, tmp_path, monkeypatch, umask, mode):
    """Not mkstemp's 0600: a server running as another user must be able to read a bundle written under umask 022.
    (The umask is read once at import, before threads write files; the test sets that reading.)"""
    import brainstacks.files as files_mod

    monkeypatch.setattr(files_mod, "_UMASK", umask)
    build_bundle(base_dirs["llama"], tmp_path)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 7 and {p.stat().st_mode & 0o777 for p in files} == {mode}


def test_manifest_write_is_atomic(base_dirs, tmp_path):
    _, m = build_bundle(base_dirs["llama"], tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    m.domains.append(DomainEntry("ghost", ["stacks/ghost/0"]))
    before = (tmp_path / MANIFEST).read_bytes()
    with pytest.raises(BundleError, match="not written"):
        write_manifest(tmp_path, m)  # refuses to name a stack that is not on disk
    assert (tmp_path / MANIFEST).read_bytes() == before


def corrupt_cases():
    def fingerprint(d):
        m = json.loads((d / MANIFEST).read_text())
        path = next(iter(m["base"]["fingerprint"]["targets"]))
        m["base"]["fingerprint"]["targets"][path] = [999, 64]
        (d / MANIFEST).write_text(json.dumps(m))

    def missing(d):
        os.unlink(d / "stacks/math/1/stack.safetensors")

    def truncated(d):
        f = d / "stacks/code/0/stack.safetensors"
        f.write_bytes(f.read_bytes()[:100])

    def flipped(d):
        f = d / "stacks/math/0/stack.safetensors"
        b = bytearray(f.read_bytes())
        b[-10] ^= 0xFF
        f.write_bytes(bytes(b))

    def version(d):
        m = json.loads((d / MANIFEST).read_text())
        m["format_version"] = 7
        (d / MANIFEST).write_text(json.dumps(m))

    def escape(d):
        m = json.loads((d / MANIFEST).read_text())
        m["domains"][0]["stacks"][0] = "../../etc"
        (d / MANIFEST).write_text(json.dumps(m))

    def absolute(d):
        m = json.loads((d / MANIFEST).read_text())
        m["router"] = "/etc"
        (d / MANIFEST).write_text(json.dumps(m))

    def symlink(d):
        outside = d.parent / f"{d.name}_outside"
        shutil.copytree(d / "stacks/code/0", outside)
        shutil.rmtree(d / "stacks/code/0")
        os.symlink(outside, d / "stacks/code/0")

    def broken_json(d):
        (d / "stacks/math/0/stack.json").write_text("{not json")

    return {
        "fingerprint": (fingerprint, FingerprintMismatch, "fingerprint mismatch"),
        "missing": (missing, BundleError, r"stacks/math/1/stack.safetensors: missing"),
        "truncated": (truncated, BundleError, r"stacks/code/0/stack.safetensors: corrupt or truncated"),
        "flipped": (flipped, BundleError, r"stacks/math/0/stack.safetensors: corrupt"),
        "version": (version, BundleError, "unknown format_version 7"),
        "escape": (escape, BundleError, "escapes the bundle"),
        "absolute": (absolute, BundleError, "not a relative path"),
        "symlink": (symlink, BundleError, "escapes the bundle"),
        "json": (broken_json, BundleError, r"stacks/math/0/stack.json: corrupt JSON"),
    }


@pytest.mark.parametrize("case", sorted(corrupt_cases()))
def test_refusals_name_file_and_reason(base_dirs, tmp_path, case):
    build_bundle(base_dirs["llama"], tmp_path / "b")
    damage, exc, pattern = corrupt_cases()[case]
    damage(tmp_path / "b")
    with pytest.raises(exc, match=pattern):
        load_bundle(tmp_path / "b", quantize="none")


def test_shape_mismatch_and_wrong_base(base_dirs, tmp_path):
    build_bundle(base_dirs["llama"], tmp_path / "b")
    with pytest.raises(FingerprintMismatch, match="model_type"):
        load_bundle(tmp_path / "b", base=base_dirs["qwen2"], quantize="none")
    # a stack whose tensors are the wrong shape, with a matching checksum (so only the shape check can catch it)
    from safetensors.torch import load_file, save_file

    from brainstacks.files import sha256_file

    f = tmp_path / "b/stacks/math/0/stack.safetensors"
    t = load_file(f)
    name = next(n for n in t if n.endswith(".B"))
    t[name] = torch.zeros(4, 3, 4, dtype=torch.bfloat16)
    save_file(t, f)
    meta = json.loads((f.parent / "stack.json").read_text())
    meta["sha256"] = sha256_file(f)
    (f.parent / "stack.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=f"shape mismatch for {name}"):
        load_bundle(tmp_path / "b", quantize="none")


def test_no_manifest(tmp_path):
    with pytest.raises(BundleError, match="no manifest"):
        read_manifest(tmp_path)

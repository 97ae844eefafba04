"""Bundles the benchmarks run on: the package's embedded demo bundle, or a tiny one built through the library, and
publishing a manifest as a new version (what a hot reload then picks up).

    bundle = demo_bundle_dir() or build_tiny_bundle(tmp / "bundle")
    bump_manifest(bundle)   # the same files as version + 1
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

# the tiny base when no demo bundle exists: every projection's out_features a multiple of 32 (bitsandbytes NF4)
STACK_STD = 0.02  # the random stacks' B ~ N(0, STACK_STD): a delta of some size, not one that swamps the base
TINY_SIZES = dict(hidden=128, layers=4, intermediate=256, heads=4, kv_heads=2)


def demo_bundle_dir() -> Path | None:
    """The package's embedded demo bundle, if this install ships one."""
    spec = importlib.util.find_spec("brainstacks")
    for root in (spec.submodule_search_locations or []) if spec else []:
        d = Path(root) / "demo_bundle"
        if (d / "manifest.json").is_file():
            return d
    return None


def build_tiny_bundle(out: Path, seed: int = 0) -> Path:
    """A small bundle made through the library: random Llama base (carried under BUNDLE/base), 2 domains with one
    random frozen stack each, a random router. The LM head rows of every id that decodes to no text (EOS, pad, BOS,
    unk, and the embedding rows beyond the tokenizer's vocabulary) are zeroed, so greedy decoding never picks one (its
    logit is 0 while the largest of ~150 random logits is positive): every request generates exactly max_tokens
    tokens of visible text on both servers."""
    import torch

    from brainstacks.base import load_base
    from brainstacks.bundle import DomainEntry, Manifest, save_router, save_stack, write_manifest
    from brainstacks.config import RouterConfig, StackConfig
    from brainstacks.router import MetaRouter
    from brainstacks.stacks import StackedModel
    from brainstacks.tiny_models import add_random_stacks, tiny_base

    out.mkdir(parents=True, exist_ok=True)
    base_dir = tiny_base(out / "base", family="llama", seed=seed, **TINY_SIZES)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    tok = AutoTokenizer.from_pretrained(base_dir)
    silent = set(tok.all_special_ids) | set(range(len(tok), model.config.vocab_size))  # ids that decode to ""
    with torch.no_grad():
        for tid in sorted(silent):
            model.lm_head.weight[tid].zero_()
    model.save_pretrained(base_dir)

    lb = load_base(base_dir, quantize="none", dtype="float32", device="cpu")
    cfg = StackConfig()
    sm = StackedModel(lb.model, cfg)
    domains = ("math", "medical")
    add_random_stacks(sm, dict.fromkeys(domains, 1), seed=seed, dtype=cfg.frozen_dtype, std=STACK_STD)
    for name in domains:
        save_stack(out, name, 0, sm.stack_tensors(name, 0), None, sm.config.frozen_dtype)
    torch.manual_seed(seed)
    save_router(out, MetaRouter(lb.fingerprint["hidden_size"], list(domains), RouterConfig()))
    write_manifest(out, Manifest(version=1, base={"path": "base", "fingerprint": lb.fingerprint},
                                 stack_config=cfg.to_dict(),
                                 domains=[DomainEntry(d, [f"stacks/{d}/0"]) for d in domains], router="router"))
    return out


def publish_manifest(bundle: Path, manifest: dict, version: int) -> int:
    """Write `manifest` as `version` of the bundle atomically (temp + rename, as docs/DESIGN.md §4 requires of
    writers); returns the version."""
    from brainstacks.files import write_json

    write_json(Path(bundle) / "manifest.json", {**manifest, "version": version})
    return version


def bump_manifest(bundle: Path) -> int:
    """Publish the same bundle as version + 1; returns it."""
    data = json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))
    return publish_manifest(bundle, data, int(data["version"]) + 1)



def add_third_domain(bundle: Path, seed: int = 1) -> dict:
    """Give the tiny bundle a third domain ("code", one random stack) and a router over all three at router/b;
    returns that version's manifest (not published: the served manifest keeps two domains)."""
    import torch

    from brainstacks.bundle import load_bundle, save_router, save_stack
    from brainstacks.config import RouterConfig
    from brainstacks.router import MetaRouter
    from brainstacks.tiny_models import add_random_stacks

    loaded = load_bundle(bundle, quantize="none")
    m, sm, lb = loaded.manifest, loaded.stacked, loaded.base
    add_random_stacks(sm, {"code": 1}, seed=seed, dtype=sm.config.frozen_dtype, std=STACK_STD)
    rel = save_stack(bundle, "code", 0, sm.stack_tensors("code", 0), None, sm.config.frozen_dtype)
    torch.manual_seed(seed)
    doms = [*m.domain_names, "code"]
    rrel = save_router(bundle, MetaRouter(lb.fingerprint["hidden_size"], doms, RouterConfig()), rel="router/b")
    d = m.to_dict()
    d["domains"].append({"name": "code", "stacks": [rel]})
    d["router"] = rrel
    return d

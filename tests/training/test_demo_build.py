"""`brainstacks demo build`: the demo recipe, a --quick build end to end, and the shipped demo bundle."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

from brainstacks.bundle import load_bundle, read_manifest
from brainstacks.demo import DEMO_BUNDLE
from training.demo import DOMAINS, generate
from training.demo.build import MAX_BUNDLE_MB, RECIPE, build_demo, quick_build, render_recipe
from training.recipe import load_recipe

# Measured on the shipped bundle: 38 of the first 40 held-out math test prompts (95%; 99% of all 200) have math as
# the top served weight (docs/DEMO.md has the full table). The bar leaves room for numeric drift across machines.
SHIPPED_MATH_TOP1_BAR = 0.85


@pytest.fixture
def one_thread():
    """Tiny models on shared cores run several times faster on one thread (no OpenMP spin-waiting)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_demo_recipe_uses_contract_keys_and_the_build_layout():
    recipe = load_recipe(RECIPE, check_files=False)  # unknown keys would be errors
    assert [d.name for d in recipe.domains] == list(DOMAINS)
    assert recipe.base.model == (RECIPE.parent / "base").resolve()
    for d in recipe.domains:
        assert d.train == (RECIPE.parent / "data" / d.name / "train.jsonl").resolve()
        assert d.valid == (RECIPE.parent / "data" / d.name / "valid.jsonl").resolve()
    assert recipe.nullspace.enabled and recipe.router_train.enabled and recipe.train.max_rounds >= 2


def test_render_recipe_round_trips_the_demo_recipe():
    doc = tomllib.loads(RECIPE.read_text())
    doc["router"]["floors"] = {"chat": 0.2}
    doc["router"]["mixed"] = [{"file": "mixed.jsonl", "domains": ["math", "medical"]}]
    assert tomllib.loads(render_recipe(doc)) == doc


def test_quick_build_end_to_end(tmp_path, one_thread):
    out = tmp_path / "installed"
    b = quick_build(out=out, progress=False, docs=tmp_path / "DEMO.md")
    b.work = tmp_path / "work"
    summary = build_demo(b, log=lambda *_: None)

    # the work dir holds the data splits and the rendered recipe, with the quick overrides applied
    for d in DOMAINS:
        for split, n in b.data.sizes.items():
            assert len((b.work / "data" / d / f"{split}.jsonl").read_text().splitlines()) == n
    assert load_recipe(b.work / "recipe.toml").stack.rank == 4

    m = read_manifest(out)
    assert m.domain_names == list(DOMAINS) and m.router == "router"
    assert all(1 <= len(d.stacks) <= 2 for d in m.domains)
    assert m.base["path"] == "base" and (out / "base" / "model.safetensors").is_file()
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in out.rglob("*"))  # world-readable when shipped
    assert 0 < summary["bundle_mb"] < MAX_BUNDLE_MB

    # the installed copy is self-contained: moved elsewhere, it still loads its own base
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    lb = load_bundle(moved, quantize="nf4")
    assert Path(lb.base.path).resolve() == (moved / "base").resolve() and lb.router is not None

    ev = json.loads((moved / "reports" / "evidence.json").read_text())
    assert set(ev["losses"]) == set(DOMAINS)
    for row in ev["losses"].values():
        assert all(math.isfinite(row[c]) for c in ("base", "own", "ungated", "routed", "oracle"))
    for d in ("math", "medical"):
        acc = ev["accuracy"][d]
        assert acc["prompts"] == b.evidence.accuracy_prompts and all(0 <= acc[c] <= 1 for c in ("base", "own", "routed"))
    conf = ev["routing"]["confusion"]
    assert all(sum(conf[d].values()) == b.evidence.routing_prompts for d in DOMAINS)
    assert ev["medical"]["verdict"] in ("reproduces", "partly reproduces", "does not reproduce")
    assert {s["domain"] for s in ev["samples"]} == set(DOMAINS)
    assert ev["build"]["stages"]["train domains + router"] > 0
    for name in ("loss_math.png", "forgetting.json", "routing.json", "pretrain_loss.png"):
        assert (moved / "reports" / name).is_file()

    doc = (tmp_path / "DEMO.md").read_text()
    assert doc == (b.work / "DEMO.md").read_text()
    for heading in ("## Held-out loss per domain", "## Exact-answer accuracy", "## Routing on held-out prompts",
                    "## Do medical prompts borrow math and chat?", "## Sample completions"):
        assert heading in doc


@pytest.mark.skipif(not (DEMO_BUNDLE / "manifest.json").is_file(), reason="no demo bundle in this checkout")
def test_shipped_bundle_loads_and_routes_held_out_math_to_math(one_thread):
    from training.eval_report import routed_weights

    size_mb = sum(p.stat().st_size for p in DEMO_BUNDLE.rglob("*") if p.is_file()) / 2**20
    assert size_mb <= MAX_BUNDLE_MB
    lb = load_bundle(DEMO_BUNDLE, quantize="nf4")
    assert lb.stacked.domains == list(DOMAINS) and lb.router is not None
    rows = generate("math", "test", 40, seed=0)  # the test split: never trained on, never used to pick the router
    w = routed_weights(lb.stacked, lb.base.tokenizer, lb.router, [r["prompt"] for r in rows])  # (40, 5) served weights
    top_is_math = (w.argmax(-1) == lb.stacked.domains.index("math")) & (w.max(-1).values > 0)
    assert float(top_is_math.float().mean()) >= SHIPPED_MATH_TOP1_BAR

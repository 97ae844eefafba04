"""Bring your own adapters through the CLI: PEFT LoRA adapters trained with the real `peft` library on two toy
domains, `brainstacks stacks import`, then `brainstacks train --router-only`, and the router routes fresh prompts of
each domain to its adapter. No stack is trained or rewritten."""

from __future__ import annotations

import json
import random

import pytest
import torch

from brainstacks.bundle import load_bundle, read_manifest, resolve_bundle_dir
from brainstacks.tiny_models import tiny_base
from tests.toy_recipes import TOY_DOMAINS, write_toy_recipe

peft = pytest.importorskip("peft")


def train_peft_adapter(base, data, out, steps: int = 40, seed: int = 0):
    """A rank-4 PEFT LoRA on q/v/down trained on `data`'s prompt + completion text (plain LM loss)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base))
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                        "down_proj"],
                                                    lora_dropout=0.0, task_type="CAUSAL_LM"))
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    texts = [f"{r['prompt']} {r['completion']}" for r in rows]
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    pm.train()
    for step in range(steps):
        batch = tok(texts[(step * 8) % len(texts):][:8], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = pm(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    pm.save_pretrained(str(out))
    return out


def test_import_then_router_only_routes_each_domain_to_its_adapter(tmp_path, capsys):
    from brainstacks_cli.main import main as cli

    base = tiny_base(tmp_path / "base")
    recipe = write_toy_recipe(tmp_path, base, ["math", "medical"])
    bundle = tmp_path / "bundle"
    for d in ("math", "medical"):
        ad = train_peft_adapter(base, tmp_path / f"{d}.jsonl", tmp_path / f"ad_{d}")
        assert cli(["stacks", "import", "--peft", str(ad), "--domain", d, "--bundle", str(bundle),
                    "--base", str(base)]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["domain"] == d and out["rank"] == 4 and out["routed"] is False
    assert cli(["stacks", "import", "--peft", str(tmp_path / "ad_math"), "--domain", "math", "--bundle",
                str(bundle)]) == 2
    assert "domain 'math' exists already" in capsys.readouterr().err
    m = read_manifest(resolve_bundle_dir(bundle))
    assert m.version == 2 and m.router is None and m.stack_config["experts"] == 1
    stacks = {p: p.read_bytes() for p in (bundle / "stacks").rglob("*") if p.is_file()}

    assert cli(["train", "--recipe", str(recipe), "--out", str(bundle), "--router-only", "--quiet"]) == 0
    m = read_manifest(resolve_bundle_dir(bundle))
    assert m.version == 3 and m.router == "router/v3" and m.domain_names == ["math", "medical"]
    assert {p: p.read_bytes() for p in (bundle / "stacks").rglob("*") if p.is_file()} == stacks  # none retrained
    lb = load_bundle(bundle, quantize="none")
    assert lb.router.domains == ["math", "medical"]

    from brainstacks.router import route_prompts
    from brainstacks.text import encode_prompt

    r = random.Random(7)  # fresh prompts, not the training lines
    right = total = 0
    for d in ("math", "medical"):
        for _ in range(10):
            prompt, _ = TOY_DOMAINS[d](r)
            w = route_prompts(lb.stacked, lb.base.tokenizer, lb.router, [encode_prompt(lb.base.tokenizer, prompt)])
            right += lb.router.domains[int(w[0].argmax())] == d
            total += 1
    assert right / total >= 0.8, f"routing top-1 {right}/{total}"


def test_router_only_needs_a_bundle(tmp_path, capsys):
    from brainstacks_cli.main import main as cli

    base = tiny_base(tmp_path / "base")
    recipe = write_toy_recipe(tmp_path, base, ["math"])
    assert cli(["train", "--recipe", str(recipe), "--out", str(tmp_path / "empty"), "--router-only", "--quiet"]) == 2
    assert "--router-only needs a bundle there" in capsys.readouterr().err

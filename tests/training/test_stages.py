"""A domain's stages through `brainstacks train`: sft then dpo then grpo stacks of ONE domain, resumed stage by
stage, loaded and served; the recipe's stage and [grpo] checks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from brainstacks.bundle import load_bundle, read_manifest, read_stacks
from brainstacks.errors import ConfigError
from brainstacks.router import route_prompts
from brainstacks.text import encode_prompt
from brainstacks.tiny_models import tiny_base
from brainstacks_cli.main import main as cli
from tests.toy_recipes import write_toy_recipe
from training.config import GRPOConfig
from training.data_files import DataError, validate_recipe_data
from training.dpo import sequence_logprobs
from training.recipe import load_recipe
from training.tokenization import PreferenceCollator, pad_id_of, tokenize_preference

DPO = '\n[[domains]]\nname = "math"\ntrain = "math_prefs.jsonl"\nformat = "preference"\nstage = "dpo"\n'
GRPO = '\n[[domains]]\nname = "math"\ntrain = "math_qa.jsonl"\nformat = "prompt_answer"\nstage = "grpo"\n'
GRPO_SECTION = "\n[grpo]\ngroup_size = 4\nmax_new_tokens = 3\ntemperature = 1.0\nkl_coef = 0.01\nsteps = 3\n"


def write_stage_data(root: Path) -> list[dict]:
    r = random.Random(1)
    prefs = [{"prompt": f"what is {r.randint(1, 9)} plus {r.randint(1, 9)} ?", "chosen": "answer 5",
              "rejected": "answer 3"} for _ in range(40)]
    (root / "math_prefs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prefs))
    qa = [{"prompt": p["prompt"], "answer": "5"} for p in prefs[:24]]
    (root / "math_qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))
    return prefs


def recipe_with(root: Path, base: Path, *stages: str, router: bool = True) -> Path:
    rec = write_toy_recipe(root, base, ["math"], steps_per_round=12, max_rounds=1)
    text = rec.read_text()
    if not router:
        text = text.replace("[router]\nenabled = true", "[router]\nenabled = false")
    rec.write_text(text + "".join(stages) + GRPO_SECTION)
    return rec


def margins(sm, tok, prefs: list[dict]) -> float:
    """Mean log p(chosen) - log p(rejected) with every stack on."""
    batch = PreferenceCollator(pad_id_of(tok))([tokenize_preference(tok, p, 32) for p in prefs])
    with torch.no_grad(), sm.routing(None):
        lp = sequence_logprobs(sm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               batch["labels"])
    return float((lp[: len(prefs)] - lp[len(prefs) :]).mean())


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    base = tiny_base(root / "base", hidden=64, layers=2)
    prefs = write_stage_data(root)
    out = root / "bundle"
    first_recipe = recipe_with(root, base, DPO, router=False)  # the second run trains the router
    assert cli(["train", "--recipe", str(first_recipe), "--out", str(out), "--quiet"]) == 0
    first = {p: p.read_bytes() for p in (out / "stacks").rglob("*") if p.is_file()}
    recipe = recipe_with(root, base, DPO, GRPO)  # the same bundle, one stage more: only the grpo stage trains
    assert cli(["train", "--recipe", str(recipe), "--out", str(out), "--quiet"]) == 0
    return root, out, recipe, prefs, first


def test_one_domain_holds_every_stage_and_resumes_stage_by_stage(staged):
    root, out, recipe, prefs, first = staged
    m = read_manifest(out)
    assert m.domain_names == ["math"]
    assert m.domains[0].stacks == ["stacks/math/0", "stacks/math/1", "stacks/math/2"]
    metas = [json.loads((out / s / "stack.json").read_text()) for s in m.domains[0].stacks]
    assert [(x["stage"], x["stage_index"]) for x in metas] == [("sft", 0), ("dpo", 1), ("grpo", 2)]
    assert metas[2]["reward"] == "exact_answer" and "reward_after" in metas[2]
    for p, data in first.items():  # the second run wrote only the grpo stack
        assert p.read_bytes() == data, p
    for f in ("train_math.json", "train_math.1.json", "train_math.2.json", "loss_math.1.png", "reward_math.2.png"):
        assert (out / "reports" / f).is_file(), f


def test_dpo_stack_raises_the_margin_on_its_pairs_and_the_bundle_serves(staged):
    root, out, recipe, prefs, first = staged
    lb = load_bundle(out, quantize="nf4")
    assert lb.stacked.num_stacks("math") == 3 and lb.router.domains == ["math"]
    after = margins(lb.stacked, lb.base.tokenizer, prefs)
    m = read_manifest(out)
    sft_only = {"math": read_stacks(out, m, lb.base.fingerprint)["math"][:1]}
    lb.stacked.commit(lb.stacked.prepare({"math": [t for t, _ in sft_only["math"]]}))
    before = margins(lb.stacked, lb.base.tokenizer, prefs)
    assert after > before + 0.1, (before, after)
    lb = load_bundle(out, quantize="nf4")  # served: the router's weights over the domain's three stacks
    tok = lb.base.tokenizer
    ids = torch.tensor([encode_prompt(tok, prefs[0]["prompt"])])
    w = route_prompts(lb.stacked, tok, lb.router, [prefs[0]["prompt"]])
    assert float(w[0, 0]) > 0
    with torch.no_grad(), lb.stacked.routing(w):
        gen = lb.base.model.generate(input_ids=ids, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                                     pad_token_id=pad_id_of(tok))
    assert gen.shape[1] == ids.shape[1] + 3


def test_eval_covers_every_stage(staged, tmp_path, capsys):
    root, out, recipe, prefs, first = staged
    assert cli(["eval", "--bundle", str(out), "--recipe", str(recipe), "--json", str(tmp_path / "e.json"),
                "--quiet"]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert set(res["losses"]["math"]) >= {"base", "own", "ungated", "routed", "oracle"}
    dpo, grpo = res["stages"]["math/1"], res["stages"]["math/2"]
    assert dpo["ungated"]["margin"] > dpo["base"]["margin"] and 0 <= dpo["ungated"]["accuracy"] <= 1
    assert grpo["reward"] == "exact_answer" and 0 <= grpo["ungated"] <= 1
    assert "math/1 dpo: preference accuracy" in capsys.readouterr().out


def test_stage_recipes_and_grpo_section_are_checked(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    write_stage_data(tmp_path)
    rec = recipe_with(tmp_path, base, DPO, GRPO)
    r = load_recipe(rec)
    assert [s.stage for s in r.domains[0].stages] == ["sft", "dpo", "grpo"] and len(r.domains) == 1
    assert r.grpo.group_size == 4 and r.grpo.steps == 3 and r.grpo.clip == GRPOConfig.clip
    text = rec.read_text()
    for old, new, expected in [
        ("group_size = 4", "group_size = 1", "[grpo] group_size must be >= 2, got 1"),
        ("temperature = 1.0", "temperature = 0", "[grpo] temperature must be > 0.0, got 0"),
        ("kl_coef = 0.01", "kl_coef = -1", "[grpo] kl_coef must be >= 0.0, got -1"),
        ("steps = 3", "stpes = 3", "[grpo] unknown key 'stpes'"),
        ("steps = 3", 'reward = "bleu"', "[grpo] reward must be one of 'exact_answer', 'python_tests'"),
        ('format = "prompt_answer"', 'format = "prompt_completion"', "stage 'grpo' does not fit format"),
        ('format = "prompt_answer"\nstage = "grpo"', 'format = "prompt_answer"',
         "stage 'sft' does not fit format 'prompt_answer'"),
    ]:
        assert old in text
        rec.write_text(text.replace(old, new, 1))
        with pytest.raises(ConfigError) as e:
            load_recipe(rec)
        assert expected in str(e.value) and str(rec) in str(e.value), (expected, str(e.value))
    only_grpo = text.replace(DPO, "").replace('train = "math.jsonl"\nformat = "prompt_completion"\n', "", 1)
    rec.write_text(only_grpo.replace('[[domains]]\nname = "math"\n\n', "", 1))
    with pytest.raises(ConfigError, match="'grpo' trains on top of the domain's earlier stacks"):
        load_recipe(rec)
    apart = write_toy_recipe(tmp_path, base, ["math", "medical"])
    apart.write_text(apart.read_text() + DPO)
    with pytest.raises(ConfigError, match="duplicate domain 'math' \\(a domain's stages are consecutive"):
        load_recipe(apart)
    rec.write_text(text.replace("steps = 3", 'steps = 3\nreward = "python_tests"'))
    with pytest.raises(DataError, match="math_qa.jsonl:1: missing key 'tests'"):
        validate_recipe_data(load_recipe(rec))

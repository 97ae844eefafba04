"""`brainstacks train` end to end on a tiny random base: bundle, resume/extend, router, errors, eval, route."""

from __future__ import annotations

import json
import random

import pytest
import torch

from brainstacks.bundle import load_bundle, read_manifest
from brainstacks.router import route
from brainstacks.text import encode_prompt
from brainstacks.tiny_models import tiny_base
from brainstacks.versions import current_version, list_versions, version_dir
from brainstacks_cli.main import main as cli
from tests.toy_recipes import TOY_DOMAINS as DOMAINS
from tests.toy_recipes import write_toy_recipe as write_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    base = tiny_base(root / "base", hidden=64, layers=2)
    out = root / "bundle"
    assert cli(["train", "--recipe", str(write_recipe(root, base, ["math", "medical"])), "--out", str(out),
                "--quiet"]) == 0
    return root, base, out


def test_bundle_loads_and_reports(trained):
    root, base, out = trained
    m = read_manifest(out)
    assert m.domain_names == ["math", "medical"] and m.router == "router/v3"  # a path of its own version
    assert m.version == 3  # one version per domain, one for the router
    # `train` publishes complete versions (brainstacks/versions.py): v1 and v2 have no router over their domains
    assert current_version(out) == 3 and list_versions(out) == [3]
    assert (version_dir(out, 3) / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    lb = load_bundle(out, quantize="nf4")
    assert lb.stacked.num_stacks("math") >= 1 and lb.router.domains == ["math", "medical"]
    for f in ("loss_math.png", "loss_medical.png", "forgetting.json", "forgetting.png", "routing.json"):
        assert (out / "reports" / f).is_file(), f
    forgetting = json.loads((out / "reports/forgetting.json").read_text())
    assert set(forgetting["ungated"]["medical"]) == {"math", "medical"}
    assert set(forgetting["routed"]["medical"]) == {"math", "medical"}  # under the final router
    train_math = json.loads((out / "reports/train_math.json").read_text())
    assert train_math["val_after"] < train_math["val_before"]  # the stacks learned the domain


def test_second_run_adds_a_domain_and_keeps_stacks_byte_identical(trained, capsys):
    root, base, out = trained
    before = {p: p.read_bytes() for p in (out / "stacks").rglob("*") if p.is_file()}
    v = read_manifest(out).version
    assert cli(["train", "--recipe", str(write_recipe(root, base, ["math", "medical", "code"])), "--out", str(out),
                "--quiet"]) == 0
    m = read_manifest(out)
    assert m.domain_names == ["math", "medical", "code"] and m.version == v + 2
    assert current_version(out) == m.version and list_versions(out) == [v, m.version]
    assert load_bundle(out, quantize="none").bundle_dir == version_dir(out, m.version)  # readers follow CURRENT
    for p, data in before.items():
        assert p.read_bytes() == data, p
    # the router now scores all three domains and separates held-out prompts
    lb = load_bundle(out, quantize="nf4")
    assert lb.router.domains == ["math", "medical", "code"]
    hits = 0
    total = 0
    for j, name in enumerate(lb.router.domains):
        r = random.Random(f"heldout-{name}")
        for _ in range(6):
            prompt, _ = DOMAINS[name](r)
            ids = torch.tensor([encode_prompt(lb.base.tokenizer, prompt)])
            hits += int(route(lb.stacked, lb.router, ids, apply=False)[0].argmax()) == j
            total += 1
    assert hits / total >= 0.8, f"{hits}/{total}"
    capsys.readouterr()
    assert cli(["route", "--bundle", str(out), "what is 3 plus 4 ?"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed["weights"]) == {"math", "medical", "code"} and printed["bundle_version"] == m.version
    assert max(printed["raw"], key=printed["raw"].get) == "math"


def test_eval_table(trained, capsys, tmp_path):
    root, base, out = trained
    recipe = sorted(root.glob("recipe_*.toml"))[-1]
    assert cli(["eval", "--bundle", str(out), "--recipe", str(recipe), "--json", str(tmp_path / "e.json"),
                "--quiet"]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    row = res["losses"]["math"]
    assert set(row) >= {"base", "own", "ungated", "routed", "oracle"}
    assert row["own"] < row["base"]
    assert row["oracle"] <= min(row["base"], row["own"]) + 1e-6  # the oracle is at least as good as its candidates
    assert "math" in capsys.readouterr().out


def test_bad_recipe_and_bad_line_are_named(tmp_path, capsys):
    base = tiny_base(tmp_path / "base")
    recipe = write_recipe(tmp_path, base, ["math"])
    recipe.write_text(recipe.read_text().replace("steps_per_round", "stpes_per_round"))
    assert cli(["train", "--recipe", str(recipe), "--out", str(tmp_path / "b")]) == 2
    assert "stpes_per_round" in capsys.readouterr().err
    recipe = write_recipe(tmp_path, base, ["math"])
    with open(tmp_path / "math.jsonl", "a") as f:
        f.write('{"prompt": "x"}\n')
    assert cli(["train", "--recipe", str(recipe), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "math.jsonl:49" in err and not (tmp_path / "b").exists()


def test_a_second_train_on_the_same_out_is_refused_at_once(tmp_path):
    """`brainstacks train` locks --out: a concurrent run fails before any work, naming the holder."""
    from brainstacks.errors import BundleError
    from brainstacks.tiny_models import tiny_base
    from brainstacks.versions import WRITER_LOCK, writer_lock
    from tests.toy_recipes import write_toy_recipe
    from training.curriculum import train_bundle
    from training.recipe import load_recipe

    recipe = load_recipe(write_toy_recipe(tmp_path, tiny_base(tmp_path / "base"), ["math"]))
    out = tmp_path / "bundle"
    with writer_lock(out, "brainstacks stacks import"):  # another writer holds it
        with pytest.raises(BundleError, match=r"another writer is writing this bundle \(pid \d+ \(brainstacks stacks"):
            train_bundle(recipe, out, progress=False, log=lambda *_: None)
        assert not (out / "manifest.json").exists()  # refused before writing anything
    assert (out / WRITER_LOCK).is_file()
    with writer_lock(out, "test"):  # released when the holder ends: the next run may take it
        pass

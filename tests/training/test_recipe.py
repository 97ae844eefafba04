"""Recipe parsing: docs/DESIGN.md §5 keys, defaults from the config dataclasses, errors that name the key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainstacks.config import NullspaceConfig, RouterConfig, StackConfig
from brainstacks.errors import ConfigError
from training.config import GRPOConfig, RouterTrainConfig, TrainConfig
from training.recipe import load_recipe

FULL = """
[base]
model = "base"
quantize = "none"
dtype = "float32"

[stack]
experts = 2
top_k = 1
rank = 4
alpha = 8
rslora = false
targets = ["q_proj", "v_proj"]
aux_loss_coef = 0.02
frozen_dtype = "float32"

[train]
steps_per_round = 10
max_rounds = 2
min_improvement = 0.01
lr = 1e-3
batch_size = 2
grad_accum = 2
seq_len = 64
eval_every = 5
seed = 7

[nullspace]
enabled = false
samples = 20
directions = 4

[router]
enabled = true
router_tokens = 32
oracle_samples = 10
epochs = 2
lr = 1e-3
min_weight = 0.1
floors = { chat = 0.2 }

[[domains]]
name = "math"
train = "data/math.jsonl"
format = "prompt_completion"

[[domains]]
name = "chat"
train = "data/chat.jsonl"
valid = "data/chat_valid.jsonl"
format = "messages"
stage = "sft"

[[domains]]
name = "pref"
train = "data/pref.jsonl"
format = "preference"
stage = "dpo"

[[router.mixed]]
file = "data/mixed.jsonl"
domains = ["math", "chat"]
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "base").mkdir()
    (tmp_path / "data").mkdir()
    for f in ("math", "chat", "chat_valid", "pref", "mixed"):
        (tmp_path / "data" / f"{f}.jsonl").write_text("{}\n")
    return tmp_path


def write(tree: Path, text: str) -> Path:
    p = tree / "recipe.toml"
    p.write_text(text)
    return p


def test_full_recipe_parses_with_paths_relative_to_the_recipe(tree: Path):
    r = load_recipe(write(tree, FULL))
    assert r.base.model == (tree / "base").resolve() and r.base.quantize == "none"
    assert r.stack == StackConfig(
        experts=2, top_k=1, rank=4, alpha=8.0, rslora=False, targets=("q_proj", "v_proj"), aux_loss_coef=0.02,
        frozen_dtype="float32",
    )
    assert (r.train.steps_per_round, r.train.grad_accum, r.train.seed, r.train.lr) == (10, 2, 7, 1e-3)
    assert r.nullspace == NullspaceConfig(enabled=False, samples=20, directions=4)
    assert (r.router.router_tokens, r.router.min_weight, r.router.floors) == (32, 0.1, {"chat": 0.2})
    assert (r.router_train.epochs, r.router_train.oracle_samples, r.router_train.lr) == (2, 10, 1e-3)
    assert [d.name for d in r.domains] == ["math", "chat", "pref"]
    assert r.domains[1].valid == (tree / "data/chat_valid.jsonl").resolve() and r.domains[0].valid is None
    assert r.domains[2].stage == "dpo"
    assert r.mixed[0].file == (tree / "data/mixed.jsonl").resolve() and r.mixed[0].domains == ["math", "chat"]


def test_defaults_come_from_the_config_dataclasses(tree: Path):
    r = load_recipe(write(tree, '[base]\nmodel = "base"\n[[domains]]\nname = "a"\ntrain = "data/math.jsonl"\n'))
    assert r.stack == StackConfig() and r.nullspace == NullspaceConfig() and r.router == RouterConfig()
    assert r.train == TrainConfig() and r.router_train == RouterTrainConfig() and r.grpo == GRPOConfig()
    assert r.train.min_improvement == 0.002 and r.train.max_rounds == 3
    assert (r.router_train.oracle_samples, r.router_train.epochs, r.router_train.lr) == (200, 8, 8e-4)
    assert (r.router_train.weight_decay, r.router_train.batch_size) == (0.01, 16)
    assert r.domains[0].format == "prompt_completion" and r.domains[0].stage == "sft"


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("steps_per_round = 10", "stpes = 10", "[train] unknown key 'stpes'"),
        ("rank = 4", "rnak = 4", "[stack] unknown key 'rnak'"),
        ('frozen_dtype = "float32"', 'frozen_dtype = "int4"', "[stack] frozen_dtype must be one of"),
        ('dtype = "float32"', 'dtype = "int8"', "[base] dtype must be one of"),
        ('format = "messages"', 'format = "messages"\nweight = 2', "unknown key 'weight'"),
        ("[nullspace]", "[nulspace]", "unknown section or key 'nulspace'"),
        ("rank = 4", "rank = 0", "[stack] rank must be >= 1, got 0"),
        ("rank = 4", 'rank = "4"', "[stack] rank must be an integer, got '4'"),
        ("lr = 1e-3\nbatch_size", "lr = -1.0\nbatch_size", "[train] lr must be > 0.0, got -1.0"),
        ("rslora = false", "rslora = 0", "[stack] rslora must be true or false, got 0"),
        ("top_k = 1", "top_k = 3", "[stack] top_k must be"),
        ('"q_proj", "v_proj"', '"q_proj", "qkv"', "[stack] targets has unknown projection 'qkv'"),
        ('quantize = "none"', 'quantize = "int8"', "[base] quantize must be one of"),
        ("min_weight = 0.1", "min_weight = 1.0", "[router] min_weight must be < 1.0, got 1.0"),
        ("min_weight = 0.1", "min_weight = 1.5", "[router] min_weight must be < 1.0, got 1.5"),
        ("router_tokens = 32", "router_tokens = 65537", "[router] router_tokens must be <= 65536, got 65537"),
        ("chat = 0.2", "chat = 1.2", "[router] floors.chat must be <= 1.0, got 1.2"),
        ("chat = 0.2", "code = 0.2", "[router] floors.code names unknown domain 'code'"),
        ('stage = "dpo"', 'stage = "sft"', "stage 'sft' does not fit format 'preference'"),
        ('format = "messages"', 'format = "chat"', "format must be one of"),
        ('name = "pref"', 'name = "math"', "duplicate domain 'math'"),
        ('name = "pref"', 'name = "../x"', "name must be"),
        ('train = "data/math.jsonl"', 'train = "data/nope.jsonl"', "'data/nope.jsonl': no such file"),
        ('model = "base"', 'model = "nobase"', "[base] model 'nobase': no such directory"),
        ('domains = ["math", "chat"]', 'domains = ["math", "law"]', "names unknown domain 'law'"),
        ('file = "data/mixed.jsonl"', 'fiel = "data/mixed.jsonl"', "[[router.mixed]] #1 unknown key 'fiel'"),
    ],
)
def test_bad_recipes_name_the_key_and_value(tree: Path, old: str, new: str, expected: str):
    assert old in FULL
    path = write(tree, FULL.replace(old, new, 1))
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert expected in str(e.value)
    assert str(path) in str(e.value)


def test_missing_domains_and_bad_toml(tree: Path):
    with pytest.raises(ConfigError, match="no \\[\\[domains\\]\\]"):
        load_recipe(write(tree, '[base]\nmodel = "base"\n'))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(write(tree, "[base\n"))
    with pytest.raises(ConfigError, match="missing required key 'model'"):
        load_recipe(write(tree, '[[domains]]\nname = "a"\ntrain = "data/math.jsonl"\n'))
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_recipe(tree / "absent.toml")


@pytest.mark.parametrize("section, cls", [("stack", StackConfig), ("train", TrainConfig),
                                          ("nullspace", NullspaceConfig), ("router", RouterConfig),
                                          ("router", RouterTrainConfig), ("grpo", GRPOConfig)])
def test_the_recipe_and_the_library_accept_the_same_values(section, cls):
    """At and just past every declared bound, a recipe key is accepted exactly when the library's validate() accepts
    the same value (they used to disagree: router_tokens 65537, min_weight 1.0, experts 65)."""
    import dataclasses

    from brainstacks.config import declared_fields
    from training.recipe import parse_recipe

    tried = 0
    for name, f in declared_fields(cls).items():
        lo, hi, kind = f.metadata["min"], f.metadata["max"], type(f.default)
        for v in [b + d for b in (lo, hi) if b is not None for d in (-1, 0, 1)]:
            v = kind(v)
            try:
                dataclasses.replace(cls(), **{name: v}).validate()
                library = True
            except ConfigError:
                library = False
            doc = {"base": {"model": "b"}, section: {name: v}, "domains": [{"name": "a", "train": "a.jsonl"}]}
            try:
                parse_recipe(doc, Path("/r/recipe.toml"), check_files=False)
                recipe = True
            except ConfigError as e:
                if "unknown key" in str(e):  # a tuned field, not a recipe key
                    break
                assert name in str(e)
                recipe = False
            assert recipe == library, (section, name, v)
            tried += 1
    assert tried >= 3

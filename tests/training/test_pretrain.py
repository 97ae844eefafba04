"""`brainstacks pretrain` and its corpus: a tiny real run (few steps, tiny model) saved, reloaded and used."""

from __future__ import annotations

import json
import math

import pytest

from brainstacks.errors import ConfigError
from training.demo.corpus import CorpusConfig, build_corpus, render_messages
from training.pretrain import PretrainConfig, build_model, pretrain, train_tokenizer, warmup_of

TINY = dict(
    steps=40, seq_len=64, batch_size=8, lr=3e-3, warmup_steps=4, vocab_size=512, hidden_size=64, num_layers=2,
    intermediate_size=128, num_heads=2, num_kv_heads=1, max_position_embeddings=128, eval_every=20, eval_batches=2,
    progress=False,
)  # fmt: skip
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "List two fruits as bullets."},
    {"role": "assistant", "content": "- pear\n- plum"},
]


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(CorpusConfig(max_chars=120_000, seed=0))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, corpus):
    return pretrain(tmp_path_factory.mktemp("base"), PretrainConfig(**TINY), corpus)


def test_corpus_is_deterministic_capped_and_mixed(corpus):
    assert corpus == build_corpus(CorpusConfig(max_chars=120_000, seed=0))
    assert corpus != build_corpus(CorpusConfig(max_chars=120_000, seed=1))
    total = sum(len(d) for d in corpus)
    assert 115_000 <= total <= 120_000
    text = "\n".join(corpus)
    assert "def " in text and "import " in text  # standard-library source
    assert "<|assistant|>" in text and "Answer: " in text  # demo domains (chat layout, worked answers)


def test_corpus_demo_share_never_contains_valid_or_test_prompts(corpus):
    from training.demo.sampling import DOMAINS, generate, prompt_key

    text = "\n".join(corpus)
    for domain in DOMAINS:
        for split in ("valid", "test"):
            for row in generate(domain, split, 40, seed=0):
                assert prompt_key(row).strip() not in text


def test_corpus_shares_are_relative_and_bad_ones_refused():
    only_generated = build_corpus(CorpusConfig(max_chars=5000, prose_share=0, code_share=0, demo_share=0))
    assert 4900 <= sum(len(d) for d in only_generated) <= 5000
    assert all(" spent the morning " in d for d in only_generated)
    with pytest.raises(ConfigError, match="shares"):
        build_corpus(CorpusConfig(max_chars=1000, demo_share=-0.1))


def test_default_model_fits_nf4_and_bad_shapes_are_refused(corpus):
    import torch

    cfg = PretrainConfig()
    cfg.validate()
    tok = train_tokenizer(corpus, cfg.vocab_size, cfg.max_position_embeddings)
    model = build_model(cfg, tok)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 7 * cfg.num_layers + 1  # q k v o gate up down per layer, plus the (tied) head
    assert all(m.out_features % 32 == 0 for m in linears)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.raises(ConfigError, match="multiple of 32"):
        PretrainConfig(intermediate_size=700).validate()
    with pytest.raises(ConfigError, match="seq_len"):
        PretrainConfig(seq_len=1024).validate()


def test_lr_schedule_warmup_is_at_most_a_tenth_of_the_steps():
    assert warmup_of(PretrainConfig(steps=100, warmup_steps=10)) == 10
    assert warmup_of(PretrainConfig(steps=100, warmup_steps=30)) == 10
    assert warmup_of(PretrainConfig(steps=5, warmup_steps=30)) == 1
    assert warmup_of(PretrainConfig(steps=100, warmup_steps=0)) == 0


def test_pretrain_saves_a_loadable_model_whose_loss_went_down(base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    tok = AutoTokenizer.from_pretrained(base_dir)
    assert model.config.model_type == "llama" and model.config.hidden_size == TINY["hidden_size"]
    assert str(model.dtype) == "torch.bfloat16"  # saved small
    assert model.config.vocab_size >= len(tok) and model.config.vocab_size % 32 == 0
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert model.config.eos_token_id == tok.eos_token_id

    report = json.loads((base_dir / "reports" / "pretrain_loss.json").read_text())
    loss = report["loss"]
    assert len(loss) == TINY["steps"] and all(math.isfinite(x) for x in loss)
    warm = min(TINY["warmup_steps"], TINY["steps"] // 10)  # warmup_of: at most a tenth of the steps
    assert warm > 1 and report["lr"][0] == pytest.approx(TINY["lr"] / (warm + 1))  # linear warmup from lr/(w+1)
    assert report["lr"][warm - 1] < report["lr"][warm] == pytest.approx(TINY["lr"])  # then cosine decay from lr
    assert max(report["lr"]) == pytest.approx(TINY["lr"]) and report["lr"][-1] < TINY["lr"] / 2
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 0.5
    assert report["val_step"] == [20, 40] and report["val_loss"][-1] < math.log(len(tok))
    assert (base_dir / "reports" / "pretrain_loss.png").read_bytes()[:4] == b"\x89PNG"

    # The reloaded model generates (greedy, a few tokens).
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    out = model.float().generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 5 or out[0, -1].item() == tok.eos_token_id


def test_tokenizer_chat_template_and_round_trip(base_dir):
    from transformers import AutoTokenizer

    from training.tokenization import tokenize_sft

    tok = AutoTokenizer.from_pretrained(base_dir)
    text = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert text == "<|bos|>" + render_messages(MESSAGES)
    prompt = tok.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt) and prompt.endswith("<|assistant|>\n")
    ids = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=False)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    for marker in ("<|system|>", "<|user|>", "<|assistant|>"):
        assert tok.convert_tokens_to_ids(marker) in ids  # one id each, not split into bytes

    sample = "Dose: 15 mg/kg, 38.5 °C — naïve café ✓\n    return x * 2"
    assert tok.decode(tok(sample, add_special_tokens=False)["input_ids"]) == sample
    assert tok(sample)["input_ids"][0] == tok.bos_token_id

    # The SFT loader finds exactly the assistant reply (and its EOS) as the labelled tokens.
    ex = tokenize_sft(tok, {"messages": MESSAGES}, "messages")
    labelled = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != -100]
    assert tok.decode(labelled).rstrip("\n") == "- pear\n- plum<|eos|>"  # the layout's newline may follow EOS


def test_cli_flags_mirror_the_config_defaults():
    from brainstacks_cli.main import build_parser

    args = build_parser().parse_args(["pretrain", "--out", "x", "--steps", "7", "--no-progress"])
    assert args.steps == 7 and args.progress is False and callable(args.func)
    defaults = PretrainConfig()
    assert args.seq_len == defaults.seq_len and args.hidden_size == defaults.hidden_size
    assert args.corpus_chars == CorpusConfig().max_chars

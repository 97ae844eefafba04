"""Tiny random models for tests and quick benchmarks: built locally, never downloaded.

    path = tiny_base(tmp_path / "base", family="llama")   # a saved HF directory with a word-level tokenizer

Every projection's out_features is a multiple of 32, as bitsandbytes NF4 requires.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

FAMILIES = ("llama", "qwen2", "gemma2")

# A fixed word list so every tiny tokenizer is identical and texts in tests tokenize predictably.
WORDS = (
    "the a an of to and in is it that for on with as are was be by this at from or have not but what all were when "
    "we there can your which their said if do will each about how up out them then she many some so these would other "
    "into has more her two like him see time could no make than first been its who now people my made over did down "
    "only way find use may water long little very after words called just where most know math add sum plus minus "
    "times equals per answer dose mg kg patient drug heart blood code def return print list function value python if else"
).split()


def tiny_tokenizer(extra_words: tuple[str, ...] = ()):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS) | set(extra_words)))}
    for ch in "0123456789.,:;?!+-*/=()":
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.Punctuation()])
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                                eos_token="<eos>")
    t.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    return t


def tiny_config(family: str = "llama", vocab_size: int = 256, hidden: int = 64, layers: int = 2,
                intermediate: int = 128, heads: int = 4, kv_heads: int = 2):
    """A transformers config for a tiny model of `family`; every projection out_features divisible by 32."""
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                  pad_token_id=1, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    if family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if family == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    if family == "gemma2":
        from transformers import Gemma2Config

        return Gemma2Config(**common, head_dim=hidden // heads, sliding_window=64)
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")


def tiny_base(path: str | os.PathLike, family: str = "llama", seed: int = 0, **sizes) -> Path:
    """Build, save and return a tiny random causal LM directory (model + tokenizer)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tok = tiny_tokenizer()
    cfg = tiny_config(family, vocab_size=max(len(tok), sizes.pop("vocab_size", 256)), **sizes)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def randomize_active(sm, std: float = 0.05, seed: int = 0) -> None:
    """Give the active stack non-zero B (a fresh stack is an exact no-op) and distinct router rows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in sm.active_modules().values():
            m.B.copy_(torch.randn(m.B.shape, generator=g) * std)
            m.W.copy_(torch.randn(m.W.shape, generator=g) * 0.5)


def add_random_stacks(sm, per_domain: dict[str, int], seed: int = 0, dtype: str = "float32") -> None:
    k = 0
    for domain, n in per_domain.items():
        if domain not in sm.domains:
            sm.add_domain(domain)
        for _ in range(n):
            sm.start_stack(domain)
            randomize_active(sm, seed=seed + k)
            sm.freeze_active(dtype)
            k += 1

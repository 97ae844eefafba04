"""Fixtures for training tests: a tiny byte-level BPE tokenizer built in memory (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CORPUS = [
    "what is two plus two? four. what is three plus five? eight.",
    "the patient has a fever and a cough; rest and fluids.",
    "def add(a, b): return a + b",
    "hello there, how are you today? i am fine, thanks.",
]


def make_tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="session")
def tiny_tok():
    return make_tokenizer()


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def make_tok():
    """make_tokenizer(chat_template=None): a fresh tiny tokenizer, optionally with a chat template."""
    return make_tokenizer


@pytest.fixture
def write_jsonl():
    """write_jsonl(path, rows): rows are objects (dumped as JSON) or raw strings (written as they are)."""
    return _write_jsonl

"""Incremental detokenization and stop strings across token boundaries (server/textstream.py)."""

from __future__ import annotations

import pytest

from server.textstream import ChoiceText, _held


@pytest.mark.parametrize("text", ["café naïve résumé 🙂 done", "the quick brown fox jumps over the lazy dog", "🙂🙂 x"])
def test_incremental_text_equals_full_decode(tiny_tokenizer, text):
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    c = ChoiceText(tiny_tokenizer, [])
    pieces = []
    for t in ids:
        c.add(t)
        pieces.append(c.ready())
    c.finish("length")
    pieces.append(c.ready())
    assert "".join(pieces) == tiny_tokenizer.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces), "a split multi-byte character must be held, not sent broken"


def test_stop_string_spanning_tokens_is_found_and_cut(tiny_tokenizer):
    text = "the quick brown fox jumps over the lazy dog"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [tiny_tokenizer.decode([t]) for t in ids]
    # a stop made of the end of one token and the start of the next
    j = next(i for i in range(len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[j][-2:] + pieces[j + 1][:2]
    expected = text[: text.find(stop)]
    c = ChoiceText(tiny_tokenizer, ["zzz-never", stop])
    streamed = []
    hit_at = None
    for k, t in enumerate(ids):
        if c.add(t):
            hit_at = k
            break
        streamed.append(c.ready())
    assert hit_at == j + 1
    streamed.append(c.ready())
    assert c.finish_reason == "stop"
    assert "".join(streamed) == c.text == expected
    assert stop not in "".join(streamed)


def test_partial_stop_is_held_back_while_streaming(tiny_tokenizer):
    c = ChoiceText(tiny_tokenizer, ["END!"])
    for t in tiny_tokenizer("abc EN", add_special_tokens=False)["input_ids"]:
        c.add(t)
    assert c.ready() == "abc "  # "EN" could still become "END!"
    for t in tiny_tokenizer("X", add_special_tokens=False)["input_ids"]:
        c.add(t)
    assert c.ready() == "ENX"


def test_skip_ids_are_counted_not_shown(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    c = ChoiceText(tiny_tokenizer, [], skip_ids=frozenset({eos}))
    for t in tiny_tokenizer("hi", add_special_tokens=False)["input_ids"] + [eos]:
        c.add(t)
    c.finish("stop")
    assert c.ready() == "hi" and c.n_tokens == len(tiny_tokenizer("hi", add_special_tokens=False)["input_ids"]) + 1


def test_held_prefix_length():
    assert _held("hello wor", ["world"]) == 3
    assert _held("hello", ["xyz"]) == 0
    assert _held("ab", ["abc", "b"]) == 2

"""Data loading: the four JSONL formats, answer-only labels, chat fallback, packing, splits, collate, bad lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainstacks.text import FALLBACK_CHAT_TEMPLATE
from training.config import DomainSpec
from training.data_files import DataError, read_jsonl, read_jsonl_any, split_records
from training.tokenization import (
    IGNORE_INDEX,
    Collator,
    PreferenceCollator,
    load_domain,
    pack,
    tokenize_preference,
    tokenize_records,
    tokenize_sft,
)


def answer_text(tok, ex) -> str:
    return tok.decode([i for i, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX])


def test_prompt_completion_labels_only_the_completion_and_eos(tiny_tok):
    ex = tokenize_sft(
        tiny_tok, {"prompt": "what is two plus two?", "completion": " four.", "id": 3}, "prompt_completion"
    )
    assert ex.input_ids[0] == tiny_tok.bos_token_id
    assert ex.input_ids[-1] == tiny_tok.eos_token_id and ex.labels[-1] == tiny_tok.eos_token_id
    assert answer_text(tiny_tok, ex) == " four.</s>"
    n_prompt = len(tiny_tok("what is two plus two?")["input_ids"])
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]


def test_messages_label_every_assistant_turn_with_fallback_template(tiny_tok):
    assert tiny_tok.chat_template is None
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "two plus two"},
        {"role": "assistant", "content": "four"},
    ]
    ex = tokenize_sft(tiny_tok, {"messages": msgs}, "messages")
    assert answer_text(tiny_tok, ex) == "hi</s>\nfour</s>\n"
    assert ex.input_ids[0] == tiny_tok.bos_token_id and ex.input_ids[1] != tiny_tok.bos_token_id
    assert tiny_tok.decode(ex.input_ids).startswith("<s><|system|>\nbe brief\n<|user|>\nhello\n<|assistant|>\nhi")
    # the prompt part is exactly what the server encodes for a chat request: BOS + rendered conversation
    from brainstacks.text import encode_prompt, render_chat

    served = encode_prompt(tiny_tok, render_chat(tiny_tok, msgs[:2], add_generation_prompt=True))
    assert ex.input_ids[: len(served)] == served and ex.labels[len(served)] != IGNORE_INDEX


def test_messages_use_the_tokenizers_own_template(make_tok):
    tmpl = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = make_tok(tmpl)
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]
    ex = tokenize_sft(tok, {"messages": msgs}, "messages")
    assert answer_text(tok, ex) == "hi there<|im_end|>\n"
    assert "<|user|>" not in tok.decode(ex.input_ids) and FALLBACK_CHAT_TEMPLATE not in tmpl
    # a template that writes BOS itself does not get a second one
    bos_tok = make_tok("{{ bos_token }}" + tmpl)
    ex2 = tokenize_sft(bos_tok, {"messages": msgs}, "messages")
    assert ex2.input_ids[0] == bos_tok.bos_token_id and ex2.input_ids[1] != bos_tok.bos_token_id
    assert answer_text(bos_tok, ex2) == "hi there<|im_end|>\n"


def test_text_labels_everything_and_chunks_long_texts(tiny_tok):
    recs = [{"text": "hello there, how are you today? " * 4}]
    ex = tokenize_sft(tiny_tok, recs[0], "text")
    assert ex.labels == ex.input_ids
    chunks = tokenize_records(tiny_tok, [_rec(recs[0])], "text", seq_len=16)
    assert len(chunks) == -(-len(ex) // 16) and all(len(c) <= 16 for c in chunks)
    assert sum(len(c) for c in chunks) == len(ex)


def _rec(obj):
    from training.data_files import Record

    return Record(Path("x.jsonl"), 1, obj)


def test_truncation_drops_examples_without_answer_tokens(tiny_tok):
    long_prompt = {"prompt": "what is two plus two? " * 10, "completion": "four"}
    short = {"prompt": "two plus two?", "completion": "four"}
    out = tokenize_records(tiny_tok, [_rec(long_prompt), _rec(short)], "prompt_completion", seq_len=12)
    assert len(out) == 1 and len(out[0]) <= 12 and out[0].n_label_tokens > 0


def test_packing_keeps_every_token_and_label(tiny_tok):
    recs = [_rec({"prompt": f"what is {w}?", "completion": f" {w}."}) for w in ("two", "three", "five", "eight")]
    plain = tokenize_records(tiny_tok, recs, "prompt_completion", seq_len=64)
    packed = tokenize_records(tiny_tok, recs, "prompt_completion", seq_len=16, packing=True)
    assert [len(p) for p in packed[:-1]] == [16] * (len(packed) - 1)
    assert sum((p.input_ids for p in packed), []) == sum((e.input_ids for e in plain), [])
    assert sum((p.labels for p in packed), []) == sum((e.labels for e in plain), [])
    assert pack(plain, 1000)[0].input_ids == sum((e.input_ids for e in plain), [])


def test_preference_pairs_and_their_collate(tiny_tok):
    pair = tokenize_preference(tiny_tok, {"prompt": "two plus two?", "chosen": " four", "rejected": " five"}, 64)
    assert pair.prompt_ids[0] == tiny_tok.bos_token_id
    assert tiny_tok.decode(pair.chosen_ids) == " four</s>" and tiny_tok.decode(pair.rejected_ids) == " five</s>"
    batch = PreferenceCollator(tiny_tok.pad_token_id)([pair, pair])
    assert batch["input_ids"].shape[0] == 4
    lab = batch["labels"][0]
    assert (lab[: len(pair.prompt_ids)] == IGNORE_INDEX).all()
    assert lab[len(pair.prompt_ids) : len(pair.prompt_ids) + len(pair.chosen_ids)].tolist() == pair.chosen_ids
    assert batch["labels"][2][len(pair.prompt_ids) :].tolist()[: len(pair.rejected_ids)] == pair.rejected_ids
    # a long prompt is cut from the left and keeps BOS, so the pair fits seq_len
    long = tokenize_preference(tiny_tok, {"prompt": "hello " * 40, "chosen": "a", "rejected": "b"}, 20)
    assert long.prompt_ids[0] == tiny_tok.bos_token_id
    assert len(long.prompt_ids) + max(len(long.chosen_ids), len(long.rejected_ids)) <= 20


def test_collate_pads_right_with_masked_labels(tiny_tok):
    a = tokenize_sft(tiny_tok, {"prompt": "hi", "completion": "hello there"}, "prompt_completion")
    b = tokenize_sft(tiny_tok, {"prompt": "hi", "completion": "ok"}, "prompt_completion")
    batch = Collator(tiny_tok.pad_token_id)([a, b])
    assert batch["input_ids"].shape == (2, len(a))
    assert batch["attention_mask"][1].tolist() == [1] * len(b) + [0] * (len(a) - len(b))
    assert batch["labels"][1, len(b) :].eq(IGNORE_INDEX).all()
    assert batch["input_ids"][1, len(b) :].eq(tiny_tok.pad_token_id).all()


@pytest.mark.parametrize(
    "fmt, line, reason",
    [
        ("prompt_completion", '{"prompt": "a", "completion": "b"', "invalid JSON"),
        ("prompt_completion", '{"prompt": "a"}', "missing key 'completion'"),
        ("prompt_completion", '{"prompt": 1, "completion": "b"}', "'prompt' must be a string, got int"),
        ("prompt_completion", "[1, 2]", "expected a JSON object, got list"),
        ("messages", '{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role must be one of"),
        ("messages", '{"messages": [{"role": "user", "content": "x"}]}', "no non-empty assistant message"),
        ("text", '{"text": ""}', "'text' is empty"),
        ("preference", '{"prompt": "p", "chosen": "a", "rejected": "a"}', "identical"),
    ],
)
def test_bad_line_is_reported_with_file_and_line(tmp_path: Path, write_jsonl, fmt: str, line: str, reason: str):
    good = {
        "prompt_completion": {"prompt": "a", "completion": "b"},
        "messages": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        "text": {"text": "a"},
        "preference": {"prompt": "p", "chosen": "a", "rejected": "b"},
    }[fmt]
    path = write_jsonl(tmp_path / "d.jsonl", [good, "", good, line, good])
    with pytest.raises(DataError) as e:
        read_jsonl(path, fmt)
    assert str(e.value).startswith(f"{path}:4: ") and reason in str(e.value)


def test_extra_keys_ignored_blank_lines_skipped_and_empty_file_refused(tmp_path: Path, write_jsonl):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b", "source": "x"}, "  ", {"text": "t"}])
    with pytest.raises(DataError, match=":3: missing key 'prompt'"):
        read_jsonl(path, "prompt_completion")
    path = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "a", "completion": "b", "meta": {"k": 1}}, ""])
    assert [r.line for r in read_jsonl(path, "prompt_completion")] == [1]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        read_jsonl(tmp_path / "empty.jsonl", "text")
    fmt, recs = read_jsonl_any(write_jsonl(tmp_path / "m.jsonl", [{"prompt": "a", "completion": "b"}]))
    assert fmt == "prompt_completion" and len(recs) == 1


def test_validation_split_is_deterministic_by_prompt(tmp_path: Path, tiny_tok, write_jsonl):
    rows = [{"prompt": f"q{i % 30}", "completion": f"a{i}"} for i in range(90)]
    recs = read_jsonl(write_jsonl(tmp_path / "d.jsonl", rows), "prompt_completion")
    tr, va = split_records(recs, "prompt_completion", 0.2, seed=0)
    tr2, va2 = split_records(list(reversed(recs)), "prompt_completion", 0.2, seed=0)
    assert {r.line for r in va} == {r.line for r in va2} and len(tr) + len(va) == 90
    assert 0 < len(va) < 45
    assert not {r.data["prompt"] for r in tr} & {r.data["prompt"] for r in va}  # same prompt, same side
    _, va3 = split_records(recs, "prompt_completion", 0.2, seed=1)
    assert {r.line for r in va3} != {r.line for r in va}
    two = recs[:2]
    tr4, va4 = split_records(two, "prompt_completion", 0.0, seed=0)
    assert len(tr4) == 1 and len(va4) == 1

    spec = DomainSpec("math", tmp_path / "d.jsonl", None, "prompt_completion", "sft")
    data = load_domain(spec, tiny_tok, seq_len=32, valid_fraction=0.2)
    assert len(data.valid) == len(va) and len(data.train) == len(tr)

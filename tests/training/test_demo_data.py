"""Demo data: determinism, template hold-out, formats, answers re-derived independently, and the scorers."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from brainstacks.errors import ConfigError
from training.demo import word_problems
from training.demo.answers import check_answer, extract_answer
from training.demo.sampling import (
    DOMAINS,
    MIXED_FRAMING_DOMAINS,
    as_prompt_completion,
    domain_format,
    generate,
    prompt_key,
    templates,
    write_demo_data,
)
from training.rewards import extract_code, run_tests

N = 150  # rows per generated sample in these tests


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_same_rows_other_seed_other_rows(domain):
    a = generate(domain, "train", 40, seed=3)
    assert a == generate(domain, "train", 40, seed=3)
    assert a != generate(domain, "train", 40, seed=4)
    assert len({prompt_key(r) for r in a}) == 40  # no duplicate prompts inside a split


@pytest.mark.parametrize("domain", DOMAINS)
def test_whole_templates_are_held_out(domain):
    ts = templates(domain)
    held = {t.name for t in ts if t.held_out}
    kinds = {t.kind for t in ts}
    assert held and len(held) == len(kinds)  # one held-out phrasing per kind
    train = generate(domain, "train", max(N, 6 * len(ts)), seed=0)  # enough rows to draw every template
    valid = generate(domain, "valid", 40, seed=0)
    test = generate(domain, "test", 60, seed=0)
    assert not {r["template"] for r in train} & held  # training never sees a held-out wording
    assert {r["template"] for r in valid} <= held and {r["template"] for r in test} <= held
    keys = [{prompt_key(r) for r in rows} for rows in (train, valid, test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert len({r["template"] for r in train}) >= len(ts) - len(held) - 1  # the training templates are all used


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_converted):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_converted["dir"]), local_files_only=True)


def test_write_demo_data_layout_and_formats(tmp_path, smollm2_tokenizer):
    from training.data_files import read_jsonl  # the real loaders must accept every file

    paths = write_demo_data(tmp_path, smollm2_tokenizer, seed=0, sizes={"train": 60, "valid": 8, "test": 8})
    assert set(paths) == set(DOMAINS)
    for domain, splits in paths.items():
        assert set(splits) == {"train", "valid", "test"}
        for split, path in splits.items():
            fmt = domain_format(domain, split)
            assert fmt == ("prompt_completion" if domain in MIXED_FRAMING_DOMAINS and split != "test" else "messages")
            recs = read_jsonl(path, fmt)
            assert len(recs) == {"train": 60, "valid": 8, "test": 8}[split]
            if fmt == "messages":
                assert all(r.data["messages"][-1]["role"] == "assistant" for r in recs)
            else:  # chat rows rendered through the template, raw completion rows only among training rows
                chat = [r for r in recs if r.data["prompt"].endswith("<|im_start|>assistant\n")]
                raw = [r for r in recs if "<|im_start|>" not in r.data["prompt"]]
                assert len(chat) + len(raw) == len(recs) and chat
                assert (len(raw) > 0) == (split == "train"), (domain, split, len(raw))


def test_completion_rows_are_raw_framings_with_the_same_worked_reply():
    rows = generate("math", "train", 400, seed=0)
    raw = [r for r in rows if "prompt" in r]
    assert 0.2 < len(raw) / len(rows) < 0.4  # COMPLETION_SHARE of the training rows
    assert len({r["prompt"].split(":")[0] for r in raw}) >= 4  # several framings, not one
    for r in raw:
        assert r["question"] in r["prompt"] and r["completion"].rstrip().endswith(f"Answer: {r['answer']}")
        # the reply starts on its own line whether or not the prompt ended with one
        assert r["prompt"].endswith("\n") or r["completion"].startswith("\n"), r
    assert not any("prompt" in r for r in generate("math", "test", 60, seed=0))  # held-out rows stay chats
    assert all("messages" in r for r in generate("math", "train", 100, seed=0, completions=False))


def test_chat_rows_as_prompt_completion_tokenize_exactly_as_messages(smollm2_tokenizer):
    """The rendered rows give the same ids and answer labels as format "messages", up to the template's newline
    after the end-of-turn token (generation stops at that token, so nothing after it is ever decoded)."""
    from training.tokenization import tokenize_sft

    tok = smollm2_tokenizer
    rows = [r for r in generate("medical", "train", 60, seed=1) if "messages" in r][:12]
    assert any(r["messages"][0]["role"] == "system" for r in rows + generate("math", "train", 60, seed=1)
               if "messages" in r)
    for row, pc in zip(rows, as_prompt_completion(rows, tok), strict=True):
        assert pc["question"] == row["messages"][-2]["content"] and pc["answer"] == row["answer"]
        a, b = tokenize_sft(tok, row, "messages"), tokenize_sft(tok, pc, "prompt_completion")
        n = len(b.input_ids)
        assert a.input_ids[:n] == b.input_ids and a.labels[:n] == b.labels
        assert b.labels[-1] == tok.eos_token_id and not tok.decode(a.input_ids[n:]).strip()


def test_raw_question_rows_are_the_user_text_of_chat_training_rows():
    from training.demo.sampling import raw_question_rows

    twins = raw_question_rows("medical", 20, seed=0, train_rows=80)
    chats = [r for r in generate("medical", "train", 80, seed=0) if "messages" in r]
    assert [t["prompt"] for t in twins] == [r["messages"][-2]["content"] for r in chats[:20]]
    assert all("<|" not in t["prompt"] and t["completion"] == "." for t in twins)


def test_a_template_with_its_own_turn_end_keeps_it_in_the_completion(tmp_path):
    """A template that separates the reply (" yo") and ends the turn without EOS: the completion carries its text
    exactly, and the rendered prompt plus completion is the whole conversation."""
    from transformers import AutoTokenizer

    from brainstacks.text import render_chat
    from brainstacks.tiny_models import tiny_base

    tok = AutoTokenizer.from_pretrained(str(tiny_base(tmp_path / "base", family="llama", seed=0)))
    rows = generate("math", "valid", 3, seed=0)
    for row, pc in zip(rows, as_prompt_completion(rows, tok), strict=True):
        full = render_chat(tok, row["messages"])
        assert pc["prompt"] == render_chat(tok, row["messages"][:-1], add_generation_prompt=True)
        whole = pc["prompt"] + pc["completion"]
        assert full.startswith(whole) and not full[len(whole):].strip()
        assert row["messages"][-1]["content"] in pc["completion"]


def test_unknown_domain_split_and_sizes_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown demo domain"):
        generate("poetry", "train", 1)
    with pytest.raises(ConfigError, match="unknown split"):
        generate("math", "dev", 1)
    with pytest.raises(ConfigError, match="unknown split"):
        write_demo_data(tmp_path, None, sizes={"dev": 3})


def _prompt(r: dict) -> str:
    """The user's text of a chat row, or a raw completion row's whole prompt."""
    return r["messages"][-2]["content"] if "messages" in r else r["prompt"]


def _reply(r: dict) -> str:
    return r["messages"][-1]["content"] if "messages" in r else r["completion"]


def _first_role(r: dict) -> str | None:
    return r["messages"][0]["role"] if "messages" in r else None


_EQ = re.compile(r"-?\d+(?:\.\d+)?(?: [-+*/] -?\d+(?:\.\d+)?)*")


def _check_chains(text: str) -> int:
    """Every "expr = expr = ..." chain of numbers in `text` must hold exactly; returns how many chains were checked."""
    checked = 0
    for line in text.splitlines():
        if line.startswith("Answer:"):
            continue
        body = re.sub(r"^[^=]*?:\s", "", line)  # a step's label ("Given away: 27 + 18 = 45")
        body = re.sub(r"\(check: .*?\)", "", body)
        body = re.sub(r"[a-zA-Z/%]+(?=\s|$)", lambda m: "" if m.group(0) != "/" else "/", body)
        parts = [p.strip() for p in body.split("=")]
        values = []
        for p in parts:
            p = re.sub(r"\s+", " ", p).strip(" ,.")
            if not p or not _EQ.fullmatch(p):
                values = []
                break
            values.append(Fraction(eval(p.replace("/", "/"), {"__builtins__": {}}, {})).limit_denominator(10**6))
        if len(values) >= 2:
            assert len(set(values)) == 1, f"wrong step: {line!r}"
            checked += 1
    return checked


@pytest.mark.parametrize("domain", ["math", "medical"])
def test_worked_steps_are_exact_and_end_in_the_answer(domain):
    rows = generate(domain, "train", N, seed=1) + generate(domain, "test", 40, seed=1)
    chains = 0
    for r in rows:
        reply = _reply(r)
        assert extract_answer(reply) == r["answer"]
        assert check_answer(domain, reply, r["answer"])
        chains += _check_chains(reply)
    assert chains >= len(rows) // 2  # most replies carry checkable arithmetic


# numbers a step may bring in that the prompt does not state: unit facts, halves, the parts of a percentage
_CONSTANTS = {"1", "2", "3", "4", "5", "7", "10", "12", "20", "24", "25", "60", "100", "1000"}


def test_math_prompts_state_the_numbers_the_steps_use():
    for r in generate("math", "train", N, seed=2):
        prompt, reply = _prompt(r), _reply(r)
        first = next(line for line in reply.splitlines() if "=" in line)
        operands = re.findall(r"\d+", re.sub(r"^[^=]*?:\s", "", first).split("=")[0])
        assert all(o in prompt or o in _CONSTANTS for o in operands), (prompt, first)


def test_word_problems_vary_their_surface_and_hold_out_whole_templates():
    rows = generate("math", "train", N, seed=3)
    words = [r for r in rows if r["template"].split("/")[1] in word_problems.KINDS]
    assert len(words) > N // 3
    texts = [_prompt(r) for r in words]
    assert any(t.split("?")[0].count(".") == 0 and "?" in t[:-1] for t in texts)  # question first
    assert any(t.startswith(("Question: ", "Solve this: ", "Word problem: ")) for t in texts)
    assert any(_first_role(r) == "system" for r in rows)
    assert not any(_first_role(r) == "system" for r in generate("math", "test", 40, seed=3))
    held = {t.name for t in templates("math") if t.held_out}
    assert not held & {r["template"] for r in rows}
    assert {r["template"] for r in generate("math", "test", 40, seed=3)} <= held


def test_reasoning_answers_follow_from_the_prompt():
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    for r in generate("reasoning", "train", N, seed=0) + generate("reasoning", "test", 40, seed=0):
        prompt = _prompt(r)
        m = re.search(r"(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)\D+(\d+) days", prompt) or \
            re.search(r"(\d+) days after a (\w+day)", prompt)
        if m and r["template"].startswith("reasoning/weekday"):
            today, n = (m.group(1), int(m.group(2))) if m.group(1) in days else (m.group(2), int(m.group(1)))
            assert r["answer"] == days[(days.index(today) + n) % 7]
        if r["template"].startswith("reasoning/sequence"):
            nums = [int(x) for x in re.findall(r"\d+", prompt)]
            step_or_ratio = (nums[1] - nums[0], nums[1] // nums[0])
            want = nums[-1] + step_or_ratio[0] if nums[2] - nums[1] == step_or_ratio[0] else nums[-1] * step_or_ratio[1]
            assert r["answer"] == str(want)


def test_chat_rows_with_an_answer_reply_exactly_that():
    rows = generate("chat", "train", N, seed=0)
    assert any("answer" not in r for r in rows) and sum("answer" in r for r in rows) > N // 2
    for r in rows:
        if "answer" in r:
            assert r["answer"] == r["messages"][-1]["content"]
            assert check_answer("chat", r["answer"] + "\n", r["answer"])
            assert not check_answer("chat", "Sure! " + r["answer"], r["answer"])


def test_code_rows_pass_their_own_tests_and_a_wrong_body_fails():
    rows = generate("code", "test", 12, seed=0)
    for r in rows:
        reply = r["messages"][-1]["content"]
        assert r["tests"] and all(t.startswith(f"assert {r['entry']}(") for t in r["tests"])
        assert run_tests(reply, r["tests"]), reply
    wrong = f"```python\ndef {rows[0]['entry']}(x):\n    return None\n```"
    assert not run_tests(wrong, rows[0]["tests"])


def test_code_sandbox_blocks_network_processes_writes_loops_and_false_passes(tmp_path):
    import socket

    ok = ["assert f() == 1"]
    assert run_tests("def f():\n    return 1", ok)  # no fence: the whole completion is the code
    assert extract_code("text\n```python\nx = 1\n```\nmore") == "x = 1\n"
    with socket.socket() as server:  # a real listener: only the sandbox can make the connection fail
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        for mod in ("socket", "_socket"):
            net = (f"def f():\n    import {mod}\n    s = {mod}.socket()\n    s.connect(('127.0.0.1', {port}))\n"
                   "    return 1")
            assert not run_tests(net, ok), mod
    assert not run_tests("def f():\n    import subprocess\n    subprocess.run(['true'])\n    return 1", ok)
    assert not run_tests("def f():\n    import os\n    os.system('true')\n    return 1", ok)
    outside = tmp_path / "written.txt"
    assert not run_tests(f"def f():\n    open({str(outside)!r}, 'w').write('x')\n    return 1", ok)
    assert not outside.exists()
    assert run_tests("def f():\n    open('inside.txt', 'w').write('x')\n    return 1", ok)  # its own temp dir
    assert not run_tests("import sys\nsys.exit(0)\ndef f():\n    return 2", ok)  # exits 0 before the asserts
    assert not run_tests("import os\nos._exit(0)\ndef f():\n    return 2", ok)
    assert not run_tests("def f():\n    while True:\n        pass", ok, timeout=3.0)
    assert not run_tests("def f():\n    x = bytearray(2**31)\n    return 1", ok)
    assert not run_tests("while True:\n    print('spam' * 1000)\ndef f():\n    return 1", ok, timeout=5.0)
    assert not run_tests("def f(:\n", ok)  # syntax error
    assert not run_tests("def f():\n    return 1", [])  # no tests: nothing is proven


@pytest.mark.parametrize("domain,text,answer,ok", [
    ("math", "17 + 25 = 42\nAnswer: 42", "42", True),
    ("math", "Answer: 1,000", "1000", True),
    ("math", "The total is 40 + 2 = 42.", "42", True),  # no Answer line: the last number counts
    ("math", "Answer: 41\nAnswer: 42", "42", False),  # the first Answer line counts
    ("medical", "Answer: 100 mg", "100 mg", True),
    ("medical", "So the dose is 100 milligrams.", "100 mg", True),
    ("medical", "Answer: 12.5 mL", "12.5 mL", True),
    ("medical", "Answer: 12 mL", "12.5 mL", False),
    ("medical", "Answer: beta blocker", "beta blocker", True),
    ("medical", "It is a beta blocker.", "beta blocker", True),
    ("medical", "It is a blocker.", "beta blocker", False),
    ("reasoning", "Answer: Theo", "Theo", True),
    ("reasoning", "Answer: Theodore", "Theo", False),
    ("reasoning", "the answer is no", "No", True),
    ("chat", "- apple\n- pear", "- apple\n- pear", True),
    ("chat", "Here you go:\n- apple\n- pear", "- apple\n- pear", False),
])  # fmt: skip
def test_check_answer(domain, text, answer, ok):
    assert check_answer(domain, text, answer) is ok


def test_check_answer_refuses_code():
    with pytest.raises(ConfigError, match="no exact answers"):
        check_answer("code", "x", "y")

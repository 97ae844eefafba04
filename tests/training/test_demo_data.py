"""Demo data generators: determinism, disjoint splits, §5 formats, and answers re-derived independently.

The math and medical answers are recomputed here from the numbers in each prompt with exact `Fraction` arithmetic
(the generators use int/`Decimal` code paths), and every worked step is re-evaluated.
"""

from __future__ import annotations

import datetime
import json
import operator
import re
from fractions import Fraction

import pytest

from brainstacks.errors import ConfigError
from training.demo import DOMAINS, check_answer, extract_answer, generate, split_of, write_demo_data
from training.demo.data import prompt_key

N = 120  # rows per generated sample in these tests


def _round1(x: Fraction) -> Fraction:
    """Round half up to one decimal, exactly."""
    return Fraction(int(x * 10 + Fraction(1, 2)), 10) if x >= 0 else -_round1(-x)


def _answer_value(answer: str) -> tuple[Fraction, str]:
    num, _, unit = answer.partition(" ")
    return Fraction(num), unit


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_same_rows_other_seed_other_rows(domain):
    a = generate(domain, "train", 40, seed=3)
    assert a == generate(domain, "train", 40, seed=3)
    assert a != generate(domain, "train", 40, seed=4)
    assert len({prompt_key(r) for r in a}) == 40  # no duplicate prompts inside a split


@pytest.mark.parametrize("domain", DOMAINS)
def test_splits_share_no_prompt_for_any_seeds(domain):
    train = {prompt_key(r) for r in generate(domain, "train", 300, seed=0)}
    valid = {prompt_key(r) for r in generate(domain, "valid", 60, seed=1)}
    test = {prompt_key(r) for r in generate(domain, "test", 60, seed=2)}
    assert not (train & valid) and not (train & test) and not (valid & test)
    for split, keys in (("train", train), ("valid", valid), ("test", test)):
        assert {split_of(k) for k in keys} == {split}


def test_write_demo_data_layout_and_formats(tmp_path):
    from training.data import read_jsonl  # the real loaders must accept every file

    paths = write_demo_data(tmp_path, seed=0, sizes={"train": 30, "valid": 8, "test": 8})
    assert set(paths) == set(DOMAINS)
    for domain, splits in paths.items():
        assert set(splits) == {"train", "valid", "test"}
        fmt = "messages" if domain == "chat" else "prompt_completion"
        for split, path in splits.items():
            assert path == tmp_path / domain / f"{split}.jsonl"
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            assert len(rows) == {"train": 30, "valid": 8, "test": 8}[split]
            assert len(read_jsonl(path, fmt)) == len(rows)
            if fmt == "messages":
                assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
            else:
                assert all(isinstance(r["prompt"], str) and r["completion"] for r in rows)
            has_answer = split == "test" and domain in ("math", "medical", "reasoning")
            assert all(("answer" in r) == has_answer for r in rows)
            if has_answer:
                assert all(isinstance(r["answer"], str) and r["answer"] for r in rows)


def test_unknown_domain_split_and_sizes_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="poetry"):
        generate("poetry", "train", 1, 0)
    with pytest.raises(ConfigError, match="dev"):
        generate("math", "dev", 1, 0)
    with pytest.raises(ConfigError, match="dev"):
        write_demo_data(tmp_path, sizes={"dev": 3})


# --- math: recompute each answer from the prompt's numbers ---------------------------------------------------

_MATH = [
    (r"buys (\d+) .+? at (\d+) dollars each and (\d+) .+? at (\d+) dollars each\. \w+ pays with a (\d+) dollar bill",
     lambda n1, p1, n2, p2, bill: bill - (n1 * p1 + n2 * p2)),
    (r"at (\d+) km/h for (\d+) hours, then at (\d+) km/h for (\d+) hours", lambda v1, t1, v2, t2: v1 * t1 + v2 * t2),
    (r"bakes (\d+) trays of (\d+) cookies\. \w+ eats (\d+) of them and shares the rest equally among (\d+) friends",
     lambda a, b, e, k: Fraction(a * b - e, k)),
    (r"is (\d+) times as old as \w+\. \w+ is (\d+) years old\. How old will \w+ be in (\d+) years", lambda m, x, y: m * x + y),
    (r"costs (\d+) dollars\. It is on sale for (\d+)% off", lambda p, d: p - Fraction(p * d, 100)),
    (r"has (\d+) dollars and saves (\d+) dollars each week for (\d+) weeks, then spends (\d+) dollars",
     lambda s, w, k, c: s + w * k - c),
    (r"(\d+) m long and (\d+) m wide\. Fencing costs (\d+) dollars per metre", lambda ln, w, c: 2 * (ln + w) * c),
    (r"reads (\d+) pages a day for (\d+) days and then (\d+) pages a day for (\d+) days\. The book has (\d+) pages",
     lambda p, d, q, e, n: n - (p * d + q * e)),
]  # fmt: skip


def _recompute(table, prompt: str) -> Fraction:
    for pattern, formula in table:
        m = re.search(pattern, prompt)
        if m:
            return Fraction(formula(*(Fraction(g) for g in m.groups())))
    raise AssertionError(f"no template recognises {prompt!r}")


def _eval_left_to_right(expr: str) -> Fraction:
    tokens = expr.split()
    value = Fraction(tokens[0])
    for op, num in zip(tokens[1::2], tokens[2::2], strict=True):
        x = Fraction(num)
        value = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}[op](value, x)
    return value


def _check_steps(completion: str, tolerance: Fraction) -> int:
    """Re-evaluate every 'a op b ... = c' line (units stripped); returns how many were checked."""
    checked = 0
    for line in completion.splitlines()[:-1]:
        bare = re.sub(r"\b[A-Za-z][\w/]*", " ", line).replace(".\n", " ")
        lhs, eq, rhs = bare.partition("=")
        if not eq or not re.search(r"\s[-+*/]\s", lhs):
            continue
        assert abs(_eval_left_to_right(lhs) - Fraction(rhs.split()[0])) <= tolerance, line
        checked += 1
    return checked


def test_math_answers_recomputed_from_the_prompt():
    rows = generate("math", "test", N, seed=0) + generate("math", "test", N, seed=1)
    for r in rows:
        expected = _recompute(_MATH, r["prompt"])
        assert expected.denominator == 1 and expected >= 0, r
        assert Fraction(r["answer"]) == expected, r
        assert r["completion"].splitlines()[-1] == f"Answer: {r['answer']}"
        assert _check_steps(r["completion"], Fraction(0)) >= 2, r
        assert check_answer("math", r["completion"], r["answer"])
        assert not check_answer("math", r["completion"], str(expected + 1))


# --- medical: recompute calculations from the prompt, look facts up in a table kept here -----------------------

_MEDICAL = [
    (r"weighs (\d+) kg\. The order is \w+ (\d+) mg/kg\. How many mg", lambda w, d: (w * d, "mg")),
    (r"weighs (\d+) kg\. \w+ is ordered at (\d+) mg/kg/day divided every (\d+) hours", lambda w, d, h: (w * d * h / 24, "mg")),
    (r"Give ([\d.]+) mg of .+?\. The stock is (\d+) mg per (\d+) mL", lambda dose, c, v: (_round1(dose * v / c), "mL")),
    (r"Infuse (\d+) mL of .+? over (\d+) hours", lambda vol, h: (vol / h, "mL/h")),
    (r"at (\d+) mcg/kg/min for a (\d+) kg patient\. The bag contains (\d+) mcg/mL",
     lambda d, w, c: (_round1(d * w * 60 / c), "mL/h")),
    (r"weighs (\d+) kg and is (\d+) cm tall", lambda w, h: (_round1(w * 10000 / (h * h)), "kg/m2")),
    (r"Convert ([\d.]+) lb to kg", lambda lb: (_round1(lb * 5 / 11), "kg")),
    (r"Convert ([\d.]+) kg to lb", lambda kg: (_round1(kg * 11 / 5), "lb")),
    (r"is ([\d.]+) F\. What is it in C", lambda f: (_round1((f - 32) * 5 / 9), "C")),
    (r"is ([\d.]+) C\. What is it in F", lambda c: (_round1(c * 9 / 5 + 32), "F")),
    (r"Convert (\d+) mcg to mg", lambda x: (x / 1000, "mg")),
    (r"Convert ([\d.]+) mg to mcg", lambda x: (x * 1000, "mcg")),
]  # fmt: skip

_KNOWN_FACTS = {
    "metoprolol": "beta blocker", "lisinopril": "ACE inhibitor", "atorvastatin": "statin", "sertraline": "SSRI",
    "furosemide": "loop diuretic", "omeprazole": "proton pump inhibitor", "opioid overdose": "naloxone",
    "heparin overdose": "protamine sulfate", "serum sodium": "135 to 145 mmol/L", "arterial blood pH": "7.35 to 7.45",
}  # fmt: skip


def test_medical_answers_recomputed_from_the_prompt():
    rows = generate("medical", "test", N, seed=0) + generate("medical", "test", N, seed=1)
    calculations = facts = 0
    for r in rows:
        assert r["completion"].splitlines()[-1] == f"Answer: {r['answer']}"
        assert check_answer("medical", r["completion"], r["answer"])
        match = next(((p, f) for p, f in _MEDICAL if re.search(p, r["prompt"])), None)
        if match is None:  # a factual question
            facts += 1
            for subject, truth in _KNOWN_FACTS.items():
                if re.search(rf"\b{re.escape(subject)}\b", r["prompt"]):
                    assert r["answer"] == truth, r
            continue
        calculations += 1
        pattern, formula = match
        value, unit = formula(*(Fraction(g) for g in re.search(pattern, r["prompt"]).groups()))
        got, got_unit = _answer_value(r["answer"])
        assert (got, got_unit) == (value, unit), r
        assert _check_steps(r["completion"], Fraction(1, 20)) >= 1, r
        assert not check_answer("medical", r["completion"], f"{value + 1} {unit}")
    assert calculations > 100 and facts > 20


# --- reasoning and chat: spot-check the logic another way ------------------------------------------------------


def test_reasoning_orderings_and_weekdays_are_right():
    rows = generate("reasoning", "test", 2 * N, seed=0)
    checked = 0
    for r in rows:
        facts = re.findall(r"(\w+) is (\w+) than (\w+)\.", r["prompt"])
        ask = re.search(r"Who is the (\w+)\?", r["prompt"])
        if facts and ask:
            # Count, for each person, how many others are provably above them; the extreme has 0 above/below.
            pairs = set()
            for x, rel, y in facts:
                more = rel in ("taller", "older", "faster", "heavier", "stronger")
                pairs.add((x, y) if more else (y, x))  # (higher, lower)
            people = {p for pair in pairs for p in pair}
            is_top = ask.group(1) in ("tallest", "oldest", "fastest", "heaviest", "strongest")
            extreme = [p for p in people if all(p != (lo if is_top else hi) for hi, lo in pairs)]
            assert [r["answer"]] == extreme, r
            checked += 1
        day = re.search(r"If today is (\w+), what day of the week will it be in (\d+) days", r["prompt"])
        if day:
            monday = datetime.date(2024, 1, 1)  # a Monday
            start = next(monday + datetime.timedelta(i) for i in range(7)
                         if (monday + datetime.timedelta(i)).strftime("%A") == day.group(1))  # fmt: skip
            assert r["answer"] == (start + datetime.timedelta(int(day.group(2)))).strftime("%A"), r
            checked += 1
        assert check_answer("reasoning", r["completion"], r["answer"])
    assert checked > 40


def test_chat_replies_follow_the_instruction():
    rows = generate("chat", "train", 3 * N, seed=0)
    kinds = set()
    for r in rows:
        user, reply = r["messages"][0]["content"], r["messages"][1]["content"]
        if user.startswith("Rewrite in uppercase: "):
            assert reply == user.removeprefix("Rewrite in uppercase: ").upper()
            kinds.add("upper")
        elif user.startswith("Reply in JSON with keys "):
            keys = user.removeprefix("Reply in JSON with keys ").split(":")[0].split(", ")
            assert list(json.loads(reply)) == keys
            kinds.add("json")
        elif m := re.match(r"List (\w+) \w+ as bullets\.", user):
            lines = reply.splitlines()
            assert len(lines) == {"two": 2, "three": 3, "four": 4, "five": 5}[m.group(1)]
            assert all(line.startswith("- ") for line in lines)
            kinds.add("bullets")
        elif user.startswith("How many words are in this sentence? "):
            n = len(user.removeprefix("How many words are in this sentence? ").split())
            assert reply == f"The sentence has {n} words."
            kinds.add("count")
    assert kinds == {"upper", "json", "bullets", "count"}


def test_code_examples_are_valid_documented_python():
    import ast

    rows = generate("code", "train", 2 * N, seed=0)
    harvested = 0
    for r in rows:
        tree = ast.parse(r["prompt"] + r["completion"])
        (fn,) = tree.body
        assert isinstance(fn, ast.FunctionDef) and ast.get_docstring(fn), r
        assert r["prompt"].startswith("def ") and r["completion"].strip()
        harvested += not re.match(r'def \w+\(\w+\):\n    """[^\n]*"""\n$', r["prompt"])
    assert 0 < harvested < len(rows)  # both harvested stdlib functions and templated ones


# --- the checker ---------------------------------------------------------------------------------------------


def test_extract_and_check_answer():
    assert extract_answer("2 + 2 = 4\nAnswer: 4\nAnswer: 5") == "4"
    assert extract_answer("no answer here") is None
    assert extract_answer("Answer:   \n") is None
    assert check_answer("math", "Answer: 1,200", "1200")
    assert check_answer("medical", "x\nAnswer: 600.0 mg", "600 mg")
    assert not check_answer("medical", "Answer: 600 mL", "600 mg")
    assert not check_answer("medical", "Answer: 600", "600 mg")
    assert not check_answer("math", "Answer: 41", "14")
    assert check_answer("medical", "Answer: Beta blocker.", "beta blocker")
    assert check_answer("reasoning", "Answer: cannot  tell", "Cannot tell")
    assert not check_answer("reasoning", "The answer is Yes", "Yes")
    with pytest.raises(ConfigError):
        check_answer("poetry", "Answer: 1", "1")

"""GRPO rewards: exact_answer (the last "Answer:" line, or else the last number) and python_tests (sandboxed)."""

from __future__ import annotations

import time

import pytest

from training.rewards import exact_answer, python_tests, rewards


@pytest.mark.parametrize("completion, answer, expected", [
    ("17 + 25 = 42\nAnswer: 42", "42", 1.0),
    ("Answer: 41\nwait, 17 + 25 = 42\nAnswer: 42", "42", 1.0),  # the last Answer line counts
    ("Answer: 42\nno: Answer: 41", "42", 1.0),  # only a line that starts with Answer: is one
    ("Answer: 42\nAnswer: 41", "42", 0.0),
    ("so it is 12, and then 42", "42", 1.0),  # no Answer line: the last number
    ("so it is 42, and then 12", "42", 0.0),
    ("Answer: 1,000 mg", "1000", 1.0),  # by value; the unit is not compared
    ("Answer: 600.0", "600", 1.0),
    ("Answer: 12.5 mL", "12.5 mL", 1.0),
    ("**Answer:** 7", "7", 1.0),
    ("Answer: beta blocker.", "Beta  blocker", 1.0),  # text: case- and space-normalised
    ("it is a beta blocker", "beta blocker", 0.0),  # text needs the Answer line
    ("no number at all", "42", 0.0),
    ("", "42", 0.0),
])
def test_exact_answer(completion, answer, expected):
    assert exact_answer(completion, {"prompt": "p", "answer": answer}) == expected


def test_python_tests_pass_fail_and_the_sandbox():
    ok = {"prompt": "p", "tests": ["assert f(2) == 4"]}
    assert python_tests("```python\ndef f(x):\n    return x * 2\n```", ok) == 1.0
    assert python_tests("def f(x):\n    return x + 3", ok) == 0.0
    net = "def f(x):\n    import socket\n    socket.create_connection(('127.0.0.1', 9))\n    return x * 2"
    assert python_tests(net, ok) == 0.0  # no network
    assert python_tests("import subprocess\ndef f(x):\n    return x * 2", ok) == 1.0  # importing is harmless...
    assert python_tests("def f(x):\n    import subprocess\n    subprocess.run(['true'])\n    return x * 2", ok) == 0.0
    assert python_tests("def f(x):\n    b = bytearray(2**31)\n    return x * 2", ok) == 0.0  # RLIMIT_AS
    t = time.perf_counter()
    assert python_tests("def f(x):\n    while True:\n        pass", ok) == 0.0  # RLIMIT_CPU / the timeout
    assert time.perf_counter() - t < 8


def test_rewards_batch_in_order():
    recs = [{"prompt": "p", "tests": ["assert f() == 1"]}, {"prompt": "p", "tests": ["assert f() == 2"]}]
    assert rewards("python_tests", ["def f():\n    return 1"] * 2, recs) == [1.0, 0.0]
    assert rewards("exact_answer", ["Answer: 3", "Answer: 4"], [{"answer": "3"}, {"answer": "3"}]) == [1.0, 0.0]

"""Worked arithmetic lines a small model can follow: each operation on numbers past one digit is split into parts.

    add_line(156, 87)  -> "156 + 87 = 156 + 80 + 7 = 236 + 7 = 243"
    sub_line(243, 87)  -> "243 - 87 = 243 - 80 - 7 = 163 - 7 = 156"
    mul_line(37, 6)    -> "37 * 6 = 30 * 6 + 7 * 6 = 180 + 42 = 222"
    mul_line(12, 21)   -> "21 * 12 = 21 * 10 + 21 * 2 = 210 + 42 = 252"
    div_line(84, 7)    -> "84 / 7 = 12 (12 * 7 = 84)"

A 135M model gets a two-digit sum wrong more often than two one-digit-sized steps; the lines teach the split, and
every number in them is exact (tests re-evaluate each "=" chain). `worked_example` renders one example of a
domain whose problems return (fields, steps, answer): math, medical, reasoning.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence


def add_line(a: int, b: int) -> str:
    c = a + b
    tens, units = b // 10 * 10, b % 10
    if a < 10 or b < 10 or units == 0:
        return f"{a} + {b} = {c}"
    return f"{a} + {b} = {a} + {tens} + {units} = {a + tens} + {units} = {c}"


def sub_line(a: int, b: int) -> str:
    c = a - b
    tens, units = b // 10 * 10, b % 10
    if b < 10 or units == 0:
        return f"{a} - {b} = {c}"
    return f"{a} - {b} = {a} - {tens} - {units} = {a - tens} - {units} = {c}"


def mul_line(a: int, b: int) -> str:
    """a * b with b the small factor (swap so the larger number is split)."""
    if b > a:
        a, b = b, a
    c = a * b
    if b >= 10 and b % 10:  # two multi-digit factors: split the smaller one, a * 23 = a * 20 + a * 3
        tens, units = b // 10 * 10, b % 10
        return f"{a} * {b} = {a} * {tens} + {a} * {units} = {a * tens} + {a * units} = {c}"
    tens, units = a // 10 * 10, a % 10
    if a < 10 or units == 0 or b == 1 or b >= 10:
        return f"{a} * {b} = {c}"
    return f"{a} * {b} = {tens} * {b} + {units} * {b} = {tens * b} + {units * b} = {c}"


def div_line(a: int, b: int) -> str:
    """a / b for an exact division."""
    q = a // b
    return f"{a} / {b} = {q} (check: {q} * {b} = {a})"


def worked_example(kinds: Mapping[str, tuple[Callable, Sequence[str]]], kind: str, phrasing: int,
                   rng: random.Random, capitalize: bool = False) -> dict:
    """One example of `kind` in phrasing `phrasing` from a domain's KINDS ({kind: (problem, phrasings)}, a problem
    returning (fields, steps, answer)): {"prompt", "completion" (the steps, then "Answer: <answer>"), "answer"}."""
    problem, phrasings = kinds[kind]
    fields, steps, answer = problem(rng)
    prompt = phrasings[phrasing].format(**fields)
    if capitalize:
        prompt = prompt[0].upper() + prompt[1:]
    return {"prompt": prompt, "completion": "\n".join([*steps, f"Answer: {answer}"]), "answer": answer}

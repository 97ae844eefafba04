"""Exact-answer checking for the demo domains that end their completions with an "Answer: ..." line.

`extract_answer` takes the first "Answer:" line of a completion (what a model generates after it is usually
noise). `check_answer` compares it with the reference: numbers compare by value (so "600", "600.0" and "1,000"
vs "1000" are handled), then the unit text must match; anything else compares as case- and space-normalised text.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from brainstacks.errors import ConfigError

_ANSWER_LINE = re.compile(r"^[ \t]*Answer:[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_LEADING_NUMBER = re.compile(r"^([-+]?(?:\d[\d,]*)(?:\.\d+)?|[-+]?\.\d+)(.*)$", re.DOTALL)


def extract_answer(text: str) -> str | None:
    """The text after the first "Answer:" at the start of a line, stripped; None if there is none or it is empty."""
    m = _ANSWER_LINE.search(text)
    if m is None or not m.group(1):
        return None
    return m.group(1)


def _normalise_text(s: str) -> str:
    s = " ".join(s.casefold().split())
    return s.strip(" .\"'`")


def _split_number(s: str) -> tuple[Decimal, str] | None:
    m = _LEADING_NUMBER.match(s.strip())
    if m is None:
        return None
    try:
        value = Decimal(m.group(1).replace(",", ""))
    except InvalidOperation:
        return None
    return value, _normalise_text(m.group(2)).replace(" ", "")


def check_answer(domain: str, completion: str, answer: str) -> bool:
    """Whether `completion`'s "Answer:" line matches the reference `answer` of a test row of `domain`."""
    from training.demo.data import DOMAINS  # local: data imports the generators, which need nothing from here

    if domain not in DOMAINS:
        raise ConfigError(f"unknown demo domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    got = extract_answer(completion)
    if got is None:
        return False
    expected_num = _split_number(answer)
    if expected_num is not None:
        got_num = _split_number(got)
        if got_num is None:
            return False
        (ev, eunit), (gv, gunit) = expected_num, got_num
        return ev == gv and eunit == gunit
    return _normalise_text(got) == _normalise_text(answer)

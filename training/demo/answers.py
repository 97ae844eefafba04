"""Answer checking for the demo domains: exact answers for math, medical and reasoning, exact replies for chat.

`extract_answer` takes the first "Answer:" line of a completion (what a model generates after it is usually noise).
`check_answer` compares a completion with a test row's reference, the same way for every composition (the base
alone too, which was never taught the "Answer:" line):
  - a numeric reference ("42", "100 mg", "12.5 mL"): the number on the "Answer:" line, or else the last number in
    the completion, must equal it by value ("600", "600.0" and "1,000" vs "1000" are handled; the unit is not
    compared, so a right number in another format still counts);
  - a text reference ("Theo", "beta blocker", "Yes"): the "Answer:" line must equal it (case- and
    space-normalised), or else, without an "Answer:" line, the completion must contain it as whole words;
  - chat: the whole reply must equal the expected reply (whitespace-normalised; a trailing full stop is ignored).
"""

from __future__ import annotations

import re

from brainstacks.errors import ConfigError
from training.rewards import ANSWER_LINE, leading_number, normalise_text, number_matches


def extract_answer(text: str) -> str | None:
    """The text after the first "Answer:" at the start of a line, stripped; None if there is none or it is empty."""
    m = ANSWER_LINE.search(text)
    if m is None or not m.group(1):
        return None
    return m.group(1)


def check_answer(domain: str, completion: str, answer: str) -> bool:
    """Whether `completion` answers a test row of `domain` whose reference is `answer` (see the module doc)."""
    from training.demo.sampling import ANSWER_DOMAINS  # local: data imports the generators

    if domain not in ANSWER_DOMAINS:
        raise ConfigError(f"domain {domain!r} has no exact answers; expected one of {', '.join(ANSWER_DOMAINS)}")
    if domain == "chat":
        return " ".join(completion.split()).rstrip(".") == " ".join(answer.split()).rstrip(".")
    got = extract_answer(completion)
    expected = leading_number(answer)
    if expected is not None:
        return number_matches(got, completion, expected)
    if got is not None:
        return normalise_text(got) == normalise_text(answer)
    pattern = r"(?<!\w)" + re.escape(normalise_text(answer)) + r"(?!\w)"
    return re.search(pattern, " ".join(completion.casefold().split())) is not None

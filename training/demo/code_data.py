"""Code domain: write a small Python function from its name and a one-line specification.

Every kind draws a function (name, argument, docstring and a reference body whose behaviour the docstring fully
determines). The reply is the whole function in a ```python block. Rows carry "entry" (the function name) and
"tests": assertions computed by running the reference body on fixed inputs, so a generated function is scored by
running it (`training.rewards`, in a subprocess with limits). Each kind has several phrasings of the
request; the last is held out of training (`training.demo.sampling`).

`stdlib_files` lists the standard library's source files for the from-scratch pretraining corpus
(`training.demo.corpus`); the demo domain itself is templated.
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

# Standard-library folders that are tests, tools or vendored code rather than the library itself.
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo",
                       "__pycache__", "ensurepip", "tkinter", "pydoc_data"})  # fmt: skip


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The standard library's .py files in sorted order, without tests and vendored packages."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    return [p for p in sorted(base.rglob("*.py")) if not (set(p.relative_to(base).parts[:-1]) & SKIP_DIRS)]


_NUM_ARGS = ("x", "n", "value", "number", "num")
_LIST_ARGS = ("values", "items", "numbers", "xs", "data")
_TEXT_ARGS = ("text", "s", "word", "line", "message")


def _t_scale(rng: random.Random) -> tuple[str, str, str]:
    k, a = rng.randint(2, 12), rng.choice(_NUM_ARGS)
    name = rng.choice((f"times_{k}", f"multiply_by_{k}", f"scale_by_{k}"))
    return f"{name}({a})", f"Return {a} multiplied by {k}.", f"return {a} * {k}"


def _t_offset(rng: random.Random) -> tuple[str, str, str]:
    k, a = rng.randint(1, 100), rng.choice(_NUM_ARGS)
    if rng.random() < 0.5:
        return f"{rng.choice(('add', 'plus', 'increase_by'))}_{k}({a})", f"Return {a} plus {k}.", f"return {a} + {k}"
    return f"{rng.choice(('subtract', 'minus', 'decrease_by'))}_{k}({a})", f"Return {a} minus {k}.", f"return {a} - {k}"


def _t_divisible(rng: random.Random) -> tuple[str, str, str]:
    k, a = rng.randint(2, 15), rng.choice(_NUM_ARGS)
    name = rng.choice((f"is_divisible_by_{k}", f"divides_by_{k}", f"is_multiple_of_{k}"))
    return f"{name}({a})", f"Return True if {a} is divisible by {k}.", f"return {a} % {k} == 0"


def _t_filter(rng: random.Random) -> tuple[str, str, str]:
    k, xs = rng.randint(-5, 50), rng.choice(_LIST_ARGS)
    op, word = rng.choice(((">", "greater than"), ("<", "less than"), (">=", "at least"), ("<=", "at most")))
    name = rng.choice(("keep", "select", "filter")) + "_" + word.replace(" ", "_") + f"_{k}".replace("-", "minus_")
    return f"{name}({xs})", f"Return the {xs} that are {word} {k}.", f"return [v for v in {xs} if v {op} {k}]"


def _t_count_char(rng: random.Random) -> tuple[str, str, str]:
    c, t = rng.choice("abcdefghijklmnopqrstuvwxyz,.;:!?"), rng.choice(_TEXT_ARGS)
    name = rng.choice(("count_char", "char_count", "occurrences"))
    return f"{name}({t})", f"Return how many times {c!r} appears in {t}.", f"return {t}.count({c!r})"


def _t_clamp(rng: random.Random) -> tuple[str, str, str]:
    lo, a = rng.randint(-20, 20), rng.choice(_NUM_ARGS)
    hi = lo + rng.randint(1, 100)
    name = rng.choice(("clamp", "limit", "bound", "clip"))
    return f"{name}({a})", f"Return {a} limited to the range {lo} to {hi}.", f"return max({lo}, min({hi}, {a}))"


def _t_sum_powers(rng: random.Random) -> tuple[str, str, str]:
    p, a = rng.randint(1, 4), rng.choice(("n", "limit", "count", "stop"))
    what = {1: "integers", 2: "squares", 3: "cubes", 4: "fourth powers"}[p]
    body = f"total = 0\n    for i in range(1, {a} + 1):\n        total += i ** {p}\n    return total"
    return f"sum_of_{what.replace(' ', '_')}({a})", f"Return the sum of the {what} from 1 to {a}.", body


def _t_join(rng: random.Random) -> tuple[str, str, str]:
    sep, xs = rng.choice((", ", "-", " | ", "; ", "/", " + ", "_")), rng.choice(_LIST_ARGS)
    name = rng.choice(("join_with", "glue", "combine", "concat"))
    return f"{name}({xs})", f"Join the strings in {xs} with {sep!r} between them.", f"return {sep!r}.join({xs})"


def _t_string(rng: random.Random) -> tuple[str, str, str]:
    t = rng.choice(_TEXT_ARGS)
    return rng.choice((
        (f"reverse_words({t})", f"Return {t} with its words in reverse order.",
         f"return ' '.join(reversed({t}.split()))"),
        (f"is_palindrome({t})", f"Return True if {t} reads the same backwards.", f"return {t} == {t}[::-1]"),
        (f"count_vowels({t})", f"Return the number of vowels in {t}.",
         f"return sum(1 for ch in {t}.lower() if ch in 'aeiou')"),
        (f"shout({t})", f"Return {t} in uppercase with an exclamation mark.", f"return {t}.upper() + '!'"),
        (f"first_word({t})", f"Return the first word of {t}, or '' if there is none.",
         f"words = {t}.split()\n    return words[0] if words else ''"),
        (f"initials({t})", f"Return the first letter of each word in {t}.",
         f"return ''.join(w[0] for w in {t}.split())"),
    ))  # fmt: skip


def _t_list(rng: random.Random) -> tuple[str, str, str]:
    xs = rng.choice(_LIST_ARGS)
    k = rng.randint(2, 9)
    return rng.choice((
        (f"largest({xs})", f"Return the largest of {xs} without using max().",
         f"best = {xs}[0]\n    for v in {xs}[1:]:\n        if v > best:\n            best = v\n    return best"),
        (f"average({xs})", f"Return the mean of {xs}, or 0 if it is empty.",
         f"return sum({xs}) / len({xs}) if {xs} else 0"),
        (f"evens({xs})", f"Return the even numbers in {xs}.", f"return [v for v in {xs} if v % 2 == 0]"),
        (f"take_{k}({xs})", f"Return the first {k} elements of {xs}.", f"return {xs}[:{k}]"),
        (f"drop_{k}({xs})", f"Return {xs} without its first {k} elements.", f"return {xs}[{k}:]"),
        (f"unique({xs})", f"Return the distinct {xs} in order of first appearance.",
         f"seen = []\n    for v in {xs}:\n        if v not in seen:\n            seen.append(v)\n    return seen"),
        (f"squares({xs})", f"Return the square of each of {xs}.", f"return [v * v for v in {xs}]"),
    ))  # fmt: skip


TEMPLATES = (_t_scale, _t_offset, _t_divisible, _t_filter, _t_count_char, _t_clamp, _t_sum_powers, _t_join,
             _t_string, _t_list)  # fmt: skip

# inputs the reference is run on to make each row's tests, by argument kind
_INPUTS: dict[str, tuple] = {
    "num": (0, 1, 7, 12, -3, 45),
    "count": (0, 1, 3, 5),
    "list": ([3, 8, -2, 15, 8], [5], [10, 20, 30, 40, 50, 60, 70, 80, 90, 100], [-4, 0, 4, 7]),
    "strings": (["a", "b"], ["red", "green", "blue"], ["x"]),
    "text": ("hello world", "Level", "a quick brown fox", "noon", "Ab, cd!"),
}


def _arg_kind(signature: str, body: str) -> str:
    arg = signature[signature.index("(") + 1 : -1]
    if arg in _NUM_ARGS:
        return "num"
    if arg in ("n", "limit", "count", "stop") and "range" in body:
        return "count"
    if arg in _LIST_ARGS:
        return "strings" if ".join(" in body else "list"
    return "text"


def make_tests(signature: str, body: str) -> list[str]:
    """Assertions `name(input) == expected` from running the reference body on the argument kind's inputs."""
    name = signature[: signature.index("(")]
    env: dict = {}
    exec(f"def {signature}:\n    {body}\n", env)  # noqa: S102 - our own template code
    tests = []
    for value in _INPUTS[_arg_kind(signature, body)]:
        try:
            expected = env[name](value)
        except Exception:  # e.g. largest([]): not a case the docstring defines
            continue
        tests.append(f"assert {name}({value!r}) == {expected!r}")
    return tests


def _spec(rng: random.Random) -> dict:
    signature, doc, body = rng.choice(TEMPLATES)(rng)
    name, arg = signature[: signature.index("(")], signature[signature.index("(") + 1 : -1]
    return {"signature": signature, "name": name, "arg": arg, "doc": doc, "doc_lc": doc[0].lower() + doc[1:],
            "body": body}


KINDS: dict[str, tuple] = {
    "function": (_spec, (
        'Complete this Python function:\n```python\ndef {signature}:\n    """{doc}"""\n```',
        "Write a Python function `{signature}`. {doc}",
        "Implement {name}({arg}) in Python: {doc_lc}",
        "In Python, define {name} taking one argument, {arg}. {doc}",
        "I need a Python function called {name} that takes {arg}. It should {doc_lc} Please write it.",
    )),
}  # fmt: skip


def render(kind: str, phrasing: int, rng: random.Random) -> dict:
    """One request: {"prompt", "completion" (a ```python block), "entry", "tests"}."""
    problem, phrasings = KINDS[kind]
    f = problem(rng)
    doc_lc = f["doc_lc"]
    if phrasing == len(phrasings) - 1:  # "It should return ..." reads as an instruction
        f["doc_lc"] = doc_lc[:-1] + "." if doc_lc.endswith(".") else doc_lc + "."
    completion = f"```python\ndef {f['signature']}:\n    {f['body']}\n```"
    return {"prompt": phrasings[phrasing].format(**f), "completion": completion, "entry": f["name"],
            "tests": make_tests(f["signature"], f["body"])}

"""Code domain: write a Python function body from its signature and docstring.

Half the examples are real functions harvested from the running interpreter's standard library with `ast`:
small top-level functions with a docstring, no decorators, and a short body. Files are visited in sorted order,
so the pool is the same on every run of the same Python. The prompt is the source from `def` to the end of the
docstring; the completion is the rest of the function. The other half come from templates with varied names and
constants (arithmetic, list filters, string helpers), whose bodies are fully determined by the docstring.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from functools import lru_cache
from pathlib import Path

# Standard-library folders that are tests, tools or vendored code rather than the library itself.
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo",
                       "__pycache__", "ensurepip", "tkinter", "pydoc_data"})  # fmt: skip
MAX_BODY_LINES = 8
MAX_DOCSTRING_CHARS = 240
MAX_FUNCTION_CHARS = 400


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The standard library's .py files in sorted order, without tests and vendored packages."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    return [p for p in sorted(base.rglob("*.py")) if not (set(p.relative_to(base).parts[:-1]) & SKIP_DIRS)]


def harvest_source(source: str) -> list[tuple[str, str, int, int]]:
    """(prompt, completion, first line, last line) of each small documented top-level function in `source`."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    found = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.decorator_list or len(node.body) < 2:
            continue
        doc = ast.get_docstring(node, clean=False)
        if not doc or len(doc) > MAX_DOCSTRING_CHARS or "\t" in doc:
            continue
        doc_end = node.body[0].end_lineno
        head = lines[node.lineno - 1 : doc_end]
        body = lines[doc_end : node.end_lineno]
        body_code = [ln for ln in body if ln.strip() and not ln.strip().startswith("#")]
        if not body_code or len(body) > MAX_BODY_LINES or any("\t" in ln for ln in head + body):
            continue
        prompt, completion = "\n".join(head) + "\n", "\n".join(body)
        if len(prompt) + len(completion) <= MAX_FUNCTION_CHARS:
            found.append((prompt, completion, node.lineno, node.end_lineno))
    return found


@lru_cache(maxsize=2)
def harvest_stdlib(root: str | None = None) -> tuple[tuple[str, str], ...]:
    """(prompt, completion) pairs of small documented functions from the standard library, deterministic order."""
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for path in stdlib_files(root):
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for prompt, completion, _, _ in harvest_source(source):
            if prompt not in seen:
                seen.add(prompt)
                pairs.append((prompt, completion))
    return tuple(pairs)


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
        (f"reverse_words({t})", f"Return {t} with its words in reverse order.", f"return ' '.join(reversed({t}.split()))"),
        (f"is_palindrome({t})", f"Return True if {t} reads the same backwards.", f"return {t} == {t}[::-1]"),
        (f"count_vowels({t})", f"Return the number of vowels in {t}.", f"return sum(1 for ch in {t}.lower() if ch in 'aeiou')"),
        (f"shout({t})", f"Return {t} in uppercase with an exclamation mark.", f"return {t}.upper() + '!'"),
        (f"first_word({t})", f"Return the first word of {t}, or '' if there is none.", f"words = {t}.split()\n    return words[0] if words else ''"),
        (f"initials({t})", f"Return the first letter of each word in {t}.", f"return ''.join(w[0] for w in {t}.split())"),
    ))  # fmt: skip


def _t_list(rng: random.Random) -> tuple[str, str, str]:
    xs = rng.choice(_LIST_ARGS)
    k = rng.randint(2, 9)
    return rng.choice((
        (f"largest({xs})", f"Return the largest of {xs} without using max().", f"best = {xs}[0]\n    for v in {xs}[1:]:\n        if v > best:\n            best = v\n    return best"),
        (f"average({xs})", f"Return the mean of {xs}, or 0 if it is empty.", f"return sum({xs}) / len({xs}) if {xs} else 0"),
        (f"evens({xs})", f"Return the even numbers in {xs}.", f"return [v for v in {xs} if v % 2 == 0]"),
        (f"take_{k}({xs})", f"Return the first {k} elements of {xs}.", f"return {xs}[:{k}]"),
        (f"drop_{k}({xs})", f"Return {xs} without its first {k} elements.", f"return {xs}[{k}:]"),
        (f"unique({xs})", f"Return the distinct {xs} in order of first appearance.", f"seen = []\n    for v in {xs}:\n        if v not in seen:\n            seen.append(v)\n    return seen"),
        (f"squares({xs})", f"Return the square of each of {xs}.", f"return [v * v for v in {xs}]"),
    ))  # fmt: skip


TEMPLATES = (_t_scale, _t_offset, _t_divisible, _t_filter, _t_count_char, _t_clamp, _t_sum_powers, _t_join,
             _t_string, _t_list)  # fmt: skip


def sample(rng: random.Random) -> dict:
    """One example: {"prompt": signature + docstring, "completion": body}; half harvested, half templated."""
    pool = harvest_stdlib()
    if pool and rng.random() < 0.5:
        prompt, completion = rng.choice(pool)
        return {"prompt": prompt, "completion": completion}
    signature, doc, body = rng.choice(TEMPLATES)(rng)
    return {"prompt": f'def {signature}:\n    """{doc}"""\n', "completion": f"    {body}"}

"""Rewards for stage "grpo" (training/grpo.py), one completion against its record's reference:

    exact_answer(completion, {"prompt", "answer"})    1.0 when the last "Answer: X" line (or else the last number)
                                                      equals the answer, else 0.0
    python_tests(completion, {"prompt", "tests"})     1.0 when the completion's code passes every assertion
    rewards("exact_answer", completions, records)     a list, the python_tests ones run a few at a time

exact_answer: a numeric answer ("42", "12.5 mL") is compared by value ("1,000" == "1000", "600.0" == "600"; the unit
is not compared); a text answer must equal the "Answer:" line, case- and space-normalised. The last such line counts
(a sampled rollout may restate its answer).

python_tests runs generated code in a subprocess per program, with a timeout, resource limits and no network. The
program is the first ```python block of the completion (or the whole completion when it has none) followed by the
row's assertions and a line that prints a sentinel: it passes only if the sentinel is printed and the process
exits 0, so `sys.exit(0)` or `os._exit(0)` before the assertions cannot pass. It runs as `python -I` (no user site,
no environment hooks) in an empty temporary directory with an empty environment and its own process group. A
preamble, before the generated code, sets RLIMIT_CPU (2 s), RLIMIT_AS (512 MiB), RLIMIT_FSIZE (1 MiB: stdout goes
to a file, so a print loop ends there too) and installs an audit hook that refuses sockets, subprocesses, exec,
fork and opening files for writing outside the temporary directory. A wall-clock timeout (5 s) kills the whole
group. This is defence in depth for scoring a small model's output on our own machine, not a security boundary
for hostile code. (The demo's code evidence scores with the same `run_tests`.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from typing import Any

ANSWER_LINE = re.compile(r"^[ \t]*\**Answer:?\**:?[ \t]*(.*?)[ \t]*$", re.MULTILINE | re.IGNORECASE)
_LEADING_NUMBER = re.compile(r"^([-+]?(?:\d[\d,]*)(?:\.\d+)?|[-+]?\.\d+)(.*)$", re.DOTALL)
ANY_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
TIMEOUT_S = 5.0
CPU_S = 2
MEMORY_BYTES = 512 * 2**20
OUTPUT_BYTES = 2**20
SENTINEL = "__brainstacks_tests_passed__"

_PREAMBLE = f"""\
import os as _os, resource as _r, sys as _sys
for _name, _v in (("RLIMIT_CPU", {CPU_S}), ("RLIMIT_AS", {MEMORY_BYTES}), ("RLIMIT_FSIZE", {OUTPUT_BYTES})):
    if hasattr(_r, _name):
        try:
            _r.setrlimit(getattr(_r, _name), (_v, _v))
        except (ValueError, OSError):
            pass
_HOME = _os.getcwd()
_DENY = ("socket.", "subprocess.", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system",
         "pty.", "ctypes.")
def _guard(event, args):
    if event.startswith(_DENY):
        raise PermissionError("blocked in code evaluation: " + event)
    if event == "open" and len(args) > 1 and isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
        path = _os.path.abspath(str(args[0]))
        if not path.startswith(_HOME + _os.sep):
            raise PermissionError("blocked in code evaluation: writing " + path)
_sys.addaudithook(_guard)
del _r, _name, _v
"""
def extract_code(completion: str) -> str:
    """The first fenced code block of a completion, or the completion itself."""
    m = _BLOCK.search(completion)
    return m.group(1) if m else completion


def run_tests(completion: str, tests: list[str], timeout: float = TIMEOUT_S) -> bool:
    """Whether the completion's code passes every assertion in `tests` (False on any error or timeout)."""
    if not tests:
        return False
    program = (_PREAMBLE + extract_code(completion) + "\n\n" + "\n".join(tests) + f"\nprint({SENTINEL!r})\n")
    with tempfile.TemporaryDirectory(prefix="bs-code-") as cwd:
        out_path = os.path.join(cwd, "stdout.txt")
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-I", "-c", program], cwd=cwd, env={}, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the program and anything it left behind
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        if code != 0:
            return False
        with open(out_path, "rb") as f:
            return SENTINEL.encode() in f.read(OUTPUT_BYTES + 1)


# --- exact answers ----------------------------------------------------------------------------------------------


def number(s: str) -> Decimal | None:
    """A number written with optional thousands commas, or None."""
    try:
        return Decimal(s.replace(",", ""))
    except InvalidOperation:
        return None


def leading_number(s: str) -> Decimal | None:
    """The number a string starts with ("12.5 mL" -> 12.5, "$40" -> 40), or None."""
    m = _LEADING_NUMBER.match(s.strip().lstrip("$"))
    return number(m.group(1)) if m else None


def number_matches(got: str | None, completion: str, expected: Decimal) -> bool:
    """Whether the number on the answer line `got` (or, with no answer line, the completion's last number) equals
    `expected` by value."""
    if got is not None:
        value = leading_number(got)
    else:
        numbers = ANY_NUMBER.findall(completion)
        value = number(numbers[-1]) if numbers else None
    return value is not None and value == expected


def normalise_text(s: str) -> str:
    s = " ".join(s.casefold().split())
    return s.strip(" .\"'`*")


def exact_answer(completion: str, record: dict[str, Any]) -> float:
    """1.0 when the completion's last "Answer:" line (or else, for a numeric answer, its last number) equals
    record["answer"] (see the module doc), else 0.0."""
    answer = str(record["answer"])
    lines = [m.group(1) for m in ANSWER_LINE.finditer(completion) if m.group(1)]
    got = lines[-1] if lines else None
    expected = leading_number(answer)
    if expected is not None:
        return float(number_matches(got, completion, expected))
    return float(got is not None and normalise_text(got) == normalise_text(answer))


def python_tests(completion: str, record: dict[str, Any]) -> float:
    """1.0 when the completion's code passes every assertion of record["tests"] (run_tests), else 0.0."""
    return float(run_tests(completion, list(record["tests"])))


REWARDS: dict[str, Callable[[str, dict[str, Any]], float]] = {"exact_answer": exact_answer,
                                                               "python_tests": python_tests}
REFERENCE_KEY = {"exact_answer": "answer", "python_tests": "tests"}  # what a prompt_answer line must carry


def rewards(name: str, completions: Sequence[str], records: Sequence[dict[str, Any]], workers: int = 4
            ) -> list[float]:
    """The reward `name` of each completion against its record; python_tests runs `workers` programs at a time."""
    fn = REWARDS[name]
    if name == "python_tests" and len(completions) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, completions, records))
    return [fn(c, r) for c, r in zip(completions, records, strict=True)]

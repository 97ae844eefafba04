"""Scoring generated code by running it: a subprocess per program, with a timeout, resource limits and no network.

    passed = run_tests(completion, row["tests"])     # True when every assertion holds

The program is the first ```python block of the completion (or the whole completion when it has none) followed by
the row's assertions and a line that prints a sentinel: it passes only if the sentinel is printed and the process
exits 0, so `sys.exit(0)` or `os._exit(0)` before the assertions cannot pass. It runs as `python -I` (no user site,
no environment hooks) in an empty temporary directory with an empty environment and its own process group. A
preamble, before the generated code, sets RLIMIT_CPU (2 s), RLIMIT_AS (512 MiB), RLIMIT_FSIZE (1 MiB: stdout goes
to a file, so a print loop ends there too) and installs an audit hook that refuses sockets, subprocesses, exec,
fork and opening files for writing outside the temporary directory. A wall-clock timeout (5 s) kills the whole
group. This is defence in depth for scoring a small model's output on our own machine, not a security boundary
for hostile code.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile

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

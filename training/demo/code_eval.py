"""Scoring generated code by running it: a subprocess per program, with a timeout, resource limits and no network.

    passed = run_tests(completion, row["tests"])     # True when every assertion holds

The program is the first ```python block of the completion (or the whole completion when it has none) followed by
the row's assertions. It runs as `python -I` (no user site, no environment hooks) in an empty temporary directory
with an empty environment, under RLIMIT_CPU (2 s), RLIMIT_AS (512 MiB), RLIMIT_FSIZE (1 MiB) and RLIMIT_NPROC
where the platform has them, a wall-clock timeout (5 s), and with `socket` disabled before the code runs, so a
generated program cannot reach the network, fork a swarm, fill the disk or hang the evaluation.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile

_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
TIMEOUT_S = 5.0
CPU_S = 2
MEMORY_BYTES = 512 * 2**20

_PREAMBLE = """\
import socket as _s
def _no_network(*a, **k):
    raise OSError("network disabled in code evaluation")
_s.socket = _s.create_connection = _s.getaddrinfo = _no_network
del _s
"""


def extract_code(completion: str) -> str:
    """The first fenced code block of a completion, or the completion itself."""
    m = _BLOCK.search(completion)
    return m.group(1) if m else completion


def _limits() -> None:  # runs in the child before exec
    import resource

    for name, value in (("RLIMIT_CPU", CPU_S), ("RLIMIT_AS", MEMORY_BYTES), ("RLIMIT_FSIZE", 2**20),
                        ("RLIMIT_NPROC", 64)):  # fmt: skip
        if hasattr(resource, name):
            try:
                resource.setrlimit(getattr(resource, name), (value, value))
            except (ValueError, OSError):
                pass


def run_tests(completion: str, tests: list[str], timeout: float = TIMEOUT_S) -> bool:
    """Whether the completion's code passes every assertion in `tests` (False on any error or timeout)."""
    if not tests:
        return False
    program = _PREAMBLE + extract_code(completion) + "\n\n" + "\n".join(tests) + "\n"
    with tempfile.TemporaryDirectory(prefix="bs-code-") as cwd:
        try:
            proc = subprocess.run([sys.executable, "-I", "-c", program], cwd=cwd, env={}, capture_output=True,
                                  timeout=timeout, preexec_fn=_limits if sys.platform != "win32" else None)
        except subprocess.TimeoutExpired:
            return False
    return proc.returncode == 0

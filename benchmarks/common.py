"""Helpers shared by the benchmarks (docs/DESIGN.md §7): machine description, tables, targets, and the JSON report.

Every benchmark is `python -m benchmarks.<name> [--quick] [--json PATH]`; with `--json` it writes
`{"benchmark", "machine", "results", "targets": [{"name", "measured", "op", "target", "unit"}]}`.

    parser = benchmark_parser("throughput", __doc__)
    args = parser.parse_args()
    ...
    targets = [Target("16-client / 1-client tok/s", measured=7.1, op=">=", target=6.0, unit="x")]
    print_table(rows, title="throughput")
    print_targets(targets)
    if args.json:
        write_report(args.json, "throughput", results=rows, targets=targets)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

OPS = {">=": lambda m, t: m >= t, "<=": lambda m, t: m <= t}


@dataclass
class Target:
    """One target of a benchmark's issue and the figure measured for it in this run (None: not measured)."""

    name: str
    measured: float | None
    op: str  # ">=" or "<="
    target: float
    unit: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"target {self.name!r}: op {self.op!r} must be one of {sorted(OPS)}")

    @property
    def passed(self) -> bool:
        m = self.measured
        return m is not None and not (isinstance(m, float) and math.isnan(m)) and OPS[self.op](m, self.target)


def machine_info() -> dict:
    """What the figures were measured on: CPU, cores usable by this process, Python, torch and its threads."""
    info: dict = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    if "torch" in sys.modules or _importable("torch"):
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:,.2f}"
    return str(v)


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, title: str | None = None) -> str:
    """Rows of dicts as an aligned text table; columns default to the keys of the first row, in order."""
    if not rows:
        return f"{title}\n(no rows)" if title else "(no rows)"
    cols = list(columns) if columns is not None else list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    out = [title] if title else []
    out.append("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def print_table(rows: Sequence[dict], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    print(format_table(rows, columns, title), flush=True)


def print_targets(targets: Sequence[Target]) -> None:
    rows = [{"target": t.name, "measured": t.measured, "op": t.op, "goal": t.target, "unit": t.unit,
             "result": "PASS" if t.passed else "FAIL"} for t in targets]
    print_table(rows, title="targets")


def report_dict(benchmark: str, results: list, targets: Sequence[Target], machine: dict | None = None) -> dict:
    """The docs/DESIGN.md §7 JSON object (plus `passed` per target, an addition readers may ignore)."""
    from brainstacks.files import json_safe  # lazy: a load generator using these helpers needs no torch

    return json_safe({
        "benchmark": benchmark,
        "machine": machine if machine is not None else machine_info(),
        "results": list(results),
        "targets": [{**asdict(t), "passed": t.passed} for t in targets],
    })


def write_report(path: str | Path, benchmark: str, results: list, targets: Sequence[Target],
                 machine: dict | None = None) -> dict:
    """Write the §7 JSON (strict: NaN becomes null) and return it."""
    from brainstacks.files import write_json

    data = report_dict(benchmark, results, targets, machine)
    write_json(path, data)
    return data


def finish(args: argparse.Namespace, benchmark: str, rows: list[dict], targets: Sequence[Target],
           columns: Sequence[str] | None = None, title: str | None = None) -> int:
    """A benchmark's ending: its table, its targets, the §7 JSON when --json asks for it; the exit status 0 (the run
    completed; PASS/FAIL of each target is in the table and the JSON)."""
    print_table(rows, columns, title)
    print_targets(targets)
    if args.json:
        write_report(args.json, benchmark, rows, targets, machine_info())
    return 0


def benchmark_parser(name: str, description: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the two flags every benchmark takes: --quick and --json PATH."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    p.add_argument("--quick", action="store_true", help="smaller run that finishes in under 5 minutes on 2 CPU cores")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results and targets as JSON here")
    return p


def parse_bundle_benchmark(name: str, description: str | None, argv: list[str] | None) -> argparse.Namespace:
    """The flags of a benchmark that runs one bundle: --quick, --json, --bundle DIR (default: the shipped demo
    bundle) and --threads N (torch CPU threads, applied here; 0: torch's default)."""
    import torch

    p = benchmark_parser(name, description)
    p.add_argument("--bundle", default=None, help="bundle directory (default: the shipped demo bundle)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def ms(x: float | None) -> float | None:
    """Seconds as milliseconds (None stays None)."""
    return None if x is None else x * 1000.0


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    return a / b if a is not None and b else None


def median(xs: Sequence[float | None]) -> float | None:
    """The median of the values present (None when there are none)."""
    vals = sorted(x for x in xs if x is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2

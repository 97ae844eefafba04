"""Subcommands owned by benchmarks/ (registered into the `brainstacks` console script by brainstacks_cli.main).

    brainstacks bench throughput --quick --json out.json    # same as: python -m benchmarks.throughput --quick ...
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil

NOT_BENCHMARKS = {"cli", "common", "bundles", "servers"}  # helpers, not benchmarks


def available() -> list[str]:
    """Benchmark modules of this package: every module with a main(argv), by name."""
    import benchmarks

    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                  if not m.ispkg and m.name not in NOT_BENCHMARKS and not m.name.startswith("_"))


def _run(args: argparse.Namespace) -> int:
    names = available()
    if args.name not in names:
        print(f"brainstacks bench: unknown benchmark {args.name!r}; available: {', '.join(names) or 'none'}")
        return 2
    module = importlib.import_module(f"benchmarks.{args.name}")
    return int(module.main(list(args.args)) or 0)


def register(subparsers) -> None:
    """Add this package's subcommands to the top-level parser."""
    p = subparsers.add_parser("bench", help="run a benchmark (python -m benchmarks.<name>)",
                              description="Run benchmarks/<name>.py with the remaining arguments, e.g. "
                                          "`brainstacks bench throughput --quick --json out.json`.")
    p.add_argument("name", help="benchmark module name, e.g. throughput or forward")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark (--quick, --json PATH)")
    p.set_defaults(func=_run)

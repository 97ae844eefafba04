"""`brainstacks <subcommand>`: dispatches to the subcommands registered by server/, training/ and benchmarks/.

Each owning package exposes `register(subparsers)` in its `cli` module, adding parsers whose `func` attribute
takes the parsed namespace and returns an exit code. Heavy imports happen inside those funcs, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands, in help order. Each must define register(subparsers).
COMMAND_MODULES = ("server.cli", "training.cli", "benchmarks.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainstacks", description="Routed compositions of frozen MoE-LoRA stacks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from brainstacks.errors import run_command

    return run_command(args.func, args, f"brainstacks {args.command}")


if __name__ == "__main__":
    sys.exit(main())

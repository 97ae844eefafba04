"""The console script: every docs/DESIGN.md §5 subcommand is registered; shipped recipes are valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from brainstacks_cli.main import build_parser
from training.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_subcommands_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"serve", "train", "eval", "route", "pretrain", "bench"} <= set(sub.choices)


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "brainstacks_cli", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "serve" in out.stdout and "train" in out.stdout


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_parse(recipe):
    r = load_recipe(recipe, check_files=False)
    assert r.domains and r.stack.rank >= 1


def test_the_torchrun_relaunch_passes_every_train_flag():
    """`train --nproc N` relaunches under torchrun with the flags as parsed, built from the parser's own actions:
    a flag added to the parser reaches the workers without a second list to update."""
    import argparse

    from training.cli import add_train_parser, relaunch_argv

    ap = argparse.ArgumentParser()
    add_train_parser(ap.add_subparsers())
    args = ap.parse_args(["train", "--recipe", "r.toml", "--out", "o", "--nproc", "2", "--quiet", "--device", "cpu",
                          "--keep-versions", "0"])
    argv = relaunch_argv(args)
    assert "--nproc" not in argv and argv[argv.index("--recipe") + 1] == "r.toml" and "--quiet" in argv
    assert argv[argv.index("--device") + 1] == "cpu" and argv[argv.index("--keep-versions") + 1] == "0"
    assert ap.parse_args(["train", *argv]).out == "o"  # what the workers parse is what was asked
    assert {a.dest for a in args.train_actions} == {"recipe", "out", "device", "nproc", "quiet", "keep_versions",
                                                   "router_only"}

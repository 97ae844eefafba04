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

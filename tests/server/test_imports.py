"""server/ conventions checked from the source (import circles: tests/test_layering.py, over every package)."""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server"


def test_no_function_takes_an_untyped_state():
    untyped = []
    for f in SERVER.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for a in node.args.args + node.args.kwonlyargs:
                    if a.arg == "state" and (a.annotation is None or ast.unparse(a.annotation) == "Any"):
                        untyped.append(f"{f.name}:{node.name}")
    assert not untyped

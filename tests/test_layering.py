"""`server → brainstacks ← training`: the library never imports server/ or training/; loadtest imports nothing of
ours."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_roots(package: str) -> dict[str, set[str]]:
    out = {}
    for f in (ROOT / package).rglob("*.py"):
        roots = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
        out[str(f.relative_to(ROOT))] = roots
    return out


def test_library_does_not_import_server_or_training():
    bad = {f: r & {"server", "training", "loadtest", "benchmarks", "brainstacks_cli"}
           for f, r in imported_roots("brainstacks").items()}
    assert not {f: r for f, r in bad.items() if r}


def test_training_does_not_import_server_and_vice_versa():
    assert not {f for f, r in imported_roots("training").items() if "server" in r}
    assert not {f for f, r in imported_roots("server").items() if "training" in r}


def test_loadtest_speaks_only_http():
    assert not {f: r for f, r in imported_roots("loadtest").items()
                if r & {"brainstacks", "server", "training", "benchmarks", "torch"}}

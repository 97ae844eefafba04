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


PACKAGES = ("brainstacks", "server", "training", "benchmarks", "loadtest", "brainstacks_cli")


def module_graph() -> dict[str, set[str]]:
    """Every module of our packages -> the modules of ours it imports, lazy imports inside functions included (a
    circle hidden in a function is still a circle)."""
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            rel = f.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            mods[name] = f
    graph = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in mods}
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(mod: str, path: list[str]) -> None:
        for dep in sorted(graph.get(mod, ())):
            if dep in path:
                found.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(mod)

    for mod in sorted(graph):
        if mod not in done:
            visit(mod, [mod])
    return found


def test_no_import_circle_in_any_package():
    graph = module_graph()
    assert len(graph) > 100 and "brainstacks.stacks" in graph["brainstacks.bundle"]
    assert not cycles(graph), cycles(graph)


def test_the_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_only_brainstacks_quant_imports_bitsandbytes():
    """One seam per outside library that reaches into private API: bitsandbytes lives in brainstacks/quant.py."""
    users = {f for pkg in PACKAGES for f, roots in imported_roots(pkg).items() if "bitsandbytes" in roots}
    assert users == {"brainstacks/quant.py"}, users


def test_modules_and_functions_stay_small():
    """No module of ours over 400 lines, no function over 80: a room that grows is split (docs/ARCHITECTURE.md)."""
    big = []
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            src = f.read_text(encoding="utf-8")
            if len(src.splitlines()) > 400:
                big.append(f"{f.relative_to(ROOT)}: {len(src.splitlines())} lines")
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 80:
                    big.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}")
    assert not big, big

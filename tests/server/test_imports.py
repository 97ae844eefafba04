"""server/ imports go one way: no module imports (directly or through others) a module that imports it."""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server"


def server_imports() -> dict[str, set[str]]:
    graph = {}
    for f in SERVER.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):  # lazy imports inside functions count too
            if isinstance(node, ast.ImportFrom) and node.module == "server":
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("server."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("server.")}
        graph[f.stem] = deps - {f.stem}
    return graph


def test_server_modules_import_one_way():
    graph = server_imports()
    cycles = []

    def visit(mod: str, path: list[str]) -> None:
        for dep in graph.get(mod, ()):
            if dep in path:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(mod)

    done: set[str] = set()
    for mod in sorted(graph):
        if mod not in done:
            visit(mod, [mod])
    assert not cycles


def test_no_function_takes_an_untyped_state():
    untyped = []
    for f in SERVER.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for a in node.args.args + node.args.kwonlyargs:
                    if a.arg == "state" and (a.annotation is None or ast.unparse(a.annotation) == "Any"):
                        untyped.append(f"{f.name}:{node.name}")
    assert not untyped

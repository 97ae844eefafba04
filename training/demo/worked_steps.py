"""Checking the arithmetic inside worked answers: is a wrong answer a slip in a line's sum, or a wrong setup?

    python -m training.demo.worked_steps RESULT.json [RESULT.json ...] [--domain math] [--json PATH]

A demo stack answers a word problem one operation per line ("Left: 95 - 45 = 95 - 40 - 5 = 55 - 5 = 50"), then
"Answer:". Each `=` in such a line is a claim that can be checked without knowing the problem: both sides are
evaluated (numbers and + - * / only; a side with words, such as "25% of 40", is not checked) and compared. That
splits every wrong answer of an evaluation result (`training.demo.eval_set --json`) into:
  - slip:   at least one checked `=` is false (the model set the problem up and then miscalculated);
  - setup:  every checked `=` holds, yet the answer is wrong (wrong numbers combined, or a wrong operation);
  - none:   no `=` could be checked (no worked lines at all).
`step_accuracy` is the share of checked `=` that hold: what the composition gets right per arithmetic step. A
problem of k steps then comes out right at most about step_accuracy ** k of the time, the ceiling the figure shows.
`facts` narrows that to single operations with a plain number on the right ("55 - 5 = 52"), per operator.

    python -m training.demo.worked_steps --probe [--bundle DIR] [--per-cell 20] [--json PATH]

`--probe` asks the same thing out of context: "What is 55 - 5?" as a chat request, for random operands of
1-3 digits (seeded), answered by the base alone and by the math stack, so the two can be told apart: a fact the
base gets wrong is beyond what a small stack adds, a fact it gets right that the worked lines get wrong is lost in
the context of a longer answer.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import random
import re
from pathlib import Path
from typing import Any

from training.demo.answers import check_answer

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_ARITHMETIC = re.compile(r"^[\d.+\-*/() ]+$")
_FACT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([-+*/])\s*(\d+(?:\.\d+)?)\s*$")  # "55 - 5"
_TRAILING_WORDS = re.compile(r"(?:\s+[A-Za-z][A-Za-z ./]*)$")  # "12500 grams", "35.8 F", "36 mg/kg"
KINDS: tuple[str, ...] = ("right", "slip", "setup", "none")


def _value(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left), _value(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand)
    raise ValueError("not arithmetic")


def evaluate(side: str) -> float | None:
    """The value of one side of an `=`, or None when it is not plain arithmetic ("25% of 40", "x", "")."""
    s = _plain(side)
    if not s or not _ARITHMETIC.match(s) or not re.search(r"\d", s):
        return None
    try:
        return _value(ast.parse(s, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def equations(text: str) -> list[tuple[str, str, bool]]:
    """Every checkable `a = b` in `text` (chains count each link), as (a, b, holds)."""
    out = []
    for line in text.splitlines():
        if line.lstrip().lower().startswith("answer"):
            continue
        body = re.sub(r"\(check:.*?\)", "", line)  # an aside re-checking the line is not a step
        body = body.rsplit(":", 1)[-1]  # drop a label such as "Given away:"
        sides = body.split("=")
        for a, b in zip(sides, sides[1:], strict=False):
            va, vb = evaluate(a), evaluate(b)
            if va is not None and vb is not None:
                out.append((a.strip(), b.strip(), abs(va - vb) <= 1e-6 * max(1.0, abs(vb))))
    return out


def _plain(side: str) -> str:
    """A side without "$", thousands commas, a trailing full stop or trailing unit words."""
    s = side.strip().rstrip(".").replace("$", "").replace(",", "")
    return _TRAILING_WORDS.sub("", s).strip()


def fact_operator(left: str, right: str) -> str | None:
    """The operator of a single-operation claim "a op b = c" with a plain number c ("55 - 5 = 52"), else None."""
    m = _FACT.match(_plain(left))
    if m is None or not re.fullmatch(r"\d+(?:\.\d+)?", _plain(right)):
        return None
    return m.group(2)


def classify(domain: str, completion: str, answer: str) -> str:
    """One of KINDS for a completion of a question whose reference is `answer`."""
    if check_answer(domain, completion, answer):
        return "right"
    eqs = equations(completion)
    if not eqs:
        return "none"
    return "slip" if not all(ok for _, _, ok in eqs) else "setup"


def diagnose(result: dict[str, Any], domain: str = "math") -> dict[str, Any]:
    """Per composition of an eval_set result: how many answers are right / slip / setup / none, and the step
    accuracy over every checked `=`, with the first false steps as examples."""
    part = result["domains"][domain]
    comps = [c for c in ("base", "own", "routed") if part["examples"] and c in part["examples"][0]]
    out: dict[str, Any] = {}
    for c in comps:
        kinds = dict.fromkeys(KINDS, 0)
        held = checked = 0
        false_steps: list[str] = []
        facts: dict[str, list[int]] = {op: [0, 0] for op in "+-*/"}  # operator -> [held, checked]
        for ex in part["examples"]:
            kinds[classify(domain, ex[c], ex["answer"])] += 1
            for a, b, ok in equations(ex[c]):
                checked += 1
                held += ok
                if (op := fact_operator(a, b)) is not None:
                    facts[op][0] += ok
                    facts[op][1] += 1
                if not ok and len(false_steps) < 8:
                    false_steps.append(f"{a} = {b}")
        out[c] = {"n": part["n"], **kinds, "steps_checked": checked,
                  "step_accuracy": round(held / checked, 4) if checked else None, "false_steps": false_steps,
                  "facts": {op: {"held": h, "checked": n} for op, (h, n) in facts.items()}}
    return out


def format_table(name: str, diag: dict[str, Any]) -> str:
    lines = [f"{name}", f"  {'composition':<11} {'n':>3} " + " ".join(f"{k:>6}" for k in KINDS)
             + f" {'steps':>6} {'step acc':>9}  " + " ".join(f"{'a' + op + 'b':>9}" for op in "+-*/")]
    for c, d in diag.items():
        acc = "-" if d["step_accuracy"] is None else f"{100 * d['step_accuracy']:.1f}%"
        facts = " ".join(f"{f['held']:>4}/{f['checked']:<4}" for f in d["facts"].values())
        lines.append(f"  {c:<11} {d['n']:>3} " + " ".join(f"{d[k]:>6}" for k in KINDS)
                     + f" {d['steps_checked']:>6} {acc:>9}  {facts}")
    return "\n".join(lines)


PROBE_CELLS: tuple[tuple[str, int, int], ...] = tuple(
    (op, da, db) for op in "+-*" for da, db in ((2, 1), (2, 2), (3, 2)))  # operator, digits of a, digits of b


def probe_questions(per_cell: int = 20, seed: int = 0) -> list[dict[str, Any]]:
    """Random single-operation questions, `per_cell` for each of PROBE_CELLS (a > b for subtraction)."""
    rng, rows = random.Random(seed), []
    for op, da, db in PROBE_CELLS:
        for _ in range(per_cell):
            a, b = rng.randint(10 ** (da - 1), 10**da - 1), rng.randint(max(2, 10 ** (db - 1)), 10**db - 1)
            if op == "-":  # the larger first, never equal: no negative or zero results
                a, b = max(a, b), min(a, b) - (a == b)
            value = {"+": a + b, "-": a - b, "*": a * b}[op]
            rows.append({"cell": f"{da}d {op} {db}d", "prompt": f"What is {a} {op} {b}?", "answer": str(value)})
    return rows


def fact_probe(lb, domain: str = "math", per_cell: int = 20, seed: int = 0, max_new_tokens: int = 64,
               progress: bool = True) -> dict[str, Any]:
    """Accuracy per cell of the base alone and of `domain`'s stacks on probe_questions, sent as chat requests."""
    from training.demo.eval_set import framed_prompt
    from training.demo.evidence import generate, one_hot

    rows = probe_questions(per_cell, seed)
    prompts = [framed_prompt(lb.base.tokenizer, r["prompt"], "chat") for r in rows]
    comps = {"base": None, "own": one_hot(list(lb.stacked.domains), [domain]).expand(len(rows), -1)}
    out: dict[str, Any] = {"per_cell": per_cell, "seed": seed, "cells": {}, "examples": []}
    texts = {c: generate(lb, prompts, w, max_new_tokens, 16, progress, f"probe {c}") for c, w in comps.items()}
    for i, r in enumerate(rows):
        cell = out["cells"].setdefault(r["cell"], {c: 0 for c in comps} | {"n": 0})
        cell["n"] += 1
        for c in comps:
            cell[c] += check_answer(domain, texts[c][i], r["answer"])
        out["examples"].append({**r, **{c: texts[c][i] for c in comps}})
    return out


def format_probe(probe: dict[str, Any]) -> str:
    lines = [f"  {'question':<12} {'n':>3} {'base':>6} {'own':>6}"]
    for name, c in probe["cells"].items():
        lines.append(f"  {name:<12} {c['n']:>3} " + " ".join(f"{100 * c[k] / c['n']:>5.0f}%" for k in ("base", "own")))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo.worked_steps", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="*", help="eval_set JSON files (python -m training.demo.eval_set --json), or a "
                                              "bundle's reports/evidence.json (its eval_set and eval_set_completion)")
    p.add_argument("--domain", default="math")
    p.add_argument("--json", default=None, help="write every diagnosis here")
    p.add_argument("--probe", action="store_true", help="also ask single-operation questions of a bundle")
    p.add_argument("--bundle", default=None, help="the bundle --probe asks (default: the embedded demo bundle)")
    p.add_argument("--per-cell", type=int, default=20, help="--probe questions per operator and operand size")
    args = p.parse_args(argv)
    if not args.results and not args.probe:
        p.error("give eval_set results to diagnose, or --probe")
    report: dict[str, Any] = {}
    if args.probe:
        from brainstacks.bundle import load_bundle
        from brainstacks.demo import DEMO_BUNDLE

        lb = load_bundle(args.bundle or DEMO_BUNDLE, quantize="nf4")
        report["probe"] = fact_probe(lb, args.domain, args.per_cell)
        print(f"single-operation questions, {args.domain} stack ({args.bundle or DEMO_BUNDLE})")
        print(format_probe(report["probe"]))
    for path in args.results:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        parts = {k: data[k] for k in ("eval_set", "eval_set_completion") if k in data} or {"": data}
        for key, res in parts.items():
            name = f"{path} {key}".strip()
            if args.domain not in res.get("domains", {}):
                continue
            report[name] = diagnose(res, args.domain)
            print(format_table(f"{name} ({res.get('framing', 'chat')})", report[name]))
    if args.json:
        from brainstacks.files import write_json

        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

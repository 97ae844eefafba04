"""The demo's evaluation set that no generator wrote: tests/data/eval_questions.jsonl (issue 22).

    python -m training.demo.eval_set [--bundle DIR] [--json PATH] [--max-new-tokens 160] [--framing completion]

Hand-written questions in plain phrasing, with exact answers: math word problems (one to three operations; money,
time, rates, units, percentages), medical dosing and infusion questions, and short reasoning questions. Used for
evaluation only: nothing trains or tunes on them. Each is sent as a chat request would be (the chat template, with
the generation prompt), decoded greedily, and scored by `training.demo.answers.check_answer` (the number on the
"Answer:" line, else the last number; for a text answer the "Answer:" line, else the words in the reply), for the
base alone, the domain's own stacks and the router's composition. Each accuracy comes with its standard error
sqrt(p(1-p)/n), since the sets are small. `--framing completion` sends each question instead as the raw
`/v1/completions` prompt of the README's example, COMPLETION_FRAME ("Q: <question>\nA:"), with no chat template.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from brainstacks.bundle import LoadedBundle
from brainstacks.text import render_chat
from training.demo.answers import check_answer
from training.demo.evidence import generate, one_hot, router_weights

EVAL_SET = Path(__file__).resolve().parents[2] / "tests" / "data" / "eval_questions.jsonl"
FRAMINGS: tuple[str, ...] = ("chat", "completion")
COMPLETION_FRAME = "Q: {q}\nA:"  # the README's /v1/completions example


def framed_prompt(tokenizer, question: str, framing: str) -> str:
    """The text the model reads for one question: the chat template with the generation prompt, or COMPLETION_FRAME."""
    if framing == "chat":
        return render_chat(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)
    if framing == "completion":
        return COMPLETION_FRAME.format(q=question)
    raise ValueError(f"unknown framing {framing!r}; expected one of {FRAMINGS}")


def read_questions(path: Path = EVAL_SET) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def question_sample(per_domain: int = 0, path: Path = EVAL_SET) -> list[dict[str, Any]]:
    """The first `per_domain` questions of each domain (0: every question), in file order."""
    rows, seen = [], {}
    for r in read_questions(path):
        seen[r["domain"]] = seen.get(r["domain"], 0) + 1
        if not per_domain or seen[r["domain"]] <= per_domain:
            rows.append(r)
    return rows


def stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else 0.0


def evaluate_questions(lb: LoadedBundle, rows: list[dict[str, Any]], max_new_tokens: int = 160,
                       batch_size: int = 16, progress: bool = True, framing: str = "chat",
                       with_own: bool = True) -> dict[str, Any]:
    """Accuracy of base / own (unless `with_own` is False) / routed per domain on `rows` ({"domain", "prompt",
    "answer"}) sent in `framing`, with standard errors and every completion."""
    tok, doms = lb.base.tokenizer, list(lb.stacked.domains)
    out: dict[str, Any] = {"max_new_tokens": max_new_tokens, "framing": framing, "domains": {}}
    for domain in sorted({r["domain"] for r in rows}):
        part = [r for r in rows if r["domain"] == domain]
        prompts = [framed_prompt(tok, r["prompt"], framing) for r in part]
        comps: dict[str, torch.Tensor | None] = {"base": None}
        if domain in doms and with_own:
            comps["own"] = one_hot(doms, [domain]).expand(len(part), -1)
        if lb.router is not None:
            comps["routed"] = router_weights(lb, prompts, batch_size)
        res: dict[str, Any] = {"n": len(part), "examples": []}
        texts = {name: generate(lb, prompts, w, max_new_tokens, batch_size, progress, f"{domain} {name}")
                 for name, w in comps.items()}
        for name, t in texts.items():
            right = [check_answer(domain, x, r["answer"]) for x, r in zip(t, part, strict=True)]
            p = sum(right) / len(part)
            res[name] = {"accuracy": round(p, 4), "stderr": round(stderr(p, len(part)), 4), "right": sum(right)}
        res["examples"] = [{"prompt": r["prompt"], "answer": r["answer"], **{k: v[i] for k, v in texts.items()}}
                           for i, r in enumerate(part)]
        out["domains"][domain] = res
    return out


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'domain':<10} {'n':>3}  " + "  ".join(f"{c:>14}" for c in ("base", "own", "routed"))]
    for d, r in result["domains"].items():
        cells = [f"{100 * r[c]['accuracy']:5.1f}% ± {100 * r[c]['stderr']:4.1f}" if c in r else f"{'-':>14}"
                 for c in ("base", "own", "routed")]
        lines.append(f"{d:<10} {r['n']:>3}  " + "  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from brainstacks.bundle import load_bundle
    from brainstacks.demo import DEMO_BUNDLE
    from brainstacks.files import write_json

    p = argparse.ArgumentParser(prog="python -m training.demo.eval_set", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(DEMO_BUNDLE), help="default: the embedded demo bundle")
    p.add_argument("--questions", default=str(EVAL_SET))
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--domains", nargs="+", default=None, help="only these domains' questions (default: all)")
    p.add_argument("--framing", choices=FRAMINGS, default="chat",
                   help="chat requests (default) or raw completion prompts 'Q: <question>\\nA:'")
    p.add_argument("--json", default=None, help="write the result (every completion included) here")
    args = p.parse_args(argv)
    lb = load_bundle(args.bundle, quantize="nf4")
    rows = [r for r in read_questions(Path(args.questions)) if not args.domains or r["domain"] in args.domains]
    result = evaluate_questions(lb, rows, args.max_new_tokens, framing=args.framing)
    result["bundle"], result["bundle_version"] = str(args.bundle), lb.manifest.version
    print(format_table(result))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

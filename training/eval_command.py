"""`brainstacks eval`: per-domain validation loss of a bundle under five compositions.

    base      every stack off
    own       the domain's own stacks alone (weight 1)
    ungated   every stack at weight 1 (how the stacks were trained)
    routed    the bundle's router, per example, with its serving policy (min_weight, floors)
    oracle    per example, the best combination the outcome-based oracle finds (base, singles, greedy additions)

Losses are answer-token cross-entropy, token-weighted over the domain's validation split (the recipe's `valid` file,
or the same deterministic split training used) of its first stage's data; a domain whose first stage is "dpo" is
measured on its chosen responses. Every stack of a domain counts, whatever stage trained it. A domain's later
stages add, over their own validation split:

    dpo    preference accuracy (share of pairs with log p(chosen) > log p(rejected)) and the mean log-prob margin,
           under the base alone and with every stack on (ungated)
    grpo   the greedy [grpo] reward on up to GRPOConfig.eval_prompts prompts, ungated

Prints a table (and the stage lines) and returns/writes JSON.
"""

from __future__ import annotations

from typing import Any

import torch

from brainstacks.bundle import LoadedBundle
from training.config import DomainSpec
from training.data_files import read_jsonl, split_records
from training.dpo import sequence_logprobs
from training.losses import aligned_examples, dataset_loss, routed_weights
from training.recipe import Recipe
from training.router_examples import RouterExample, score_oracle
from training.tokenization import PreferenceCollator, pad_id_of, prompt_text, tokenize_records

COLUMNS = ("base", "own", "ungated", "routed", "oracle")


def evaluate_bundle(lb: LoadedBundle, recipe: Recipe, max_examples: int = 64, progress: bool = True
                    ) -> dict[str, Any]:
    sm, tok = lb.stacked, lb.base.tokenizer
    pad = pad_id_of(tok)
    cfg = recipe.train
    table: dict[str, dict[str, float]] = {}
    for spec in recipe.domains:
        if spec.name not in sm.domains:
            continue
        valid_recs = _valid_records(spec, recipe)[:max_examples]
        recs, ex = aligned_examples(tok, valid_recs, spec.format, cfg.seq_len)
        n = len(ex)

        def loss(weights, base_only=False, ex=ex):
            return dataset_loss(sm, ex, weights, cfg.batch_size, pad, base_only)

        own = torch.zeros(len(sm.domains))
        own[sm.domains.index(spec.name)] = 1.0
        row = {"base": loss(None, base_only=True), "own": loss(own), "ungated": loss(None)}
        if lb.router is not None:
            row["routed"] = loss(routed_weights(sm, tok, lb.router, [prompt_text(tok, r, spec.format) for r in recs]))
        rex = [RouterExample("", frozenset([spec.name]), e, scored=True) for e in ex]
        sets = score_oracle(sm, rex, sm.domains, recipe.router_train, cfg.batch_size, pad, progress=progress)
        w = (torch.tensor([[1.0 if d in s else 0.0 for d in sm.domains] for s in sets]) if sets
             else torch.zeros(n, len(sm.domains)))
        row["oracle"] = loss(w)
        row["examples"] = n
        table[spec.name] = row
    stages = {f"{spec.name}/{i}": stage_eval(lb, recipe, st, max_examples)
              for spec in recipe.domains if spec.name in sm.domains
              for i, st in enumerate(spec.stages) if st.stage in ("dpo", "grpo")}
    return {"bundle": str(lb.bundle_dir), "version": lb.manifest.version, "domains": sm.domains, "losses": table,
            "stages": stages}


def _valid_records(st: DomainSpec, recipe: Recipe) -> list:
    if st.valid:
        return read_jsonl(st.valid, st.format)
    return split_records(read_jsonl(st.train, st.format), st.format, recipe.train.valid_fraction, recipe.train.seed)[1]


@torch.no_grad()
def stage_eval(lb: LoadedBundle, recipe: Recipe, st: DomainSpec, max_examples: int) -> dict[str, Any]:
    """The module doc's per-stage measures of one dpo or grpo stage, on its validation split."""
    sm, tok, cfg = lb.stacked, lb.base.tokenizer, recipe.train
    recs = _valid_records(st, recipe)
    if st.stage == "grpo":
        from brainstacks.text import eos_token_ids
        from training.grpo import greedy_reward

        g = recipe.grpo
        recs = recs[: min(max_examples, g.eval_prompts)]
        eos = sorted(eos_token_ids(sm.model, tok))
        with sm.routing(None):
            reward = greedy_reward(sm, tok, [r.data for r in recs], g, eos, cfg.batch_size)
        return {"stage": "grpo", "reward": g.reward, "ungated": reward, "examples": len(recs)}
    pairs = tokenize_records(tok, recs[:max_examples], st.format, cfg.seq_len, stage="dpo")
    collate = PreferenceCollator(pad_id_of(tok))
    out: dict[str, Any] = {"stage": "dpo", "examples": len(pairs)}
    for name in ("base", "ungated"):
        margins = []
        for s in range(0, len(pairs), cfg.batch_size):
            b = collate(pairs[s : s + cfg.batch_size])
            half = b["input_ids"].shape[0] // 2
            with sm.base_only() if name == "base" else sm.routing(None):
                dev = sm.device
                lp = sequence_logprobs(sm.model(input_ids=b["input_ids"].to(dev),
                                                attention_mask=b["attention_mask"].to(dev)).logits, b["labels"].to(dev))
            margins += (lp[:half] - lp[half:]).tolist()
        out[name] = {"accuracy": sum(m > 0 for m in margins) / max(1, len(margins)),
                     "margin": sum(margins) / max(1, len(margins))}
    return out


def format_eval(result: dict[str, Any]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in result["losses"].values())]
    lines = [f"bundle {result['bundle']} v{result['version']}: validation loss (answer-token CE)",
             "domain".ljust(14) + "".join(c.rjust(10) for c in cols) + "examples".rjust(10)]
    for name, row in result["losses"].items():
        lines.append(name.ljust(14) + "".join(f"{row[c]:10.4f}" if c in row else " " * 10 for c in cols)
                     + f"{row['examples']:10d}")
    for name, st in result.get("stages", {}).items():
        if st["stage"] == "dpo":
            lines.append(f"{name} dpo: preference accuracy base {st['base']['accuracy']:.3f} -> ungated "
                         f"{st['ungated']['accuracy']:.3f}, log-prob margin {st['base']['margin']:.3f} -> "
                         f"{st['ungated']['margin']:.3f} ({st['examples']} pairs)")
        else:
            lines.append(f"{name} grpo: greedy {st['reward']} reward ungated {st['ungated']:.3f} "
                         f"({st['examples']} prompts)")
    return "\n".join(lines)

"""`brainstacks eval`: per-domain validation loss of a bundle under five compositions.

    base      every stack off
    own       the domain's own stacks alone (weight 1)
    ungated   every stack at weight 1 (how the stacks were trained)
    routed    the bundle's router, per example, with its serving policy (min_weight, floors)
    oracle    per example, the best combination the outcome-based oracle finds (base, singles, greedy additions)

Losses are answer-token cross-entropy, token-weighted over the domain's validation split (the recipe's `valid` file,
or the same deterministic split training used). Prints a table and returns/writes JSON.
"""

from __future__ import annotations

from typing import Any

import torch

from brainstacks.bundle import LoadedBundle
from training.data_files import read_jsonl, split_records
from training.losses import aligned_examples, dataset_loss, routed_weights
from training.recipe import Recipe
from training.router_examples import RouterExample, score_oracle
from training.tokenization import pad_id_of, prompt_text

COLUMNS = ("base", "own", "ungated", "routed", "oracle")


def evaluate_bundle(lb: LoadedBundle, recipe: Recipe, max_examples: int = 64, progress: bool = True
                    ) -> dict[str, Any]:
    sm, tok = lb.stacked, lb.base.tokenizer
    pad = pad_id_of(tok)
    cfg = recipe.train
    table: dict[str, dict[str, float]] = {}
    for spec in recipe.domains:
        if spec.name not in sm.domains or spec.stage == "dpo":
            continue
        train_recs = read_jsonl(spec.train, spec.format)
        valid_recs = read_jsonl(spec.valid, spec.format) if spec.valid else None
        if valid_recs is None:
            train_recs, valid_recs = split_records(train_recs, spec.format, cfg.valid_fraction, cfg.seed)
        valid_recs = valid_recs[:max_examples]
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
    return {"bundle": str(lb.bundle_dir), "version": lb.manifest.version, "domains": sm.domains, "losses": table}


def format_eval(result: dict[str, Any]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in result["losses"].values())]
    lines = [f"bundle {result['bundle']} v{result['version']}: validation loss (answer-token CE)",
             "domain".ljust(14) + "".join(c.rjust(10) for c in cols) + "examples".rjust(10)]
    for name, row in result["losses"].items():
        lines.append(name.ljust(14) + "".join(f"{row[c]:10.4f}" if c in row else " " * 10 for c in cols)
                     + f"{row['examples']:10d}")
    return "\n".join(lines)

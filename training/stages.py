"""One stage of one domain (training/curriculum.py step 3): its null space, its training, its stacks' metadata.

A domain is a list of stages in training order (DomainSpec.stages: consecutive [[domains]] entries of one name);
each stage adds frozen stacks to that same domain, so routing, the bundle format and serving are unchanged (a domain
is a list of stacks). A stage trains on top of every stack already in the model: the earlier domains' and its own
domain's earlier stages'. Its reference, for "dpo" and "grpo", is the model below the new stack
(`StackedModel.without_active`).

    sft    residual boosting on answer tokens (training/boosting.py)         -> 1..max_rounds stacks
    dpo    the DPO loss on preference pairs (boosting.py, training/dpo.py)   -> 1 stack
    grpo   group-relative policy optimisation on prompt_answer data (training/grpo.py, [grpo]) -> 1 stack

Each stack's stack.json records `stage` (its kind) and `stage_index` (its position in the domain's stages; absent in
bundles written before stages, meaning 0), which is how a rerun knows which stages a bundle already holds. The new
stack is trained orthogonal to the null space of the other domains' stacks, collected on their training inputs; its
own domain's inputs are left out, since changing the domain's behaviour on them is the point of a later stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from brainstacks.nullspace import collect_directions
from training.boosting import DomainResult, train_domain
from training.config import DomainSpec
from training.data_files import split_records
from training.grpo import GRPOResult, train_grpo
from training.run_state import Run
from training.tokenization import Collator, DomainData, load_domain


@dataclass
class StageResult:
    domain: str
    index: int  # position in the domain's stages
    stage: str
    result: DomainResult | GRPOResult
    metas: list[dict[str, Any]] = field(default_factory=list)  # stack.json extras of each kept stack, in order

    def to_dict(self) -> dict[str, Any]:
        return {"stage_index": self.index, **self.result.to_dict()}


def stages_done(metas: list[dict[str, Any]]) -> int:
    """How many of a domain's stages a bundle holds, from its stacks' metadata (no stage_index: stage 0)."""
    return 1 + max((int(m.get("stage_index", 0)) for m in metas), default=-1)


def train_stage(run: Run, spec: DomainSpec, index: int, progress: bool = True) -> StageResult:
    """Train stage `index` of domain `spec` into run.sm (its stacks frozen there)."""
    st = spec.stages[index]
    cfg = run.recipe.train
    V = nullspace_for(run, spec)
    base_meta = {"stage": st.stage, "stage_index": index, "data_sha256": run.data_sha[spec.name][index]}
    if st.stage == "grpo":
        recs = run.records[str(st.train)]
        valid = run.records.get(str(st.valid)) if st.valid else None
        if valid is None:
            recs, valid = split_records(recs, st.format, cfg.valid_fraction, cfg.seed)
        g = train_grpo(run.sm, spec.name, [r.data for r in recs], [r.data for r in valid], run.tokenizer,
                       run.recipe.grpo, cfg, V, run.log)
        meta = {**base_meta, "steps": g.steps, "reward": run.recipe.grpo.reward, "reward_before": g.reward_before,
                "reward_after": g.reward_after}
        return StageResult(spec.name, index, st.stage, g, [meta])
    data = run.datasets[spec.name] if index == 0 else load_domain(
        st, run.tokenizer, cfg.seq_len, packing=False, valid_fraction=cfg.valid_fraction, seed=cfg.seed,
        records=(run.records[str(st.train)], run.records.get(str(st.valid)) if st.valid else None))
    r = train_domain(run.sm, data, cfg, V, st.stage, run.pad, progress, run.log)
    metas = [{**base_meta, "val_loss": k.best_val, "round": k.round, "steps": k.steps} for k in r.kept_rounds]
    return StageResult(spec.name, index, st.stage, r, metas)


def nullspace_for(run: Run, spec: DomainSpec) -> dict[str, torch.Tensor] | None:
    """The other domains' stacks' null space, collected on their training inputs (None for the first domain, with
    [nullspace] disabled, or when no other domain has SFT inputs)."""
    recipe, sm = run.recipe, run.sm
    earlier = [run.datasets[d] for d in sm.domains
               if d != spec.name and run.datasets[d].train and hasattr(run.datasets[d].train[0], "input_ids")]
    if not (recipe.nullspace.enabled and sm.stacks and earlier):
        return None
    V = collect_directions(sm, nullspace_batches(earlier, recipe.nullspace.samples, recipe.train.batch_size, run.pad),
                           recipe.nullspace.samples, recipe.nullspace.directions, seed=recipe.train.seed)
    run.log(f"[{spec.name}] null space: {recipe.nullspace.directions} directions at {len(V)} projections")
    return V


def nullspace_batches(datasets: list[DomainData], samples: int, batch_size: int, pad_id: int
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Inputs from the earlier domains' training data, round-robin across domains, `samples` sequences in all."""
    pool = []
    for i in range(max((len(d.train) for d in datasets), default=0)):
        for d in datasets:
            if i < len(d.train):
                ex = d.train[i]
                pool.append(ex if hasattr(ex, "input_ids") else None)
    pool = [e for e in pool if e is not None][:samples]
    collate = Collator(pad_id)
    for s in range(0, len(pool), batch_size):
        b = collate(pool[s : s + batch_size])
        yield b["input_ids"], b["attention_mask"]

"""The inner loop: residual boosting of one domain (docs/DESIGN.md §2).

Round k puts a new trainable stack on every projection (every earlier stack frozen, summed ungated) and trains it on
the domain's data. Validation runs every `eval_every` steps; the best snapshot is kept and restored at the end of the
round, and a validation spike (loss > best × spike_factor) ends the round early. Rounds stop when the best
validation loss improves by less than `min_improvement` over the previous round, or at `max_rounds`.

*Deliberate choice:* a round that improves by less than `min_improvement` is discarded rather than frozen: every
stack kept costs FLOPs at serving time for the rest of the bundle's life, and this one did not pay for itself.
The first round is always kept.

Stage "dpo" trains one stack with the DPO loss; the reference is the same model with that stack off (everything
frozen below it). Validation is the DPO loss on held-out pairs; the best snapshot is kept; margin and rewards are
recorded so a collapse (both rewards sinking) is visible in the report.

    result = train_domain(sm, data, train_cfg, nullspace=V, stage="sft")   # DomainResult, stacks frozen in sm
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from brainstacks.stacks import StackedModel
from training.config import TrainConfig
from training.distributed import average_gradients, shard, world
from training.dpo import dpo_loss, sequence_logprobs
from training.losses import answer_ce, dataset_loss
from training.schedule import make_optimizer, warmup_cosine
from training.tokenization import Collator, DomainData, PreferenceCollator


@dataclass
class RoundResult:
    domain: str
    round: int
    start_val: float  # validation loss before this round's stack (it starts as an exact no-op)
    best_val: float
    best_step: int
    steps: int
    kept: bool = False
    stop_reason: str = "steps"
    history: list[dict[str, float]] = field(default_factory=list)  # per eval: step, train_loss, val_loss, lr, tok_s
    seconds: float = 0.0


@dataclass
class DomainResult:
    domain: str
    stage: str
    val_before: float  # with every earlier stack on, before this domain
    val_after: float
    rounds: list[RoundResult] = field(default_factory=list)

    @property
    def kept_rounds(self) -> list[RoundResult]:
        return [r for r in self.rounds if r.kept]

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "stage": self.stage, "val_before": self.val_before, "val_after": self.val_after,
                "rounds": [r.__dict__ for r in self.rounds]}


LENGTH_POOL = 16  # batches per length-sorted pool in _batches


def _batches(examples: Sequence, batch_size: int, collate: Callable, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches of rows of like length; with data parallelism each rank takes its own slice of
    every epoch's order.

    A batch pads to its longest row, and on a CPU the step's time follows the padded tokens (measured on SmolLM2,
    8 rows: 2.9 s a step at 100 tokens, 4.9 s at 200). So each epoch's shuffled order is cut into pools of
    LENGTH_POOL batches, each pool sorted by length, and the batches cut from them are shuffled again: every row is
    still seen once an epoch in a random batch order, next to rows of its own length. On the demo data this takes
    the padded tokens from 1.18-1.55x the real ones (random batches) to 1.02-1.05x. Rows without a length
    (preference pairs) keep the shuffled order."""
    rng = random.Random(seed)
    pool = batch_size * LENGTH_POOL
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        order = shard(order)
        order = [i for p in range(0, len(order), pool) for i in sorted(order[p : p + pool], key=lambda i:
                                                                        _length(examples[i]))]
        last = max(1, len(order) - batch_size + 1)  # full batches only, unless the data is smaller than one
        starts = list(range(0, last, batch_size))
        rng.shuffle(starts)
        for s in starts:
            yield collate([examples[i] for i in order[s : s + batch_size]])


def _length(example) -> int:
    try:
        return len(example)
    except TypeError:
        return 0


def _eval_examples(data: DomainData, cfg: TrainConfig) -> list:
    return list(data.valid[: cfg.max_eval_batches * cfg.batch_size])


def validation_loss(sm: StackedModel, data: DomainData, cfg: TrainConfig, pad_id: int, stage: str) -> float:
    """The loop's validation loss: answer-token CE with every stack on (ungated), or the DPO loss for stage dpo."""
    valid = _eval_examples(data, cfg)
    if stage == "dpo":
        return dpo_eval(sm, valid, cfg, pad_id)["loss"]
    return dataset_loss(sm, valid, None, batch_size=cfg.batch_size, pad_id=pad_id)


@torch.no_grad()
def dpo_eval(sm: StackedModel, pairs: Sequence, cfg: TrainConfig, pad_id: int) -> dict[str, float]:
    collate = PreferenceCollator(pad_id)
    was = sm.model.training
    sm.model.eval()
    tot: dict[str, float] = {}
    n = 0
    try:
        for s in range(0, len(pairs), cfg.batch_size):
            batch = collate(pairs[s : s + cfg.batch_size])
            _, stats = _dpo_step(sm, batch, cfg.dpo_beta)
            b = len(pairs[s : s + cfg.batch_size])
            for k, v in stats.__dict__.items():
                tot[k] = tot.get(k, 0.0) + v * b
            n += b
    finally:
        sm.model.train(was)
    return {k: v / max(1, n) for k, v in tot.items()}


def _dpo_step(sm: StackedModel, batch: dict[str, torch.Tensor], beta: float):
    dev = sm.device
    ids, mask, labels = (batch[k].to(dev) for k in ("input_ids", "attention_mask", "labels"))
    half = ids.shape[0] // 2
    with torch.no_grad(), sm.without_active():
        ref = sequence_logprobs(sm.model(input_ids=ids, attention_mask=mask).logits, labels)
    pol = sequence_logprobs(sm.model(input_ids=ids, attention_mask=mask).logits, labels)
    return dpo_loss(pol[:half], pol[half:], ref[:half], ref[half:], beta)


def train_round(
    sm: StackedModel,
    data: DomainData,
    cfg: TrainConfig,
    round_index: int,
    nullspace: dict[str, torch.Tensor] | None = None,
    stage: str = "sft",
    pad_id: int = 0,
    progress: bool = True,
) -> RoundResult:
    """Train one new stack for `data.name` (left active: the caller freezes or discards it)."""
    rank, _ = world()
    seed = cfg.seed * 1000 + round_index
    torch.manual_seed(seed)
    params = sm.start_stack(data.name, nullspace)
    opt = make_optimizer(params, cfg.lr, cfg.weight_decay)
    steps = cfg.steps_per_round
    sched = warmup_cosine(opt, steps, int(cfg.warmup_frac * steps), cfg.min_lr_frac)
    collate = PreferenceCollator(pad_id) if stage == "dpo" else Collator(pad_id)
    batches = _batches(data.train, cfg.batch_size, collate, seed)
    start_val = validation_loss(sm, data, cfg, pad_id, stage)
    res = RoundResult(data.name, round_index, start_val, start_val, 0, 0)
    best_state = sm.active_state()
    res.history.append({"step": 0, "train_loss": float("nan"), "val_loss": start_val, "lr": 0.0, "tok_s": 0.0})
    aux_coef = sm.config.aux_loss_coef
    t0 = time.perf_counter()
    tokens, window_loss, window_n = 0, 0.0, 0
    bar = tqdm(total=steps, desc=f"{data.name} r{round_index}", unit="step", disable=not progress or rank != 0,
               dynamic_ncols=True)
    sm.model.train()
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        step_tokens = 0  # answer tokens this rank's loss averaged over, summed over the accumulation
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            if stage == "dpo":
                loss, _ = _dpo_step(sm, batch, cfg.dpo_beta)
            else:
                dev = sm.device
                sums, counts = answer_ce(sm.model, batch["input_ids"].to(dev), batch["attention_mask"].to(dev),
                                         batch["labels"].to(dev))
                loss = sums.sum() / counts.sum().clamp_min(1)
                step_tokens += int(counts.sum())
            total = loss + aux_coef * sm.aux_loss()
            (total / cfg.grad_accum).backward()
            tokens += int(batch["attention_mask"].sum())
            window_loss += float(loss.detach())
            window_n += 1
        # SFT: each rank weighted by its share of the answer tokens, so ranks holding answers of different lengths
        # give one process's token mean; DPO: pairs, one per row, plain average
        average_gradients(params, tokens=None if stage == "dpo" else step_tokens)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        elapsed = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{window_loss / max(1, window_n):.4f}", best=f"{res.best_val:.4f}",
                        tok_s=f"{tokens / max(elapsed, 1e-9):.0f}")
        res.steps = step
        if step % cfg.eval_every == 0 or step == steps:
            val = validation_loss(sm, data, cfg, pad_id, stage)
            sm.model.train()
            res.history.append({"step": step, "train_loss": window_loss / max(1, window_n), "val_loss": val,
                                "lr": sched.get_last_lr()[0], "tok_s": tokens / max(elapsed, 1e-9)})
            window_loss, window_n = 0.0, 0
            if val < res.best_val:
                res.best_val, res.best_step = val, step
                best_state = sm.active_state()
            elif math.isfinite(res.best_val) and val > res.best_val * cfg.spike_factor + 1e-12:
                res.stop_reason = f"validation spike at step {step}: {val:.4f} > {cfg.spike_factor} x best"
                break
            if not math.isfinite(val):
                res.stop_reason = f"non-finite validation loss at step {step}"
                break
    bar.close()
    sm.load_active_state(best_state)
    sm.model.eval()
    res.seconds = time.perf_counter() - t0
    return res


def train_domain(
    sm: StackedModel,
    data: DomainData,
    cfg: TrainConfig,
    nullspace: dict[str, torch.Tensor] | None = None,
    stage: str = "sft",
    pad_id: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DomainResult:
    """Residual boosting for one domain; its kept stacks end up frozen in `sm` (null space folded in)."""
    if data.name not in sm.domains:
        sm.add_domain(data.name)
    before = validation_loss(sm, data, cfg, pad_id, stage)
    result = DomainResult(data.name, stage, before, before)
    prev = before
    max_rounds = 1 if stage == "dpo" else cfg.max_rounds
    for k in range(max_rounds):
        r = train_round(sm, data, cfg, k, nullspace, stage, pad_id, progress)
        improvement = prev - r.best_val
        r.kept = k == 0 or improvement >= cfg.min_improvement
        if r.kept:
            sm.freeze_active()
            prev = r.best_val
        else:
            sm.discard_active()
        result.rounds.append(r)
        log(f"[{data.name}] round {k}: val {r.start_val:.4f} -> {r.best_val:.4f} "
            f"(best at step {r.best_step}/{r.steps}, {r.stop_reason}); {'kept' if r.kept else 'discarded'}")
        if improvement < cfg.min_improvement:
            break
    result.val_after = prev
    return result

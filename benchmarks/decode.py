"""Decode benchmark on the embedded demo's real base: greedy tokens/s, base alone versus routed stacks.

    python -m benchmarks.decode [--quick] [--json PATH] [--bundle DIR]      (also: brainstacks bench decode ...)

Loads a bundle (default: the shipped demo bundle over SmolLM2-135M-Instruct, NF4 base, bf16 stacks) and times
`model.generate` with a KV cache for a fixed number of new tokens (min = max, so every row decodes the same count),
side by side in one process:
  base      every stack off (the NF4 base alone)
  routed    the router's weights for the prompt (as served: min_weight applied), one row per prompt
  all       every stack at weight 1
at batch 1 and batch 8. Reported: decode tokens/s (new tokens over wall time, prefill included) and the ratio of
routed to base time per token. The target row restates issue 11's (routed / base <= 1.3 at batch 1) for reference.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import Target, benchmark_parser, machine_info, print_table, print_targets, write_report

PROMPTS = (
    "What is 17 + 25?",
    "A patient weighs 20 kg. The dose is 5 mg/kg. How many mg?",
    "Anna is older than Ben, and Ben is older than Carl. Who is the youngest?",
    "Write a Python function that returns the factorial of n.",
    "List three fruits as bullets.",
    "Subtract 48 from 230.",
    "Convert 70 kg to lb (1 kg = 2.2 lb).",
    "What number comes next: 3, 6, 12, 24?",
)


def run(bundle: str | None, new_tokens: int, reps: int, batches: tuple[int, ...]) -> tuple[list[dict], list[Target]]:
    from brainstacks.bundle import load_bundle
    from brainstacks.demo import DEMO_BUNDLE
    from brainstacks.text import encode_prompt, pad_batch, render_chat
    from training.losses import routed_weights

    lb = load_bundle(bundle or DEMO_BUNDLE, quantize="nf4")
    sm, tok, model = lb.stacked, lb.base.tokenizer, lb.base.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    results: list[dict] = []
    per_token: dict[tuple[int, str], float] = {}
    for batch in batches:
        texts = [render_chat(tok, [{"role": "user", "content": p}], add_generation_prompt=True)
                 for p in (PROMPTS * batch)[:batch]]
        ids, mask = pad_batch([encode_prompt(tok, t) for t in texts], pad, left=True)
        routed = routed_weights(sm, tok, lb.router, texts)  # (B, D)
        cases = {"base": None, "routed": routed, "all": torch.ones(batch, len(sm.domains))}
        for name, w in cases.items():
            ctx = sm.base_only if w is None else (lambda w=w: sm.routing(w))

            def once(ctx=ctx, ids=ids, mask=mask) -> float:
                t0 = time.perf_counter()
                with torch.no_grad(), ctx():
                    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                   min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
                return time.perf_counter() - t0

            once()  # warm-up
            sec = statistics.median(once() for _ in range(reps))
            per_token[(batch, name)] = sec / new_tokens
            active = 0.0 if w is None else float((w > 0).float().sum(-1).mean())
            results.append({"batch": batch, "case": name, "new_tokens": new_tokens, "seconds": round(sec, 3),
                            "tokens_per_s": round(batch * new_tokens / sec, 1), "mean_active_domains": active})
        for r in results:
            if r["batch"] == batch:
                r["vs_base"] = round(per_token[(batch, r["case"])] / per_token[(batch, "base")], 3)
    ratio1 = per_token[(batches[0], "routed")] / per_token[(batches[0], "base")]
    targets = [Target(f"routed / base time per token, batch {batches[0]} (issue 11)", round(ratio1, 3), "<=", 1.3,
                      "x")]
    return results, targets


def main(argv: list[str] | None = None) -> int:
    p = benchmark_parser("decode", __doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="bundle directory (default: the shipped demo bundle)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    new_tokens, reps = (16, 2) if args.quick else (48, 3)
    results, targets = run(args.bundle, new_tokens, reps, (1, 8))
    print_table(results, ["batch", "case", "new_tokens", "seconds", "tokens_per_s", "vs_base", "mean_active_domains"],
                title="greedy decode on the demo bundle (NF4 base)")
    print_targets(targets)
    if args.json:
        write_report(args.json, "decode", results, targets, machine_info())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Decode benchmark on the embedded demo's real base: greedy tokens/s, base alone versus routed stacks.

    python -m benchmarks.decode [--quick] [--json PATH] [--bundle DIR]      (also: brainstacks bench decode ...)

Loads a bundle (default: the shipped demo bundle over SmolLM2-135M-Instruct, NF4 base, bf16 stacks) and times
`model.generate` with a KV cache for a fixed number of new tokens (min = max, so every row decodes the same count),
side by side in one process:
  base          every stack off (the NF4 base alone)
  2 domains     math 0.7 and medical 0.5 in every row (issue 11's "2 of 5 domains active")
  2 dom, no grp the same, with the shared-input groups off (brainstacks/shared_input.py): what they gain
  routed        the router's weights for the prompt (as served: min_weight applied), one row per prompt; the
                demo's router activates each domain with the domains its stacks were trained on top of
  all           every stack at weight 1
and the same on the fused decode path (brainstacks/fastpath.py, what `brainstacks serve` runs by default):
  fused base / fused 2 domains / fused routed   prefill + greedy decode steps through FusedDecoder
at batch 1 and batch 16 (batch 8 with --quick). Cases are interleaved repetition by repetition, so load from other
processes falls on all of them alike. Reported: decode tokens/s (new tokens over wall time, prefill included) and
each case's time per token over the base's (the eager base for eager cases, the fused base for fused ones).
Targets: issue 11's eager 2 domains / base <= 1.3 at batch 1 and <= 1.2 at the larger batch; issue 18's fused
2 domains / fused base <= 1.2 at both, and eager 2 domains / fused 2 domains (the step's speed-up) >= 4 at both.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import Target, finish, parse_bundle_benchmark

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
    """One row per (batch, case) and the targets."""
    from brainstacks.bundle import load_bundle
    from brainstacks.demo import DEMO_BUNDLE
    from brainstacks.fastpath import FusedDecoder
    from brainstacks.router import route_prompts, weights_for_model
    from brainstacks.text import encode_prompt, pad_batch, render_chat

    lb = load_bundle(bundle or DEMO_BUNDLE, quantize="nf4")
    sm, tok, model = lb.stacked, lb.base.tokenizer, lb.base.model
    fused = FusedDecoder(model, sm)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    results: list[dict] = []
    per_token: dict[tuple[int, str], float] = {}
    for batch in batches:
        texts = [render_chat(tok, [{"role": "user", "content": p}], add_generation_prompt=True)
                 for p in (PROMPTS * batch)[:batch]]
        ids, mask = pad_batch([encode_prompt(tok, t) for t in texts], pad, left=True)
        routed = weights_for_model(sm, lb.router.domains, route_prompts(sm, tok, lb.router, texts))  # (B, D)
        two = torch.zeros(batch, len(sm.domains))
        two[:, 0], two[:, 1] = 0.7, 0.5
        cases = {"base": None, "2 domains": two, "2 dom, no grp": two, "routed": routed,
                 "all": torch.ones(batch, len(sm.domains)), "fused base": None, "fused 2 domains": two,
                 "fused routed": routed}
        prompts = [encode_prompt(tok, t) for t in texts]

        def once(name: str, w, ids=ids, mask=mask, prompts=prompts) -> float:
            if name.startswith("fused"):
                return fused_once(fused, prompts, w, new_tokens)
            sm.share_inputs(name != "2 dom, no grp")
            ctx = sm.base_only() if w is None else sm.routing(w)
            t0 = time.perf_counter()
            with torch.no_grad(), ctx:
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
            return time.perf_counter() - t0

        for name, w in cases.items():
            once(name, w)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(reps):
            for name, w in cases.items():
                times[name].append(once(name, w))
        sm.share_inputs(True)
        for name, w in cases.items():
            sec = statistics.median(times[name])
            per_token[(batch, name)] = sec / new_tokens
            active = 0.0 if w is None else float((w > 0).float().sum(-1).mean())
            results.append({"batch": batch, "case": name, "kernel": fused.kernel if name.startswith("fused") else
                            "bitsandbytes", "new_tokens": new_tokens, "seconds": round(sec, 3),
                            "tokens_per_s": round(batch * new_tokens / sec, 1), "mean_active_domains": active})
        for r in results:
            if r["batch"] == batch:
                base = "fused base" if r["case"].startswith("fused") else "base"
                r["vs_base"] = round(per_token[(batch, r["case"])] / per_token[(batch, base)], 3)
    targets = [Target(f"2 of {len(sm.domains)} domains / base time per token, batch {b} (issue 11)",
                      round(per_token[(b, "2 domains")] / per_token[(b, "base")], 3), "<=", goal, "x")
               for b, goal in zip(batches, (1.3, 1.2), strict=True)]
    targets += [Target(f"fused: 2 domains / base time per token, batch {b} (issue 18)",
                       round(per_token[(b, "fused 2 domains")] / per_token[(b, "fused base")], 3), "<=", 1.2, "x")
                for b in batches]
    targets += [Target(f"eager / fused time per token, 2 domains, batch {b} (issue 18)",
                       round(per_token[(b, "2 domains")] / per_token[(b, "fused 2 domains")], 3), ">=", 4.0, "x")
                for b in batches]
    return results, targets


def fused_once(dec, prompts: list[list[int]], w, new_tokens: int) -> float:
    """Seconds for a prefill and new_tokens - 1 greedy decode steps through the fused decoder."""
    t0 = time.perf_counter()
    R = dec.routing(w)
    kv, logits = dec.prefill(prompts, R)
    for _ in range(new_tokens - 1):
        logits = dec.decode(logits.argmax(-1), kv, R)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_bundle_benchmark("decode", __doc__.split("\n\n")[0], argv)
    new_tokens, reps, batches = (16, 2, (1, 8)) if args.quick else (32, 3, (1, 16))
    results, targets = run(args.bundle, new_tokens, reps, batches)
    return finish(args, "decode", results, targets,
                  ["batch", "case", "kernel", "new_tokens", "seconds", "tokens_per_s", "vs_base",
                   "mean_active_domains"], title="greedy decode on the demo bundle (NF4 base)")


if __name__ == "__main__":
    raise SystemExit(main())

"""The fused decoder's linear kernels side by side on this machine: speed and agreement with float32.

    python -m benchmarks.kernels [--quick] [--json PATH] [--bundle DIR] [--threads N]
                                                          (also: brainstacks bench kernels ...)

`FusedDecoder` picks its kernel by the CPU (brainstacks.fastpath.pick_kernel): oneDNN's prepacked bf16 where the
CPU has AVX512-BF16 or AMX, float32 elsewhere. This benchmark builds one decoder per kernel this CPU can run
("fp32" always, "mkldnn-bf16" where oneDNN accepts it; the plain "bf16" kernel is CUDA's and is emulated, slowly, on
a CPU) over the same bundle (default: the shipped demo) and, in one run:
  speed      routed greedy decode of benchmarks.decode's prompts (chat-rendered, the router's weights), prefill
             included, at batch 1 and 16 (8 with --quick); kernels interleaved repetition by repetition
  agreement  each kernel teacher-forced on the float32 kernel's greedy tokens (48 of them, 24 with --quick):
             the share of positions whose top-1 token matches, and the relative logit error (max |diff| over
             max |logit| per position), median and worst; the texts that differ under free greedy decoding
Targets: the picked kernel's top-1 agreement with float32 >= 0.98, and its speed >= float32's (it is picked for it).
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.common import Target, finish, parse_bundle_benchmark
from benchmarks.decode import PROMPTS, fused_once


def available_kernels() -> list[str]:
    from brainstacks.fastpath import pick_kernel

    picked = pick_kernel(torch.device("cpu"))
    return ["fp32"] + ([picked] if picked != "fp32" else [])


def greedy_logits(dec, prompts, w, n: int, forced: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (n, B), logits (n, B, V)) of n greedy steps; with `forced`, each step is fed forced's tokens."""
    R = dec.routing(w)
    kv, logits = dec.prefill(prompts, R)
    toks, out = [logits.argmax(-1)], [logits]
    for t in range(n - 1):
        logits = dec.decode(toks[-1] if forced is None else forced[t], kv, R)
        toks.append(logits.argmax(-1))
        out.append(logits)
    return torch.stack(toks), torch.stack(out)


def run(bundle: str | None, batches: tuple[int, ...], new_tokens: int, reps: int, agree_tokens: int
        ) -> tuple[list[dict], list[Target]]:
    from brainstacks.bundle import load_bundle
    from brainstacks.demo import DEMO_BUNDLE
    from brainstacks.fastpath import FusedDecoder
    from brainstacks.router import route_prompts, weights_for_model
    from brainstacks.text import encode_prompt, render_chat

    lb = load_bundle(bundle or DEMO_BUNDLE, quantize="nf4")
    sm, tok, model = lb.stacked, lb.base.tokenizer, lb.base.model
    kernels = available_kernels()
    decs = {k: FusedDecoder(model, sm, kernel=k) for k in kernels}
    texts = [render_chat(tok, [{"role": "user", "content": p}], add_generation_prompt=True) for p in PROMPTS]
    prompts = [encode_prompt(tok, t) for t in texts]
    w = weights_for_model(sm, lb.router.domains, route_prompts(sm, tok, lb.router, texts))
    rows: list[dict] = []
    ref_toks, ref_logits = greedy_logits(decs["fp32"], prompts, w, agree_tokens)
    agreement: dict[str, float] = {}
    for k, dec in decs.items():
        _, lg = greedy_logits(dec, prompts, w, agree_tokens, forced=ref_toks)
        rel = (lg - ref_logits).abs().amax(-1) / ref_logits.abs().amax(-1)
        agreement[k] = float((lg.argmax(-1) == ref_toks).float().mean())
        free, _ = greedy_logits(dec, prompts, w, agree_tokens)
        differ = sum(tok.decode(free[:, i]) != tok.decode(ref_toks[:, i]) for i in range(len(prompts)))
        rows.append({"kernel": k, "measure": "agreement", "top1_agreement": round(agreement[k], 4),
                     "rel_err_median": float(f"{float(rel.median()):.3g}"),
                     "rel_err_max": float(f"{float(rel.max()):.3g}"),
                     "texts_differing": f"{differ}/{len(prompts)}"})
    speed: dict[tuple[int, str], float] = {}
    for batch in batches:
        P, W = (prompts * batch)[:batch], w.repeat((batch + len(prompts) - 1) // len(prompts), 1)[:batch]
        for dec in decs.values():
            fused_once(dec, P, W, 8)  # warm-up
        times: dict[str, list[float]] = {k: [] for k in decs}
        for _ in range(reps):
            for k, dec in decs.items():
                times[k].append(fused_once(dec, P, W, new_tokens))
        for k in decs:
            speed[(batch, k)] = batch * new_tokens / statistics.median(times[k])
            rows.append({"kernel": k, "measure": f"batch {batch}", "tokens_per_s": round(speed[(batch, k)], 1),
                         "vs_fp32": round(speed[(batch, k)] / speed[(batch, "fp32")], 2)})
    picked = kernels[-1]
    targets = [Target(f"picked kernel ({picked}): top-1 agreement with fp32", round(agreement[picked], 4), ">=",
                      0.98)]
    targets += [Target(f"picked kernel ({picked}) / fp32 tokens/s, batch {b}",
                       round(speed[(b, picked)] / speed[(b, "fp32")], 2), ">=", 1.0, "x") for b in batches]
    return rows, targets


def main(argv: list[str] | None = None) -> int:
    args = parse_bundle_benchmark("kernels", __doc__.split("\n\n")[0], argv)
    batches, new_tokens, reps, agree = ((1, 8), 16, 2, 24) if args.quick else ((1, 16), 32, 3, 48)
    rows, targets = run(args.bundle, batches, new_tokens, reps, agree)
    return finish(args, "kernels", rows, targets,
                  ["kernel", "measure", "tokens_per_s", "vs_fp32", "top1_agreement", "rel_err_median",
                   "rel_err_max", "texts_differing"], title="fused decoder kernels on this CPU (demo bundle)")


if __name__ == "__main__":
    raise SystemExit(main())

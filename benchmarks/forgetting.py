"""Null space on the real base: the forgetting table, the analogue of the paper's Table 3 (issue 13 item 2).

    python -m benchmarks.forgetting [--quick] [--threads 1] [--json PATH]   (brainstacks bench forgetting ...)

Three demo domains in curriculum order (math, medical, reasoning; training/demo generators) on SmolLM2-135M-Instruct
(NF4, the demo bundle's base). Math is trained once (it has no earlier domain, so no null space) and its frozen
stack is shared by every setting; then medical and reasoning are trained in order under each setting: no
projection, and the null-space projection (brainstacks/nullspace.py) with two or more (samples, directions)
choices. After each new domain, the ungated validation loss (every stack on at weight 1, what the training loop
measures) of every domain so far. Forgetting of a domain = its loss now - its loss right after it was trained.

Two diagnostics explain what the projection can and cannot do:
- fold residual: ||V^T B|| / ||B|| of each new stack once frozen, in float32 and in bfloat16 (StackConfig.
  frozen_dtype): the fold removes span(V) from the stack's outputs exactly up to the storage dtype's rounding.
- overlap: the share of the new stack's B (its output directions) that lies in span(V) when trained without the
  projection. The projection only ever removes that share; forgetting caused by the rest (the new stack's output on
  earlier domains' inputs in the other directions, and what that does downstream) it leaves untouched.

`--tiny` runs the same code on a tiny random base (tests). Results: docs/SCIENCE.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks.common import Target, benchmark_parser, machine_info, print_table, print_targets, write_report
from benchmarks.table1 import base_ref, domain_data
from brainstacks.config import StackConfig
from training.config import TrainConfig

DOMAINS = ("math", "medical", "reasoning")


def sizes(quick: bool, tiny: bool) -> dict:
    if tiny:
        return dict(steps=3, eval_every=3, batch=4, seq=32, n_train=24, n_valid=8, settings=((8, 4),))
    if quick:
        return dict(steps=24, eval_every=8, batch=4, seq=128, n_train=192, n_valid=16, settings=((32, 8), (128, 64)))
    return dict(steps=96, eval_every=16, batch=4, seq=128, n_train=512, n_valid=24,
                settings=((64, 16), (400, 64), (400, 192)))


def _leak(V: torch.Tensor, B: torch.Tensor) -> float:
    B = B.float()
    return float((V.T.float() @ B).norm() / B.norm().clamp_min(1e-30))


def stack_diagnostics(sm, V_diag: dict[str, torch.Tensor] | None) -> dict[str, float]:
    """Of the active stack, before it freezes: the fold residual in fp32 and bf16 (when trained with a null space)
    and the overlap of its B with span(V_diag) (the directions the projection would remove), medians over layers."""
    fp32, bf16, overlap = [], [], []
    for path, m in sm.active_modules().items():
        if m.V is not None:
            fp32.append(_leak(m.V, m.frozen_tensors(torch.float32)["B"]))
            bf16.append(_leak(m.V, m.frozen_tensors(torch.bfloat16)["B"]))
        if V_diag and path in V_diag:
            overlap.append(_leak(V_diag[path], m.B.detach()))
    med = lambda xs: float(torch.tensor(xs).median()) if xs else None  # noqa: E731
    mx = lambda xs: float(max(xs)) if xs else None  # noqa: E731
    return {"fold_residual_fp32_max": mx(fp32), "fold_residual_bf16_median": med(bf16),
            "fold_residual_bf16_max": mx(bf16), "overlap_median": med(overlap)}


def run_setting(ref, sc: StackConfig, cfg: TrainConfig, data: dict, math_stack: dict, math_own: float,
                ns: tuple[int, int] | None, diag_ns: tuple[int, int], log=print) -> dict:
    """Medical then reasoning on top of the shared math stack, with the projection `ns` = (samples, directions) or
    none; the ungated loss table after each domain and each new stack's diagnostics."""
    from brainstacks.base import load_base
    from brainstacks.nullspace import collect_directions
    from brainstacks.stacks import StackedModel
    from training.boosting import train_round, validation_loss
    from training.curriculum import nullspace_batches
    from training.tokenization import pad_id_of

    lb = load_base(ref, quantize="nf4", for_training=True)
    pad = pad_id_of(lb.tokenizer)
    sm = StackedModel(lb.model, sc)
    sm.add_domain("math")
    sm.attach_stack("math", math_stack)
    own = {"math": math_own}
    rows, diags = [], []
    for d in DOMAINS[1:]:
        earlier = [data[e] for e in sm.domains]
        samples, k = ns or diag_ns
        V = collect_directions(sm, nullspace_batches(earlier, samples, cfg.batch_size, pad), samples, k,
                               seed=cfg.seed)
        sm.add_domain(d)
        r = train_round(sm, data[d], cfg, 0, V if ns else None, pad_id=pad, progress=False)
        diags.append({"domain": d, **stack_diagnostics(sm, V)})
        sm.freeze_active()
        own[d] = r.best_val
        losses = {e: validation_loss(sm, data[e], cfg, pad, "sft") for e in sm.domains}
        rows.append({"after": d, **losses, **{f"forget_{e}": losses[e] - own[e] for e in sm.domains if e != d}})
        log(f"[{'off' if ns is None else f'{ns[0]}x{ns[1]}'}] after {d}: "
            + "  ".join(f"{e} {v:.4f}" for e, v in losses.items()))
    return {"null_space": "off" if ns is None else {"samples": ns[0], "directions": ns[1]}, "own": own,
            "after": rows, "stacks": diags}


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("forgetting", __doc__)
    parser.add_argument("--work", default="out/bench_forgetting", help="scratch directory")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--steps", type=int, default=None, help="override the steps per domain")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--tiny", action="store_true", help="a tiny random base (tests)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from brainstacks.base import load_base
    from brainstacks.stacks import StackedModel
    from training.boosting import train_round
    from training.tokenization import pad_id_of

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    z = sizes(args.quick, args.tiny)
    if args.steps:
        z["steps"] = args.steps
    ref, base_kind = base_ref(args.tiny, work)
    cfg = TrainConfig(steps_per_round=z["steps"], max_rounds=1, lr=args.lr, batch_size=z["batch"], seq_len=z["seq"],
                      eval_every=z["eval_every"], max_eval_batches=z["n_valid"] // z["batch"], seed=0)
    sc = StackConfig(experts=4, top_k=2, rank=8, alpha=16.0)  # frozen_dtype: the default, bfloat16
    t0 = time.perf_counter()
    lb = load_base(ref, quantize="nf4", for_training=True)
    data = {d: domain_data(d, lb.tokenizer, z["n_train"], z["n_valid"], z["seq"]) for d in DOMAINS}
    sm = StackedModel(lb.model, sc)
    sm.add_domain("math")
    math_round = train_round(sm, data["math"], cfg, 0, pad_id=pad_id_of(lb.tokenizer), progress=False)
    sm.freeze_active()
    math_stack = sm.stack_tensors("math", 0)
    print(f"math: {math_round.start_val:.4f} -> {math_round.best_val:.4f}", flush=True)
    del sm, lb
    settings = [None, *z["settings"]]
    runs = [run_setting(ref, sc, cfg, data, math_stack, math_round.best_val, ns, z["settings"][-1])
            for ns in settings]
    table = [{"null_space": r["null_space"] if r["null_space"] == "off"
              else f"{r['null_space']['samples']} x {r['null_space']['directions']}", **row}
             for r in runs for row in r["after"]]
    title = (f"ungated validation loss after each domain ({base_kind}, {cfg.steps_per_round} steps/domain, "
             f"lr {cfg.lr:g}, MoE-LoRA 4 x r{sc.rank} top-{sc.top_k}; null space: samples x directions)")
    print_table(table, ["null_space", "after", *DOMAINS, *(f"forget_{d}" for d in DOMAINS[:-1])], title=title)
    diag = [{"null_space": t["null_space"], **s} for r, t in zip(runs, table[::2], strict=True) for s in r["stacks"]]
    print_table(diag, title="new stacks: fold residual ||V^T B||/||B|| (fp32, bf16) and overlap with span(V)")
    off_final = runs[0]["after"][-1]
    total_forget = lambda row: sum(v for k, v in row.items() if k.startswith("forget_"))  # noqa: E731
    summary = {"base": base_kind, "steps": cfg.steps_per_round, "lr": cfg.lr, "rank": sc.rank,
               "math_own": math_round.best_val, "forgetting_after_last": {
                   t["null_space"]: total_forget(r["after"][-1]) for r, t in zip(runs, table[1::2], strict=True)},
               "seconds": time.perf_counter() - t0}
    print_table([{"setting": k, "summed forgetting after reasoning": v}
                 for k, v in summary["forgetting_after_last"].items()], title="summary")
    fp32 = max((s["fold_residual_fp32_max"] or 0.0) for r in runs[1:] for s in r["stacks"])
    bf16 = max((s["fold_residual_bf16_max"] or 0.0) for r in runs[1:] for s in r["stacks"])
    best_on = min(total_forget(r["after"][-1]) for r in runs[1:])
    targets = [Target("fold residual, frozen_dtype float32 (max over layers)", fp32, "<=", 1e-5, ""),
               Target("fold residual, frozen_dtype bfloat16 (max over layers)", bf16, "<=", 1e-2, ""),
               Target("summed forgetting after the last domain: best null space - none", best_on -
                      total_forget(off_final), "<=", 0.0, "nats")]
    print_targets(targets)
    if args.json:
        write_report(args.json, "forgetting", results=[{"summary": summary}, {"table": table}, {"stacks": diag},
                                                       {"runs": runs}], targets=targets, machine=machine_info())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

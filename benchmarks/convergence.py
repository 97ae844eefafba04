"""Convergence benchmark: the paper's Table 1 at small scale, plus residual boosting and null-space forgetting.

    python -m benchmarks.convergence [--quick] [--json PATH]      (also: brainstacks bench convergence ...)

1. MoE-LoRA (4 experts × r16, top-2) against a parameter-matched single LoRA (r64: one expert, no gate), same
   data, same batches in the same order, same steps and learning rate, trained in lockstep (one step of each in
   turn, so both see the same machine load). Reported: each one's validation curve and final loss, the step at
   which MoE-LoRA first reaches the single LoRA's final validation loss (paper: 160 of 400, 2.5×), and wall-clock
   per step (median; paper: MoE 2× slower; target here ≤ 1.3×).
2. Residual boosting: a second stack on top of the first (same domain) — the validation gain over one stack.
3. Ungated forgetting: after training domain A (math), train domain B (medical) with and without the null space;
   A's validation loss with every stack on, before and after B.
The base is a tiny random Llama (the absolute losses mean little; the ratios still compare the methods); the
figures in docs/BENCHMARKS.md were measured on the former demo's 4M-parameter pretrained base (`brainstacks
pretrain`). Data: the demo generators (training/demo), so nothing is downloaded. On the real base (SmolLM2-135M,
the demo bundle's): benchmarks/table1.py (1, with a learning-rate sweep per method) and benchmarks/forgetting.py
(3, three domains, several null-space sizes); results in docs/SCIENCE.md.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import Target, benchmark_parser, machine_info, print_table, print_targets, write_report
from brainstacks.base import load_base
from brainstacks.config import StackConfig
from brainstacks.nullspace import collect_directions
from brainstacks.stacks import StackedModel
from training.boosting import train_domain, validation_loss
from training.config import TrainConfig
from training.curriculum import nullspace_batches
from training.data_files import Record
from training.demo.sampling import generate
from training.schedule import make_optimizer, warmup_cosine
from training.tokenization import Collator, DomainData, pad_id_of, tokenize_records


def base_dir(work: Path) -> tuple[Path, str]:
    from brainstacks.tiny_models import tiny_base

    return tiny_base(work / "tiny", hidden=256, layers=4, intermediate=704, heads=4, kv_heads=2), "tiny random base"


def domain_data(name: str, tokenizer, n_train: int, n_valid: int, seq_len: int) -> DomainData:
    def recs(split: str, n: int) -> list[Record]:
        rows = generate(name, split, n, seed=0, completions=False)  # chat exchanges only
        return [Record(Path(f"<{name}:{split}>"), i + 1, r) for i, r in enumerate(rows)]

    tr, va = recs("train", n_train), recs("valid", n_valid)
    fmt = "messages"  # every demo domain is chat exchanges
    return DomainData(name, fmt, tokenize_records(tokenizer, tr, fmt, seq_len),
                      tokenize_records(tokenizer, va, fmt, seq_len),
                      tr, va)


def lockstep(path: Path, data: DomainData, cfg: TrainConfig, configs: dict[str, StackConfig]) -> dict[str, dict]:
    """Train one stack per config on the same batches, alternating steps; validation curves and step times."""
    runs = {}
    for name, sc in configs.items():
        lb = load_base(path, quantize="nf4", for_training=True)
        sm = StackedModel(lb.model, sc)
        sm.add_domain(data.name)
        torch.manual_seed(cfg.seed)
        params = sm.start_stack(data.name)
        opt = make_optimizer(params, cfg.lr)
        runs[name] = {"sm": sm, "opt": opt, "sched": warmup_cosine(opt, cfg.steps_per_round,
                                                                 int(cfg.warmup_frac * cfg.steps_per_round),
                                                                 cfg.min_lr_frac),
                      "times": [], "curve": [], "params": sum(p.numel() for p in params), "tok": lb.tokenizer}
    pad = pad_id_of(next(iter(runs.values()))["tok"])
    collate = Collator(pad)
    rng = random.Random(cfg.seed)
    order = list(range(len(data.train)))
    for r in runs.values():
        r["curve"].append((0, validation_loss(r["sm"], data, cfg, pad, "sft")))
    for step in range(1, cfg.steps_per_round + 1):
        idx = [order[rng.randrange(len(order))] for _ in range(cfg.batch_size)]
        batch = collate([data.train[i] for i in idx])
        for r in runs.values():
            sm = r["sm"]
            sm.model.train()
            t0 = time.perf_counter()
            loss = sm.model(**batch).loss + sm.config.aux_loss_coef * sm.aux_loss()
            r["opt"].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in r["opt"].param_groups for p in g["params"]], cfg.grad_clip)
            r["opt"].step()
            r["sched"].step()
            r["times"].append(time.perf_counter() - t0)
            if step % cfg.eval_every == 0 or step == cfg.steps_per_round:
                r["curve"].append((step, validation_loss(sm, data, cfg, pad, "sft")))
    return runs


def steps_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    return next((s for s, v in curve if v <= level), None)


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("convergence", __doc__)
    parser.add_argument("--work", default="out/bench_convergence", help="scratch directory")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path, base_kind = base_dir(work)
    steps = 40 if args.quick else 300
    cfg = TrainConfig(steps_per_round=steps, max_rounds=2, min_improvement=0.0, lr=2e-3, batch_size=8, seq_len=64,
                      eval_every=max(5, steps // 12), max_eval_batches=4, seed=0)
    tok = load_base(path, quantize="none").tokenizer
    n_train = 320 if args.quick else 2000
    math_data = domain_data("math", tok, n_train, 48, cfg.seq_len)
    med_data = domain_data("medical", tok, n_train, 48, cfg.seq_len)

    # 1. MoE-LoRA vs parameter-matched single LoRA
    configs = {"moe 4x r16": StackConfig(experts=4, top_k=2, rank=16, alpha=16),
               "lora r64": StackConfig(experts=1, top_k=1, rank=64, alpha=16)}
    runs = lockstep(path, math_data, cfg, configs)
    moe, lora = runs["moe 4x r16"], runs["lora r64"]
    lora_final = lora["curve"][-1][1]
    reach = steps_to_reach(moe["curve"], lora_final)
    t_moe, t_lora = statistics.median(moe["times"]), statistics.median(lora["times"])
    rows = [{"run": name, "params": r["params"], "final_val": r["curve"][-1][1],
             "best_val": min(v for _, v in r["curve"]),
             "ms_per_step": statistics.median(r["times"]) * 1e3} for name, r in runs.items()]
    print_table(rows, title=f"MoE-LoRA vs single LoRA on math ({base_kind}, {steps} steps, lockstep)")
    curve_rows = [{"step": s, "moe_val": v, "lora_val": lv}
                  for (s, v), (_, lv) in zip(moe["curve"], lora["curve"], strict=True)]
    print_table(curve_rows, title="validation curves")

    # 2. residual boosting: a second round on top of the first MoE stack
    sm = moe["sm"]
    sm.freeze_active()
    one_stack = validation_loss(sm, math_data, cfg, pad_id_of(tok), "sft")
    boost_cfg = TrainConfig(**{**cfg.__dict__, "max_rounds": 1})
    from training.boosting import train_round

    r2 = train_round(sm, math_data, boost_cfg, 1, progress=False)
    sm.freeze_active()
    two_stacks = r2.best_val

    # 3. ungated forgetting of math while training medical, null space on vs off
    forgetting = {}
    for ns in (False, True):
        lb = load_base(path, quantize="nf4", for_training=True)
        s2 = StackedModel(lb.model, StackConfig(experts=4, top_k=2, rank=16, alpha=16))
        for d, t in ((d, sm.stack_tensors(d, k)) for d, k in sm.stacks):
            if d not in s2.domains:
                s2.add_domain(d)
            s2.attach_stack(d, t)
        before = validation_loss(s2, math_data, cfg, pad_id_of(tok), "sft")
        V = collect_directions(s2, nullspace_batches([math_data], 64, 8, pad_id_of(tok)), 64, 16) if ns else None
        train_domain(s2, med_data, TrainConfig(**{**cfg.__dict__, "max_rounds": 1}), V, progress=False,
                     log=lambda _: None)
        after = validation_loss(s2, math_data, cfg, pad_id_of(tok), "sft")
        forgetting["on" if ns else "off"] = {"math_before": before, "math_after_medical": after,
                                             "forgetting": after - before}
    f_rows = [{"null_space": k, **v} for k, v in forgetting.items()]
    print_table([{"stacks": 1, "val": one_stack}, {"stacks": 2, "val": two_stacks}], title="residual boosting (math)")
    print_table(f_rows, title="ungated forgetting of math after training medical")

    results = rows + [{"curve": curve_rows}, {"boosting": {"one_stack": one_stack, "two_stacks": two_stacks,
                                                           "gain": one_stack - two_stacks}},
                      {"forgetting": forgetting}, {"base": base_kind, "steps": steps}]
    targets = [
        Target("MoE-LoRA / single LoRA wall-clock per step", t_moe / t_lora, "<=", 1.3, "x"),
        Target("steps for MoE-LoRA to reach LoRA's final val loss, as a share of LoRA's steps",
               (reach / steps) if reach else None, "<=", 1.0, "fraction"),
    ]
    print_targets(targets)
    if args.json:
        write_report(args.json, "convergence", results=results, targets=targets, machine=machine_info())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

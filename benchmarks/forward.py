"""Forward benchmark: what the fused routed forward costs over the base, and how it compares to a per-stack loop.

    python -m benchmarks.forward [--quick] [--json PATH]        (also: brainstacks bench forward ...)

Cases, each timed as the median of repeated calls in one process, side by side:
  base       the base projection/model alone (stacks off)
  routed     fused forward, 10 frozen stacks over 5 domains, 2 domains active (weights differ per row)
  all        fused forward, all 10 stacks weighted (as in training, ungated)
  reference  one stack at a time, experts through einsum, as the paper's code does (all 10 stacks weighted)
Shapes: decode (1 token a sequence, batch 1 and 8) and one 256-token prefill (batch 1).
Sizes: a single TinyLlama-size projection (2048→2048 and 2048→5632) with fp32, bf16 and nf4 bases, and a whole
small Llama (hidden 512, 8 layers) with an nf4 base and bf16 stacks. Targets (docs/DESIGN.md §7: ratios in one run) are
checked against the worst case of decode batch 1 and 8.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.common import Target, benchmark_parser, machine_info, print_table, print_targets, write_report
from brainstacks.base import quantize_targets
from brainstacks.config import StackConfig
from brainstacks.reference import reference_forward
from brainstacks.stacks import StackedModel
from brainstacks.tiny_models import add_random_stacks

DOMAINS = 5
STACKS_PER_DOMAIN = 2  # 10 stacks
ACTIVE = (1, 3)  # domains with weight in the routed case


DEVICE = "cpu"


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], min_time: float, max_reps: int = 200) -> float:
    """Median seconds per call after warm-up, repeating until `min_time` has passed (at least 5 calls)."""
    for _ in range(2):
        fn()
    _sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fill_stacks(sm: StackedModel, dtype: str, seed: int = 0) -> None:
    """DOMAINS domains d0, d1, ... of STACKS_PER_DOMAIN random frozen stacks each."""
    add_random_stacks(sm, {f"d{d}": STACKS_PER_DOMAIN for d in range(DOMAINS)}, seed=seed, dtype=dtype, std=0.01)


def routed_weights(rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rows)
    w = torch.zeros(rows, DOMAINS)
    for d in ACTIVE:
        w[:, d] = 0.2 + 0.8 * torch.rand(rows, generator=g)
    return w


class OneProjection(nn.Module):
    def __init__(self, d_in: int, d_out: int, name: str):
        super().__init__()
        self.add_module(name, nn.Linear(d_in, d_out, bias=False))
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.name)(x)


def bench_projection(d_in: int, d_out: int, base_kind: str, quick: bool) -> list[dict]:
    name = "q_proj" if d_out == d_in else "up_proj"
    torch.manual_seed(0)
    model = OneProjection(d_in, d_out, name).eval()  # as served
    compute = torch.float32 if base_kind == "fp32" else torch.bfloat16
    if base_kind == "nf4":
        quantize_targets(model, "nf4", compute, DEVICE, (name,))
    else:
        model.to(compute)
    model.to(DEVICE)
    stack_dtype = "float32" if base_kind == "fp32" else "bfloat16"
    sm = StackedModel(model, StackConfig(targets=(name,), frozen_dtype=stack_dtype))
    fill_stacks(sm, stack_dtype)
    min_time = 0.3 if quick else 1.0
    rows = []
    shapes = [("decode", 1, 1), ("decode", 8, 1), ("prefill", 1, 256)]
    for phase, batch, tokens in shapes:
        x = torch.randn(batch, tokens, d_in, dtype=compute, device=DEVICE)
        res = time_cases(sm, functools.partial(model, x), batch, min_time)
        for case, sec in res.items():
            rows.append({"size": f"proj {d_in}->{d_out}", "base": base_kind, "phase": phase, "batch": batch,
                         "tokens": tokens, "case": case, "ms": sec * 1e3, "x_base": sec / res["base"]})
    return rows


def time_cases(sm: StackedModel, call: Callable[[], object], batch: int, min_time: float,
               ref_reps: int = 200) -> dict[str, float]:
    """Seconds per call of `call` under each case: base, routed (2 of 5 domains), all (ungated), reference loop."""
    res = {}
    with torch.inference_mode():
        with sm.base_only():
            res["base"] = timeit(call, min_time)
        with sm.routing(routed_weights(batch)):
            res["routed"] = timeit(call, min_time)
        with sm.routing(None):
            res["all"] = timeit(call, min_time)
            with reference_forward(sm):
                res["reference"] = timeit(call, min_time, max_reps=ref_reps)
    return res


def make_step(model: nn.Module, ids: torch.Tensor, prefix: int, cache, phase: str) -> Callable[[], None]:
    """One decode step on a `prefix`-token KV cache (cropped back after each call), or a prefill of the rest."""
    def step() -> None:
        if phase == "prefill":
            model(ids[:, prefix:])
        else:
            model(ids[:, prefix:], cache=cache)
            cache.crop(-(ids.shape[1] - prefix))

    return step


def bench_model(quick: bool) -> list[dict]:
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).eval()
    compute = torch.bfloat16 if DEVICE.startswith("cuda") else torch.float32
    model.to(compute)
    quantize_targets(model, "nf4", compute, DEVICE)
    model.to(DEVICE)
    sm = StackedModel(model, StackConfig(frozen_dtype="bfloat16"))
    fill_stacks(sm, "bfloat16")
    min_time = 0.5 if quick else 2.0
    rows = []
    for phase, batch, tokens in [("decode", 1, 1), ("decode", 8, 1), ("prefill", 1, 256)]:
        prefix = 64
        ids = torch.randint(0, cfg.vocab_size, (batch, prefix + tokens), device=DEVICE)
        with torch.inference_mode(), sm.base_only():
            cache = DynamicCache(config=cfg)
            model(ids[:, :prefix], cache=cache)
        res = time_cases(sm, make_step(model, ids, prefix, cache, phase), batch, min_time, ref_reps=50)
        for case, sec in res.items():
            rows.append({"size": "model 512x8L", "base": "nf4", "phase": phase, "batch": batch, "tokens": tokens,
                         "case": case, "ms": sec * 1e3, "x_base": sec / res["base"]})
    return rows


def pick(rows: list[dict], **kw) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in kw.items())]


def targets_from(rows: list[dict]) -> list[Target]:
    dec = [r for r in rows if r["phase"] == "decode"]
    model_dec = [r for r in dec if r["size"].startswith("model")]
    speedups = []
    for b in (1, 8):
        ref = pick(model_dec, batch=b, case="reference")
        fused = pick(model_dec, batch=b, case="all")
        if ref and fused:
            speedups.append(ref[0]["ms"] / fused[0]["ms"])
    proj_routed = [r["x_base"] for r in dec
                   if r["size"].startswith("proj") and r["base"] == "nf4" and r["case"] == "routed"]
    model_routed = [r["x_base"] for r in model_dec if r["case"] == "routed"]
    return [
        Target("whole model decode, 10 stacks weighted: reference / fused", min(speedups) if speedups else None, ">=",
               3.0, "x"),
        Target("TinyLlama projection decode, nf4 base, 2/5 domains: routed / base",
               max(proj_routed) if proj_routed else None, "<=", 1.3, "x"),
        Target("whole model decode, nf4 base, 2/5 domains: routed / base",
               max(model_routed) if model_routed else None, "<=", 2.0, "x"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("forward", __doc__)
    parser.add_argument("--only", choices=["proj", "model"], default=None, help="run one size only")
    parser.add_argument("--bases", default="fp32,bf16,nf4", help="projection base kinds to run (comma list)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default). On a shared machine use 1: a 2-thread op "
                             "waits for a descheduled second thread (~7 ms stalls per op were measured under load)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = args.device
    rows: list[dict] = []
    if args.only in (None, "proj"):
        for base_kind in args.bases.split(","):
            for d_in, d_out in ((2048, 2048), (2048, 5632)):
                rows += bench_projection(d_in, d_out, base_kind, args.quick)
                print_table(rows[-12:], title=f"projection {d_in}->{d_out}, {base_kind} base")
    if args.only in (None, "model"):
        rows += bench_model(args.quick)
        print_table(rows[-12:], title="whole model")
    targets = targets_from(rows)
    print_targets(targets)
    if args.json:
        write_report(args.json, "forward", results=rows, targets=targets, machine=machine_info())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""TTFT benchmark (issue 11): what routing costs in the time to first token, on the demo bundle, through the engine.

    python -m benchmarks.ttft [--quick] [--json PATH] [--bundle DIR] [--threads N] [--device cpu|cuda]
                              [--router-tokens N]

In one process: the server's own runner (server.loading.load_runner, NF4 base) and Engine (model thread), no HTTP.
Each request asks for 1 token, alone on an idle engine; TTFT is submit -> first token event. For prompts of 32 and
256 tokens (windows of the hand-written prompts' chat renderings, a distinct window per repetition, so the router's
prompt cache misses), side by side, repetition by repetition:
  routed     weights None: the engine routes (one base-only pass over the first router_tokens ids), then prefills
  forced     the same prompt with the weights given (a request's `weights` / model "brainstacks:<domain>"): prefill
  cached     the routed request again: the router's LRU cache (keyed by the first router_tokens ids) hits
Routing's share of TTFT = (routed - forced) / routed, medians over repetitions.

Options measured alongside (docs/BENCHMARKS.md says which was chosen and why):
  fewer tokens  the router pass alone at router_tokens 128 (served), 64 and 32, and hand-written top-1 at each
                (tests/data/handwritten_prompts.jsonl, chat-rendered as the demo evaluates them; and "long": 4
                prompts of one domain in one message, so that truncation cuts into them)
  batching      the router pass over 4 prompts at once, per prompt, against one prompt alone
Fewer layers is not measurable without retraining: the router reads the middle and the final layer's hidden states.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import threading
import time
from pathlib import Path

import torch

from benchmarks.common import Target, benchmark_parser, machine_info, print_table, print_targets, write_report

HANDWRITTEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "handwritten_prompts.jsonl"
LENGTHS = (32, 256)


def _ttft(engine, ids: list[int], weights: dict | None) -> float:
    from server.genrequest import GenRequest
    from server.sampling import SamplingParams

    got = threading.Event()
    errors: list[str] = []

    def sink(ev) -> None:
        if ev.kind == "error":
            errors.append(ev.message)
            got.set()
        elif ev.kind == "token":
            got.set()

    t0 = time.perf_counter()
    engine.submit(GenRequest(f"ttft-{t0}", ids, SamplingParams(max_tokens=1, temperature=0.0), sink,
                             weights=None if weights is None else dict(weights)))
    if not got.wait(600):
        raise RuntimeError("no first token within 600 s")
    if errors:
        raise RuntimeError(errors[0])
    return time.perf_counter() - t0


def _timed(fn, reps: int) -> float:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    p = benchmark_parser("ttft", __doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="bundle directory (default: the shipped demo bundle)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="serving device")
    p.add_argument("--router-tokens", type=int, default=0,
                   help="the server's router_tokens setting (0: the router's own, as served by default)")
    p.add_argument("--dense-prefill", default="auto", choices=["auto", "on", "off"],
                   help="the server's dense_prefill setting (brainstacks/dense_base.py)")
    args = p.parse_args(argv)
    reps = 3 if args.quick else 8
    from brainstacks.router import route_prompts
    from brainstacks.text import encode_prompt, render_chat
    from server.engine import Engine
    from server.loading import load_runner
    from server.settings import ServerSettings

    settings = ServerSettings(bundle=args.bundle, threads=args.threads, device=args.device, warmup=False,
                              router_tokens=args.router_tokens, dense_prefill=args.dense_prefill)
    if args.threads:
        torch.set_num_threads(args.threads)
    runner = load_runner(settings)
    tok = runner.tokenizer
    hand = [json.loads(line) for line in HANDWRITTEN.read_text().splitlines() if line.strip()]
    chats = [render_chat(tok, [{"role": "user", "content": r["prompt"]}], add_generation_prompt=True) for r in hand]
    stream: list[int] = []
    for c in chats:
        stream += encode_prompt(tok, c)
    engine = Engine.from_settings(runner, settings)
    engine.start()
    rows: list[dict] = []
    share: dict[int, dict[str, float]] = {}
    try:
        _ttft(engine, stream[:16], None)  # warm-up
        for n in LENGTHS:
            t: dict[str, list[float]] = {"routed": [], "forced": [], "cached": []}
            for i in range(reps):
                off = (i * 997 + n * 31) % (len(stream) - n)  # a distinct window per repetition: a cache miss
                ids = stream[off : off + n]
                t["routed"].append(_ttft(engine, ids, None))
                w = runner.route([ids])[0]  # a cache hit (the routed request just filled it): the same weights
                t["forced"].append(_ttft(engine, ids, w))
                t["cached"].append(_ttft(engine, ids, None))
            med = {k: statistics.median(v) for k, v in t.items()}
            share[n] = {"cold": (med["routed"] - med["forced"]) / med["routed"],
                        "cached": max(0.0, med["cached"] - med["forced"]) / med["cached"]}
            for k, v in med.items():
                rows.append({"prompt_tokens": n, "case": k, "ttft_ms": round(v * 1000, 1),
                             "vs_forced": round(v / med["forced"], 3), "reps": reps})
        options = _options(runner, route_prompts, stream, chats, hand, reps)
    finally:
        engine.stop(drain_timeout=5)
    print_table(rows, ["prompt_tokens", "case", "ttft_ms", "vs_forced", "reps"],
                title="time to first token, engine in-process, 1 request at a time (medians)")
    print_table(options, ["option", "route_ms_256_prompt", "route_ms_32_prompt", "alone_ms", "handwritten_top1",
                          "engine_path_top1", "long_top1", "long_prompts"],
                title="options: the router pass alone, and hand-written top-1")
    served = next(o for o in options if o["option"] == f"router_tokens {runner.router_tokens} (served)")
    own = next(o for o in options if o["option"].startswith(f"router_tokens {runner.router.config.router_tokens}"))
    acc = served["handwritten_top1"]
    targets = [
        Target("routing share of TTFT, 256-token prompt, cache miss", round(share[256]["cold"], 3), "<=", 0.15, ""),
        Target("routing share of TTFT, 32-token prompt, cache miss", round(share[32]["cold"], 3), "<=", 0.25, ""),
        Target("routing share of TTFT, 256-token prompt, cache hit", round(share[256]["cached"], 3), "<=", 0.15, ""),
        Target("routing share of TTFT, 32-token prompt, cache hit", round(share[32]["cached"], 3), "<=", 0.25, ""),
        Target("hand-written top-1 change, served path vs route_prompts (points)",
               round(abs(served["engine_path_top1"] - acc) * 100, 2), "<=", 1.0, "points"),
        Target("hand-written top-1 change, served router_tokens vs the router's own (points)",
               round(abs(acc - own["handwritten_top1"]) * 100, 2), "<=", 1.0, "points"),
        Target("long-prompt top-1 change, served router_tokens vs the router's own (points)",
               round(abs(served["long_top1"] - own["long_top1"]) * 100, 2), "<=", 1.0, "points"),
    ]
    print_targets(targets)
    if args.json:
        write_report(args.json, "ttft", rows + options, targets,
                     {**machine_info(), "threads": args.threads, "dense_prefill": args.dense_prefill,
                      "dense_mib": round(runner.dense_bytes / 2**20, 1), "device": str(runner.device),
                      "router_tokens": runner.router_tokens})
        print(f"wrote {args.json}")
    return 0


def _options(runner, route_prompts, stream: list[int], chats: list[str], hand: list[dict], reps: int) -> list[dict]:
    """The router pass alone at fewer router_tokens, with hand-written top-1 for each, and batched routing."""
    from brainstacks.text import encode_prompt, render_chat

    tok, sm, router = runner.tokenizer, runner.stacked, runner.router
    truth = [r["domain"] for r in hand]
    served = runner.router_tokens
    out = []
    long_ids = stream[:256]
    # long prompts with known domains: 4 hand-written prompts of one domain in one user message (~100-200 tokens)
    by_dom: dict[str, list[str]] = {}
    for r in hand:
        by_dom.setdefault(r["domain"], []).append(r["prompt"])
    long_chats, long_truth = [], []
    for d, ps in by_dom.items():
        for i in range(0, len(ps) - 3, 4):
            long_chats.append(render_chat(tok, [{"role": "user", "content": "\n\n".join(ps[i : i + 4])}],
                                          add_generation_prompt=True))
            long_truth.append(d)

    def top1(r, texts: list[str], labels: list[str]) -> float:
        w = route_prompts(sm, tok, r, texts, batch_size=16)
        return sum(r.domains[int(i)] == d for i, d in zip(w.argmax(-1), labels, strict=True)) / len(labels)

    for n in sorted({router.config.router_tokens, served, 64, 32}, reverse=True):
        r = copy.copy(router)
        object.__setattr__(r, "config", dataclasses.replace(router.config, router_tokens=n))
        acc = top1(r, chats, truth)
        acc_long = top1(r, long_chats, long_truth)
        sec = _timed(lambda r=r: route_prompts(sm, tok, r, [long_ids], batch_size=1), reps)
        row = {"option": f"router_tokens {n}" + (" (served)" if n == served else ""), "route_ms_256_prompt":
               round(sec * 1000, 1), "handwritten_top1": round(acc, 4), "long_top1": round(acc_long, 4),
               "long_prompts": len(long_truth)}
        if n == served:  # the engine's own path (runner.route: batched, LRU-cached) must agree with route_prompts
            runner.clear_route_cache()
            ids = [encode_prompt(tok, c) for c in chats]
            ws = runner.route(ids)
            top = [max(x, key=x.get) for x in ws]
            row["engine_path_top1"] = round(sum(a == b for a, b in zip(top, truth, strict=True)) / len(truth), 4)
        out.append(row)
    four = [stream[i * 40 : i * 40 + 32] for i in range(4)]
    one = _timed(lambda: runner.route_uncached(four[:1]), reps)
    batched = _timed(lambda: runner.route_uncached(four), reps) / 4
    hit = _timed(lambda: runner.route(four[:1]), reps)
    out.append({"option": "batching: 4 prompts of 32 tokens in one pass, per prompt", "route_ms_32_prompt":
                round(batched * 1000, 1), "alone_ms": round(one * 1000, 1)})
    out.append({"option": "prompt cache hit (runner.route)", "route_ms_32_prompt": round(hit * 1000, 3)})
    return out


if __name__ == "__main__":
    raise SystemExit(main())

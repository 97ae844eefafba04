"""Throughput benchmark (issue 5, item 10): the real server under concurrent load against a naive one-at-a-time server.

    python -m benchmarks.throughput [--quick] [--json PATH] [--bundle DIR] [--quantize nf4|fp4|none]
                                    [--threads N] [--device auto|cpu|cuda] [--phases P1,P2] [--busy N]

One run, on whatever cores this process may use (2 on the CPU machines here):
  1. the bundle: `--bundle`, else the embedded demo bundle when the package ships one, else a tiny bundle built
     through the library (random Llama base, two domains with random frozen stacks, a random router); it is copied
     into a scratch directory because the hot-reload phase rewrites its manifest;
  2. three servers in subprocesses on 127.0.0.1 (free ports), all up for the whole run (an idle one waits on a
     condition and costs no CPU): the real one (`brainstacks serve`, its default decode path: fused), the same with
     `--decode-path eager` (the eager path, measured side by side: "eager 1 client", "eager 16 clients"), and a
     naive one (benchmarks/servers.py: FastAPI /v1/completions that routes the prompt and runs `model.generate`
     under a lock, one request at a time);
  3. rounds of four time-bounded phases, driven with loadtest's code: real server streaming at 1 client, at 16
     clients, at 16 clients with `POST /admin/reload` every 10 s (each reload first publishes a new manifest
     version, same files with version + 1, so every reload validates and swaps), and the naive server at 16
     clients. Phases of a round run back to back, every other round in reverse order; ratio targets are the
     median over rounds of each round's ratio, so a burst of load from other processes on a shared machine hits
     both sides of a ratio instead of one. Counts (errors, failed reloads) are totals over all rounds.
`--quick` (3 rounds, 32 tokens per request) stays under 5 minutes on 2 cores.

Per-step breakdown (issue 11): around every slice of a real-server phase the benchmark reads the server's step
timers from /metrics (server/steptimer.py: seconds per phase of the engine step and of the event loop's per-token
work, and the step counts) and prints, per phase, the milliseconds per decode step of each: the model (decode and
prefill forward, routing), sampling, host syncs, emitting, batch bookkeeping, detokenisation, SSE encoding, and the
event-loop wake-ups per step; they are in the JSON as "step breakdown: <phase>" rows. `--phases` runs a subset
(e.g. "server 1 client,server 16 clients"; the naive server is started only when its phase runs); `--busy N` keeps
N extra processes spinning during the measurement (a shared machine).

Each server runs torch with one intra-op thread by default (--threads): on 2 cores the load generator needs the
other core, the tiny model's ops are too small to split, and on a shared machine two spinning OpenMP threads stall
whenever one is descheduled (measured here: ITL p50 unchanged but tok/s 4-8x lower at 2 threads under load).

Both servers decode greedily with the same bundle, quantization and thread count, so they generate the same tokens
and tokens/s compares like with like. On the tiny random base the special tokens' logits are pinned low, so every
request generates exactly max_tokens (a random model otherwise stops at arbitrary points) and every generated token
is visible text (so streamed chunks, and the time to first token, are per token).

Targets: 16-client tok/s >= 6x 1-client; >= 4x the naive server; fused / eager decode path >= 4x at 1 and at 16
clients; 0 errors; under hot reload 0 failed requests and p99 latency <= 1.5x the same load without reloads.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.bundles import build_tiny_bundle, bump_manifest, demo_bundle_dir
from benchmarks.common import (
    Target,
    benchmark_parser,
    machine_info,
    median,
    print_table,
    print_targets,
    ratio,
    write_report,
)
from benchmarks.servers import ServerProcess, busy_loops, free_port, load, merge, row, step_counters, stop_busy
from brainstacks.quant import QUANTIZE_CHOICES
from loadtest import LoadReport


@dataclass
class Plan:
    """Sizes of one run: `rounds` rounds, each running every phase once for a fixed time (in-flight requests finish).

    The phases are interleaved round by round (order reversed every other round) rather than run back to back, so
    that load from other processes on a shared machine falls on all of them alike and their ratios stay meaningful.
    """

    rounds: int
    max_tokens: int
    single_s: float  # 1-client phase
    multi_s: float  # 16-client phases, with and without reloads (the same length, so their p99s compare)
    naive_s: float
    reload_every: float = 10.0
    clients: int = 16


QUICK = Plan(rounds=3, max_tokens=32, single_s=8, multi_s=12, naive_s=8)  # one reload per 12 s slice
FULL = Plan(rounds=5, max_tokens=64, single_s=20, multi_s=25, naive_s=20)  # two reloads per 25 s slice


# ---------------------------------------------------------------------------------------------------------------
# the bundle


# ---------------------------------------------------------------------------------------------------------------
# the naive baseline: one request at a time with model.generate


# ---------------------------------------------------------------------------------------------------------------
# processes and load


# ---------------------------------------------------------------------------------------------------------------


PHASES = ("server 1 client", "server 16 clients", "server 16 clients + reload", "naive 16 clients",
          "eager 1 client", "eager 16 clients")
BREAKDOWN_COLUMNS = ("phase", "decode_steps", "tok/step", "step ms", "decode_forward ms", "prefill_forward ms",
                     "route ms", "sampling ms", "host_sync ms", "emit ms", "batch_ops ms", "tasks ms", "other ms",
                     "detokenize ms", "sse_encode ms", "wakeup ms", "wakeups/step", "model share")


def step_breakdown(phase: str, pairs: list[tuple[dict, dict]], report: LoadReport) -> dict:
    """Milliseconds per decode step and phase over the slices of one phase (server/steptimer.py's counters, read
    from /metrics before and after each slice): what the model costs and what the rest of a step costs."""
    from server.steptimer import PHASES as TIMED
    from server.steptimer import breakdown

    before = {k: 0.0 for k in (*TIMED, "steps", "decode_steps", "wakeups")}
    after = dict(before)
    for b, a in pairs:  # sum the differences of every slice
        for k in after:
            after[k] += a.get(k, 0.0) - b.get(k, 0.0)
    out = {"phase": phase, **breakdown(before, after)}
    n = out.get("decode_steps") or 0
    out["tok/step"] = report.summary()["generated_tokens"] / n if n else None
    if n:
        model = out["decode_forward ms"] + out["prefill_forward ms"] + out["route ms"]
        out["model share"] = model / out["step ms"] if out["step ms"] else None
    return out


ADMIN_KEY = "bench-admin"


def _parser():
    parser = benchmark_parser("throughput", __doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="bundle to serve (default: demo bundle, else a tiny one)")
    parser.add_argument("--quantize", default="nf4", choices=QUANTIZE_CHOICES, help="base quantization")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads in each server (default 1: see the module docstring; 0: torch's "
                             "own default, OMP_NUM_THREADS unset)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="serving device of both servers (auto: cuda when available)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="comma-separated phases to run (default: all four)")
    parser.add_argument("--busy", type=int, default=0,
                        help="busy-loop processes competing for the CPU during the measured phases (a shared machine)")
    parser.add_argument("--dense-prefill", default="auto", choices=["auto", "on", "off"],
                        help="the server's dense_prefill setting (brainstacks/dense_base.py; the naive server never "
                             "keeps the copies)")
    parser.add_argument("--rounds", type=int, default=None, help="override the number of interleaved rounds")
    parser.add_argument("--workdir", default=None, help="keep the scratch bundle and server logs here")
    return parser


def _servers(args, bundle: Path, scratch: Path) -> tuple[ServerProcess, ServerProcess, ServerProcess]:
    """The served path, the eager path and the naive server, over the same bundle copy (not started)."""
    env = {"OMP_NUM_THREADS": str(args.threads), "BRAINSTACKS_THREADS": str(args.threads),
           "BRAINSTACKS_LOG_LEVEL": "warning", "BRAINSTACKS_ADMIN_KEY": ADMIN_KEY, "TOKENIZERS_PARALLELISM": "false",
           "BRAINSTACKS_DEVICE": args.device, "BRAINSTACKS_DENSE_PREFILL": args.dense_prefill}
    port = free_port()
    real = ServerProcess("brainstacks", [sys.executable, "-m", "brainstacks_cli", "serve", "--bundle", str(bundle),
                                         "--host", "127.0.0.1", "--port", str(port), "--quantize", args.quantize],
                         port, scratch / "server.log", env)
    port = free_port()
    eager = ServerProcess("eager", [sys.executable, "-m", "brainstacks_cli", "serve", "--bundle", str(bundle),
                                    "--host", "127.0.0.1", "--port", str(port), "--quantize", args.quantize],
                          port, scratch / "eager.log", {**env, "BRAINSTACKS_DECODE_PATH": "eager"})
    port = free_port()
    naive = ServerProcess("naive", [sys.executable, "-m", "benchmarks.servers", "--bundle",
                                    str(bundle), "--port", str(port), "--quantize", args.quantize, "--threads",
                                    str(args.threads), "--device", args.device], port, scratch / "naive.log", env)
    for srv in (real, naive, eager):  # the load runs without an API key
        srv.env.pop("BRAINSTACKS_API_KEY", None)
        if not args.threads:
            srv.env.pop("OMP_NUM_THREADS", None)
    return real, eager, naive


def _targets(slices: dict[str, list[LoadReport]], s: dict[str, dict], rounds: int) -> tuple[list[Target], dict]:
    """The targets and the ratios behind them."""
    one, many, rel = s.get("server 1 client"), s.get("server 16 clients"), s.get("server 16 clients + reload")
    naive_s = s.get("naive 16 clients")
    server_errors = sum(x["errors"] for k, x in s.items() if k.startswith(("server", "eager")))
    # Ratio targets take the median over rounds of the ratio within each round: the phases of a round run back to back,
    # so a burst of load from other processes inflates both sides of that round's ratio instead of skewing one pool.
    def tok(name: str, i: int) -> float | None:
        return slices[name][i].summary()["tokens_per_s"] if name in slices else None

    def p99(name: str, i: int) -> float | None:
        return slices[name][i].summary()["latency_s"]["p99"] if name in slices else None

    def pooled(a: dict | None, b: dict | None, key=lambda x: x["tokens_per_s"]) -> float | None:
        return ratio(key(a), key(b)) if a is not None and b is not None else None

    rounds = range(rounds)
    ratio_1 = [ratio(tok("server 16 clients", i), tok("server 1 client", i)) for i in rounds]
    ratio_naive = [ratio(tok("server 16 clients", i), tok("naive 16 clients", i)) for i in rounds]
    ratio_p99 = [ratio(p99("server 16 clients + reload", i), p99("server 16 clients", i)) for i in rounds]
    fused_1 = [ratio(tok("server 1 client", i), tok("eager 1 client", i)) for i in rounds]
    fused_16 = [ratio(tok("server 16 clients", i), tok("eager 16 clients", i)) for i in rounds]
    targets = [
        Target("16-client tok/s / 1-client tok/s", median(ratio_1), ">=", 6.0, "x"),
        Target("16-client tok/s / naive server tok/s", median(ratio_naive), ">=", 4.0, "x"),
        Target("errors (all server phases)", float(server_errors), "<=", 0.0, "requests"),
        Target("fused / eager decode path, 1-client tok/s", median(fused_1), ">=", 4.0, "x"),
        Target("fused / eager decode path, 16-client tok/s", median(fused_16), ">=", 4.0, "x"),
    ]
    if rel is not None:
        targets += [
            Target("failed requests under hot reload", float(rel["errors"]), "<=", 0.0, "requests"),
            Target("failed reloads", float(rel["reloads"]["failed"]) if rel["reloads"]["attempted"] else None, "<=",
                   0.0, "reloads"),
            Target("p99 latency with reload / without", median(ratio_p99), "<=", 1.5, "x"),
        ]
    ratios = {
        "per_round": {"16c/1c tok/s": ratio_1, "16c/naive tok/s": ratio_naive, "reload/no-reload p99": ratio_p99,
                      "fused/eager 1c tok/s": fused_1, "fused/eager 16c tok/s": fused_16},
        "pooled": {"16c/1c tok/s": pooled(many, one), "16c/naive tok/s": pooled(many, naive_s),
                   "reload/no-reload p99": pooled(rel, many, lambda x: x["latency_s"]["p99"])},
    }
    return targets, ratios


def _scratch_bundle(args, scratch: Path) -> tuple[Path, str]:
    """A copy of the bundle to serve (the demo, --bundle, or a tiny one built here) and what it came from."""
    src = Path(args.bundle) if args.bundle else demo_bundle_dir()
    bundle = scratch / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    if src is not None:
        shutil.copytree(src, bundle)
        source = str(src)
    else:
        build_tiny_bundle(bundle)
        source = "tiny bundle built through the library (no demo bundle in this install)"
    return bundle, source


def _run(args, plan, phases: tuple[str, ...], bundle: Path, real: ServerProcess, eager: ServerProcess,
         naive: ServerProcess) -> tuple[dict[str, list[LoadReport]], dict[str, list[tuple[dict, dict]]]]:
    """Start the servers the phases need, warm them up, run the interleaved rounds, stop everything: the load
    reports per phase and round, and the step counters around each server phase."""
    slices: dict[str, list[LoadReport]] = {name: [] for name in phases}
    steps: dict[str, list[tuple[dict, dict]]] = {name: [] for name in phases if name.startswith("server")}
    busy: list = []
    try:
        # both servers stay up; an idle one waits on a condition variable and takes no CPU from the measured one
        real.start()
        print(f"brainstacks serve ready in {real.ready_s:.1f} s at {real.url}", flush=True)
        if "naive 16 clients" in phases:
            naive.start()
            print(f"naive server ready in {naive.ready_s:.1f} s at {naive.url}", flush=True)
        load(real.url, plan.clients, 3.0, plan.max_tokens, stream=True)  # warm-ups, not reported
        if "naive 16 clients" in phases:
            load(naive.url, 1, 2.0, plan.max_tokens, stream=False)
        if any(p.startswith("eager") for p in phases):
            eager.start()
            print(f"eager-path server ready in {eager.ready_s:.1f} s at {eager.url}", flush=True)
            load(eager.url, plan.clients, 3.0, plan.max_tokens, stream=True)
        busy = busy_loops(args.busy)

        def measure(phase: str) -> LoadReport:
            if phase == "server 1 client":
                return load(real.url, 1, plan.single_s, plan.max_tokens, stream=True)
            if phase == "server 16 clients":
                return load(real.url, plan.clients, plan.multi_s, plan.max_tokens, stream=True)
            if phase == "server 16 clients + reload":
                return load(real.url, plan.clients, plan.multi_s, plan.max_tokens, stream=True,
                            reload_every=plan.reload_every, before_reload=lambda: bump_manifest(bundle),
                            admin_key=ADMIN_KEY)
            if phase == "eager 1 client":
                return load(eager.url, 1, plan.single_s, plan.max_tokens, stream=True)
            if phase == "eager 16 clients":
                return load(eager.url, plan.clients, plan.multi_s, plan.max_tokens, stream=True)
            return load(naive.url, plan.clients, plan.naive_s, plan.max_tokens, stream=False)

        for rnd in range(plan.rounds):
            for phase in phases if rnd % 2 == 0 else tuple(reversed(phases)):
                before = step_counters(real.url) if phase in steps else None
                rep = measure(phase)
                if before is not None:
                    steps[phase].append((before, step_counters(real.url)))
                slices[phase].append(rep)
                s = rep.summary()
                print(f"round {rnd + 1}/{plan.rounds}  {phase:<28} {s['tokens_per_s']:8.1f} tok/s  "
                      f"p99 {s['latency_s']['p99'] or 0:.2f} s  errors {s['errors']}  "
                      f"reloads {s['reloads']['ok']}/{s['reloads']['attempted']}", flush=True)
    finally:
        stop_busy(busy)
        real.stop()
        naive.stop()
        eager.stop()

    return slices, steps


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    phases = tuple(x.strip() for x in args.phases.split(",") if x.strip())
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phases {sorted(unknown)}; known: {list(PHASES)}")
    if args.rounds:
        plan.rounds = args.rounds

    scratch = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_throughput_"))
    scratch.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    bundle, source = _scratch_bundle(args, scratch)
    print(f"bundle: {source} -> {bundle} (quantize={args.quantize}, threads={args.threads})", flush=True)

    real, eager, naive = _servers(args, bundle, scratch)
    slices, steps = _run(args, plan, phases, bundle, real, eager, naive)
    reports = {name: merge(reps) for name, reps in slices.items()}
    rows = [row(name, reports[name]) for name in phases]
    breakdown_rows = [step_breakdown(name, pairs, reports[name]) for name, pairs in steps.items()]
    per_round = [{"phase": name, **{f"round {i + 1}": r.summary()["tokens_per_s"] for i, r in enumerate(reps)}}
                 for name, reps in slices.items()]
    s = {k: v.summary() for k, v in reports.items()}
    targets, ratios = _targets(slices, s, plan.rounds)
    elapsed = time.perf_counter() - t_start
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    print()
    print_table(rows, title=f"throughput ({'quick' if args.quick else 'full'}: {plan.rounds} interleaved rounds, "
                            f"max_tokens={plan.max_tokens}, {elapsed:.0f} s; phases pooled over rounds)")
    print()
    print_table(per_round + [{"phase": f"ratio {k}", **{f"round {i + 1}": v for i, v in enumerate(vals)}}
                             for k, vals in ratios["per_round"].items()],
                title="per round: tok/s of each phase, then the ratios (targets use their median over rounds)")
    print("pooled over rounds: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios["pooled"].items() if v is not None))
    print()
    print_table(breakdown_rows, BREAKDOWN_COLUMNS,
                title="per decode step, ms (server/steptimer.py counters from /metrics, pooled over rounds; other = "
                      "step minus its phases; detokenize / sse_encode / wakeup run on the event loop)")
    print()
    print_targets(targets)
    if load_before is not None:
        print(f"load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after "
              f"({os.cpu_count()} cpus; > cpus means other processes competed for them)")
    if args.json:
        results = [{**r, "summary": s[r["phase"]], "per_round_tokens_per_s": pr}
                   for r, pr in zip(rows, [[x.summary()["tokens_per_s"] for x in slices[n]] for n in phases],
                                    strict=True)]
        results += [{**b, "phase": f"step breakdown: {b['phase']}"} for b in breakdown_rows]
        machine = {**machine_info(), "server_threads": args.threads, "quantize": args.quantize,
                   "dense_prefill": args.dense_prefill, "bundle": source,
                   "busy_processes": args.busy, "phases": list(phases),
                   "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__}, "elapsed_s": elapsed,
                   "loadavg_before": load_before, "loadavg_after": load_after}
        results.append({"phase": "ratios", **ratios})
        write_report(args.json, "throughput", results, targets, machine)
        print(f"wrote {args.json}")
    if not args.workdir:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0  # the run completed; PASS/FAIL of each target is in the table and the JSON


if __name__ == "__main__":
    sys.exit(main())

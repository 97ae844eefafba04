"""Throughput benchmark (issue 5, item 10): the real server under concurrent load against a naive one-at-a-time server.

    python -m benchmarks.throughput [--quick] [--json PATH] [--bundle DIR] [--quantize nf4|fp4|none]

One run, on whatever cores this process may use (2 on the CPU machines here):
  1. the bundle: `--bundle`, else the embedded demo bundle when the package ships one, else a tiny bundle built
     through the library (random Llama base, two domains with random frozen stacks, a random router); it is copied
     into a scratch directory because the hot-reload phase rewrites its manifest;
  2. two servers in subprocesses on 127.0.0.1 (free ports), both up for the whole run (an idle one waits on a
     condition and costs no CPU): the real one (`brainstacks serve`) and a naive one (below, in this file:
     FastAPI /v1/completions that routes the prompt and runs `model.generate` under a lock, one request at a time);
  3. rounds of four time-bounded phases, driven with loadtest's code: real server streaming at 1 client, at 16
     clients, at 16 clients with `POST /admin/reload` every 10 s (each reload first publishes a new manifest
     version, same files with version + 1, so every reload validates and swaps), and the naive server at 16
     clients. Phases of a round run back to back, every other round in reverse order; ratio targets are the
     median over rounds of each round's ratio, so a burst of load from other processes on a shared machine hits
     both sides of a ratio instead of one. Counts (errors, failed reloads) are totals over all rounds.
`--quick` (3 rounds, 32 tokens per request) stays under 5 minutes on 2 cores.

Each server runs torch with one intra-op thread by default (--threads): on 2 cores the load generator needs the
other core, the tiny model's ops are too small to split, and on a shared machine two spinning OpenMP threads stall
whenever one is descheduled (measured here: ITL p50 unchanged but tok/s 4-8x lower at 2 threads under load).

Both servers decode greedily with the same bundle, quantization and thread count, so they generate the same tokens
and tokens/s compares like with like. On the tiny random base the special tokens' logits are pinned low, so every
request generates exactly max_tokens (a random model otherwise stops at arbitrary points) and every generated token
is visible text (so streamed chunks, and the time to first token, are per token).

Targets: 16-client tok/s >= 6x 1-client; >= 4x the naive server; 0 errors; under hot reload 0 failed requests and
p99 latency <= 1.5x the same load without reloads.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.common import Target, benchmark_parser, machine_info, print_table, print_targets, write_report
from loadtest import LoadConfig, LoadReport, run

BENCH_PROMPTS = [
    "What is 12 plus 30? Think step by step.",
    "A patient reports a headache and a mild fever since yesterday. What should they do?",
    "Explain in one paragraph why the sky is blue.",
    "If a train leaves at 3 pm and travels 120 km at 60 km/h, when does it arrive?",
    "Write a friendly greeting for a new colleague.",
    "List the symptoms of dehydration.",
    "Solve for x: 3x + 7 = 22.",
    "Summarize the plot of a story about a lost dog finding its way home.",
]


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


# the tiny base when no demo bundle exists: every projection's out_features a multiple of 32 (bitsandbytes NF4)
TINY_SIZES = dict(hidden=128, layers=4, intermediate=256, heads=4, kv_heads=2)

QUICK = Plan(rounds=3, max_tokens=32, single_s=8, multi_s=12, naive_s=8)  # one reload per 12 s slice
FULL = Plan(rounds=5, max_tokens=64, single_s=20, multi_s=25, naive_s=20)  # two reloads per 25 s slice


# ---------------------------------------------------------------------------------------------------------------
# the bundle


def demo_bundle_dir() -> Path | None:
    """The package's embedded demo bundle, if this install ships one."""
    spec = importlib.util.find_spec("brainstacks")
    for root in (spec.submodule_search_locations or []) if spec else []:
        d = Path(root) / "demo_bundle"
        if (d / "manifest.json").is_file():
            return d
    return None


def build_tiny_bundle(out: Path, seed: int = 0) -> Path:
    """A small bundle made through the library: random Llama base (carried under BUNDLE/base), 2 domains with one
    random frozen stack each, a random router. The LM head rows of every id that decodes to no text (EOS, pad, BOS,
    unk, and the embedding rows beyond the tokenizer's vocabulary) are zeroed, so greedy decoding never picks one (its
    logit is 0 while the largest of ~150 random logits is positive): every request generates exactly max_tokens
    tokens of visible text on both servers."""
    import torch

    from brainstacks.base import load_base
    from brainstacks.bundle import DomainEntry, Manifest, save_router, save_stack, write_manifest
    from brainstacks.config import RouterConfig, StackConfig
    from brainstacks.router import MetaRouter
    from brainstacks.stacks import StackedModel
    from brainstacks.testing import tiny_base

    out.mkdir(parents=True, exist_ok=True)
    base_dir = tiny_base(out / "base", family="llama", seed=seed, **TINY_SIZES)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    tok = AutoTokenizer.from_pretrained(base_dir)
    silent = set(tok.all_special_ids) | set(range(len(tok), model.config.vocab_size))  # ids that decode to ""
    with torch.no_grad():
        for tid in sorted(silent):
            model.lm_head.weight[tid].zero_()
    model.save_pretrained(base_dir)

    lb = load_base(base_dir, quantize="none", dtype="float32", device="cpu")
    cfg = StackConfig()
    sm = StackedModel(lb.model, cfg)
    gen = torch.Generator().manual_seed(seed)
    domains = ("math", "medical")
    for name in domains:
        sm.add_domain(name)
        with torch.no_grad():
            for prm in sm.start_stack(name):
                if not prm.any():  # B (and the training-only noise gate) start at zero: give the delta some size
                    prm.copy_(torch.randn(prm.shape, generator=gen) * 0.02)
        sm.freeze_active()
        save_stack(out, name, 0, sm.stack_tensors(name, 0))
    torch.manual_seed(seed)
    save_router(out, MetaRouter(lb.fingerprint["hidden_size"], list(domains), RouterConfig()))
    write_manifest(out, Manifest(version=1, base={"path": "base", "fingerprint": lb.fingerprint},
                                 stack_config=cfg.to_dict(),
                                 domains=[DomainEntry(d, [f"stacks/{d}/0"]) for d in domains], router="router"))
    return out


def publish_manifest(bundle: Path, manifest: dict, version: int) -> int:
    """Write `manifest` as `version` of the bundle atomically (temp + rename, as docs/DESIGN.md §4 requires of
    writers); returns the version."""
    from brainstacks.bundle import write_json

    write_json(Path(bundle) / "manifest.json", {**manifest, "version": version})
    return version


def bump_manifest(bundle: Path) -> int:
    """Publish the same bundle as version + 1; returns it."""
    data = json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))
    return publish_manifest(bundle, data, int(data["version"]) + 1)


# ---------------------------------------------------------------------------------------------------------------
# the naive baseline: one request at a time with model.generate


def make_naive_app(bundle: str, quantize: str, dtype: str = "float32"):
    """FastAPI /v1/completions that routes the prompt and calls `model.generate`, serialised by a lock."""
    import threading

    import torch
    from fastapi import FastAPI

    from brainstacks.bundle import load_bundle
    from brainstacks.router import route_prompts, weights_for_model
    from brainstacks.text import encode_prompt
    from server.sampling import SamplingParams

    lb = load_bundle(bundle, quantize=quantize, dtype=dtype, device="cpu")
    model, tok, sm, router = lb.base.model, lb.base.tokenizer, lb.stacked, lb.router
    model.eval()
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/completions")
    def completions(body: dict) -> dict:  # a sync endpoint runs in the threadpool; the lock serialises generation
        prompt, max_tokens = body["prompt"], int(body.get("max_tokens", SamplingParams.max_tokens))
        with lock, torch.no_grad():
            ids = torch.tensor([encode_prompt(tok, prompt)])  # (1, T), the server's own prompt encoding
            enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            weights = None
            if router is not None:
                weights = weights_for_model(sm, router.domains, route_prompts(sm, tok, router, [ids[0].tolist()]))
            with sm.routing(weights):
                out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        n_prompt = int(enc["input_ids"].shape[1])
        return {
            "id": "cmpl-naive", "object": "text_completion", "created": int(time.time()), "model": body.get("model"),
            "choices": [{"index": 0, "text": tok.decode(new, skip_special_tokens=True), "finish_reason": "length",
                         "logprobs": None}],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": int(new.numel()),
                      "total_tokens": n_prompt + int(new.numel())},
        }

    return app


def serve_naive(argv: list[str]) -> int:
    """Subprocess entry: `python -m benchmarks.throughput --serve-naive --bundle B --port P --quantize Q`."""
    import torch
    import uvicorn

    p = argparse.ArgumentParser()
    p.add_argument("--serve-naive", action="store_true")
    p.add_argument("--bundle", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--quantize", default="nf4")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    uvicorn.run(make_naive_app(a.bundle, a.quantize), host="127.0.0.1", port=a.port, log_level="warning")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# processes and load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server in a subprocess, logging to a file; `start()` returns once a completion succeeds."""

    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path, env: dict | None = None):
        self.name, self.cmd, self.port, self.log_path = name, cmd, port, log_path
        self.env = {**os.environ, **(env or {})}
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None

    def start(self, timeout: float = 300.0) -> ServerProcess:
        t0 = time.perf_counter()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        body = {"model": "brainstacks", "prompt": "hello", "max_tokens": 2, "temperature": 0}
        deadline = t0 + timeout
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}:\n{self.log_tail()}")
                if time.perf_counter() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} server not ready after {timeout:.0f} s:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.post("/v1/completions", json=body).status_code == 200:
                        break
                time.sleep(0.5)  # polling a starting subprocess, not timing anything
        self.ready_s = time.perf_counter() - t0
        return self

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # graceful: uvicorn drains and exits
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def load(url: str, clients: int, duration: float, max_tokens: int, stream: bool, reload_every: float | None = None,
         before_reload=None, admin_key: str | None = None) -> LoadReport:
    cfg = LoadConfig(url=url, concurrency=clients, requests=100_000, duration=duration, stream=stream,
                     max_tokens=max_tokens, prompts=list(BENCH_PROMPTS), reload_every=reload_every,
                     admin_key=admin_key, timeout=300.0)
    return run(cfg, before_reload=before_reload)


def row(phase: str, report: LoadReport) -> dict:
    s = report.summary()
    return {
        "phase": phase,
        "clients": report.config.concurrency,
        "requests": s["ok"],
        "errors": s["errors"],
        "tok/s": s["tokens_per_s"],
        "req/s": s["requests_per_s"],
        "tok/req": s["generated_tokens"] / s["ok"] if s["ok"] else None,
        "p50 ms": _ms(s["latency_s"]["p50"]),
        "p99 ms": _ms(s["latency_s"]["p99"]),
        "ttft p50 ms": _ms(s["ttft_s"]["p50"]),
        "itl p50 ms": _ms(s["itl_s"]["p50"]),
        "reloads ok/all": f"{s['reloads']['ok']}/{s['reloads']['attempted']}" if report.config.reload_every else "-",
    }


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1000.0


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _median(xs: list[float | None]) -> float | None:
    vals = sorted(x for x in xs if x is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


# ---------------------------------------------------------------------------------------------------------------


def merge(reports: list[LoadReport]) -> LoadReport:
    """One report over several slices of the same phase: walls add up, requests and reloads are pooled."""
    return LoadReport(config=reports[0].config, wall_s=sum(r.wall_s for r in reports),
                      results=[x for r in reports for x in r.results], reloads=[x for r in reports for x in r.reloads])


PHASES = ("server 1 client", "server 16 clients", "server 16 clients + reload", "naive 16 clients")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--serve-naive" in argv:
        return serve_naive(argv)
    parser = benchmark_parser("throughput", __doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="bundle to serve (default: demo bundle, else a tiny one)")
    parser.add_argument("--quantize", default="nf4", choices=["nf4", "fp4", "none"], help="base quantization")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads in each server (default 1: see the module docstring)")
    parser.add_argument("--rounds", type=int, default=None, help="override the number of interleaved rounds")
    parser.add_argument("--workdir", default=None, help="keep the scratch bundle and server logs here")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan.rounds = args.rounds

    scratch = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_throughput_"))
    scratch.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
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
    print(f"bundle: {source} -> {bundle} (quantize={args.quantize}, threads={args.threads})", flush=True)

    admin_key = "bench-admin"
    env = {"OMP_NUM_THREADS": str(args.threads), "BRAINSTACKS_THREADS": str(args.threads),
           "BRAINSTACKS_LOG_LEVEL": "warning", "BRAINSTACKS_ADMIN_KEY": admin_key, "TOKENIZERS_PARALLELISM": "false"}
    port = free_port()
    real = ServerProcess("brainstacks", [sys.executable, "-m", "brainstacks_cli", "serve", "--bundle", str(bundle),
                                         "--host", "127.0.0.1", "--port", str(port), "--quantize", args.quantize],
                         port, scratch / "server.log", env)
    port = free_port()
    naive = ServerProcess("naive", [sys.executable, "-m", "benchmarks.throughput", "--serve-naive", "--bundle",
                                    str(bundle), "--port", str(port), "--quantize", args.quantize, "--threads",
                                    str(args.threads)], port, scratch / "naive.log", env)
    for srv in (real, naive):  # the load runs without an API key
        srv.env.pop("BRAINSTACKS_API_KEY", None)
    slices: dict[str, list[LoadReport]] = {name: [] for name in PHASES}
    try:
        # both servers stay up; an idle one waits on a condition variable and takes no CPU from the measured one
        real.start()
        print(f"brainstacks serve ready in {real.ready_s:.1f} s at {real.url}", flush=True)
        naive.start()
        print(f"naive server ready in {naive.ready_s:.1f} s at {naive.url}", flush=True)
        load(real.url, plan.clients, 3.0, plan.max_tokens, stream=True)  # warm-ups, not reported
        load(naive.url, 1, 2.0, plan.max_tokens, stream=False)

        def measure(phase: str) -> LoadReport:
            if phase == "server 1 client":
                return load(real.url, 1, plan.single_s, plan.max_tokens, stream=True)
            if phase == "server 16 clients":
                return load(real.url, plan.clients, plan.multi_s, plan.max_tokens, stream=True)
            if phase == "server 16 clients + reload":
                return load(real.url, plan.clients, plan.multi_s, plan.max_tokens, stream=True,
                            reload_every=plan.reload_every, before_reload=lambda: bump_manifest(bundle),
                            admin_key=admin_key)
            return load(naive.url, plan.clients, plan.naive_s, plan.max_tokens, stream=False)

        for rnd in range(plan.rounds):
            for phase in PHASES if rnd % 2 == 0 else tuple(reversed(PHASES)):
                rep = measure(phase)
                slices[phase].append(rep)
                s = rep.summary()
                print(f"round {rnd + 1}/{plan.rounds}  {phase:<28} {s['tokens_per_s']:8.1f} tok/s  "
                      f"p99 {s['latency_s']['p99'] or 0:.2f} s  errors {s['errors']}  "
                      f"reloads {s['reloads']['ok']}/{s['reloads']['attempted']}", flush=True)
    finally:
        real.stop()
        naive.stop()

    reports = {name: merge(reps) for name, reps in slices.items()}
    rows = [row(name, reports[name]) for name in PHASES]
    per_round = [{"phase": name, **{f"round {i + 1}": r.summary()["tokens_per_s"] for i, r in enumerate(reps)}}
                 for name, reps in slices.items()]
    s = {k: v.summary() for k, v in reports.items()}
    one, many, rel = s["server 1 client"], s["server 16 clients"], s["server 16 clients + reload"]
    naive_s = s["naive 16 clients"]
    server_errors = sum(x["errors"] for k, x in s.items() if k.startswith("server"))
    # Ratio targets take the median over rounds of the ratio within each round: the phases of a round run back to back,
    # so a burst of load from other processes inflates both sides of that round's ratio instead of skewing one pool.
    def tok(name: str, i: int) -> float:
        return slices[name][i].summary()["tokens_per_s"]

    def p99(name: str, i: int) -> float | None:
        return slices[name][i].summary()["latency_s"]["p99"]

    rounds = range(plan.rounds)
    ratio_1 = [_ratio(tok("server 16 clients", i), tok("server 1 client", i)) for i in rounds]
    ratio_naive = [_ratio(tok("server 16 clients", i), tok("naive 16 clients", i)) for i in rounds]
    ratio_p99 = [_ratio(p99("server 16 clients + reload", i), p99("server 16 clients", i)) for i in rounds]
    targets = [
        Target("16-client tok/s / 1-client tok/s", _median(ratio_1), ">=", 6.0, "x"),
        Target("16-client tok/s / naive server tok/s", _median(ratio_naive), ">=", 4.0, "x"),
        Target("errors (all server phases)", float(server_errors), "<=", 0.0, "requests"),
        Target("failed requests under hot reload", float(rel["errors"]), "<=", 0.0, "requests"),
        Target("failed reloads", float(rel["reloads"]["failed"]) if rel["reloads"]["attempted"] else None, "<=", 0.0,
               "reloads"),
        Target("p99 latency with reload / without", _median(ratio_p99), "<=", 1.5, "x"),
    ]
    ratios = {
        "per_round": {"16c/1c tok/s": ratio_1, "16c/naive tok/s": ratio_naive, "reload/no-reload p99": ratio_p99},
        "pooled": {"16c/1c tok/s": _ratio(many["tokens_per_s"], one["tokens_per_s"]),
                   "16c/naive tok/s": _ratio(many["tokens_per_s"], naive_s["tokens_per_s"]),
                   "reload/no-reload p99": _ratio(rel["latency_s"]["p99"], many["latency_s"]["p99"])},
    }
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
    print_targets(targets)
    if load_before is not None:
        print(f"load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after "
              f"({os.cpu_count()} cpus; > cpus means other processes competed for them)")
    if args.json:
        results = [{**r, "summary": s[r["phase"]], "per_round_tokens_per_s": pr}
                   for r, pr in zip(rows, [[x.summary()["tokens_per_s"] for x in slices[n]] for n in PHASES],
                                    strict=True)]
        machine = {**machine_info(), "server_threads": args.threads, "quantize": args.quantize, "bundle": source,
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

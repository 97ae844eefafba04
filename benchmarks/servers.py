"""The servers the benchmarks drive, and the load they put on them.

    with ServerProcess("real", cmd, port, log_path) as srv:     # a server in a subprocess, ready once it answers
        report = load(srv.url, clients=16, duration=12, max_tokens=32, stream=True)
        print(row("server 16 clients", report))

`make_naive_app` is the baseline the throughput benchmark compares against: FastAPI /v1/completions that routes the
prompt (brainstacks.router.route_prompts, the server's own routing) and calls `model.generate` under a lock, one
request at a time (`python -m benchmarks.servers --bundle B --port P --quantize Q` serves it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.common import ms
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


def make_naive_app(bundle: str, quantize: str, dtype: str = "float32", device: str = "cpu"):
    """FastAPI /v1/completions that routes the prompt and calls `model.generate`, serialised by a lock."""
    import threading

    import torch
    from fastapi import FastAPI

    from brainstacks.bundle import load_bundle
    from brainstacks.router import route_prompts, weights_for_model
    from brainstacks.text import encode_prompt
    from server.sampling import SamplingParams

    lb = load_bundle(bundle, quantize=quantize, dtype=dtype, device=device)
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
            ids = torch.tensor([encode_prompt(tok, prompt)], device=lb.stacked.device)  # (1, T), as the server does
            enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            weights = None
            if router is not None:
                weights = weights_for_model(sm, router.domains, route_prompts(sm, tok, router, [ids[0].tolist()]))
            with sm.routing(weights):
                out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                     pad_token_id=tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id)
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
    """Subprocess entry: `python -m benchmarks.servers --bundle B --port P --quantize Q`."""
    import torch
    import uvicorn

    from brainstacks.dtypes import auto_device

    p = argparse.ArgumentParser()
    p.add_argument("--bundle", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--quantize", default="nf4")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = auto_device() if a.device == "auto" else a.device
    dtype = "bfloat16" if device == "cuda" else "float32"  # the server's --dtype auto (server.loading.serve_dtype)
    uvicorn.run(make_naive_app(a.bundle, a.quantize, dtype, device), host="127.0.0.1", port=a.port, log_level="warning")
    return 0


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
        "p50 ms": ms(s["latency_s"]["p50"]),
        "p99 ms": ms(s["latency_s"]["p99"]),
        "ttft p50 ms": ms(s["ttft_s"]["p50"]),
        "itl p50 ms": ms(s["itl_s"]["p50"]),
        "reloads ok/all": f"{s['reloads']['ok']}/{s['reloads']['attempted']}" if report.config.reload_every else "-",
    }


def merge(reports: list[LoadReport]) -> LoadReport:
    """One report over several slices of the same phase: walls add up, requests and reloads are pooled."""
    return LoadReport(config=reports[0].config, wall_s=sum(r.wall_s for r in reports),
                      results=[x for r in reports for x in r.results], reloads=[x for r in reports for x in r.reloads])


def rss_bytes(pid: int) -> int | None:
    """A process's resident set size (VmRSS) in bytes; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


STEP_COUNTERS = {"brainstacks_step_phase_seconds_total": "phase", "brainstacks_engine_steps_total": "kind"}


def step_counters(url: str) -> dict[str, float]:
    """The server's always-on step timers from /metrics (server/steptimer.py): seconds per phase, `steps`,
    `decode_steps` and `wakeups`, in the shape server.steptimer.breakdown takes."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for f in text_string_to_metric_families(text):
        for smp in f.samples:
            if smp.name == "brainstacks_step_phase_seconds_total":
                out[smp.labels["phase"]] = smp.value
            elif smp.name == "brainstacks_engine_steps_total":
                out["steps" if smp.labels["kind"] == "all" else "decode_steps"] = smp.value
            elif smp.name == "brainstacks_event_loop_wakeups_total":
                out["wakeups"] = smp.value
    return out


def busy_loops(n: int) -> list[subprocess.Popen]:
    """n processes that keep one CPU each busy (a competing load on a shared machine); stop with stop_busy."""
    code = "import time\nwhile True:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code], start_new_session=True) for _ in range(n)]


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait(timeout=10)


def rows_after(url: str, timeout: float = 10.0) -> float | None:
    """Running + waiting rows once the traffic has stopped (bounded poll: dropped rows leave at the next step)."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout
    n = None
    while time.monotonic() < deadline:
        text = httpx.get(url + "/metrics", timeout=10).text
        n = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name in ("brainstacks_running_requests", "brainstacks_waiting_requests"))
        if n == 0:
            return 0.0
        time.sleep(0.2)
    return n


if __name__ == "__main__":
    sys.exit(serve_naive(sys.argv[1:]))


def rss_growth(samples: list[tuple[float, int]], start_s: float, window: float = 30.0) -> tuple[float | None, dict]:
    """(end mean / mean at start_s) - 1, each a mean over `window` seconds of samples."""
    if not samples:
        return None, {}
    end_t = samples[-1][0]
    first = [b for t, b in samples if start_s <= t < start_s + window]
    last = [b for t, b in samples if t > end_t - window]
    if not first or not last:
        return None, {}
    a, b = statistics.mean(first), statistics.mean(last)
    return b / a - 1.0, {"from_s": start_s, "rss_mib_start": a / 2**20, "rss_mib_end": b / 2**20}

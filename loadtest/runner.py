"""The load generator proper: N concurrent HTTP clients issue M OpenAI completion requests, timing each one.

It speaks only HTTP (httpx, async) and imports nothing else of the project, so it can be pointed at any
OpenAI-compatible server. Usage from code (benchmarks/throughput.py does this):

    cfg = LoadConfig(url="http://127.0.0.1:8000", concurrency=16, requests=64, stream=True)
    report = run(cfg)                      # or: await run_load(cfg) inside an event loop
    report.summary()["tokens_per_s"]

Timing: a request's clock starts just before it is sent. With streaming, time to first token is the arrival of
the first SSE event that carries generated text, and inter-token latency is the gap between successive such
events (a chunk carrying several tokens counts once: that is what a client sees). Generated tokens come from
the server's `usage` (requested with `stream_options.include_usage`); a stream without usage falls back to
counting text-bearing chunks, and the report says how many requests did.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from loadtest.stats import SSEParser, error_kind, gaps, parse_event_data, read_chunk, summarize

DEFAULT_PROMPTS = (
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about the sea.",
    "What is 17 times 23? Show your steps.",
    "List three uses of a paperclip.",
)


@dataclass
class LoadConfig:
    """One load run. `requests` bounds the run; `duration` (seconds) optionally stops issuing new requests earlier."""

    url: str
    concurrency: int = 1
    requests: int = 16
    duration: float | None = None
    stream: bool = False
    endpoint: str = "completions"  # "completions" -> /v1/completions, "chat" -> /v1/chat/completions
    prompts: list = field(default_factory=lambda: list(DEFAULT_PROMPTS))  # str, or {"prompt"} / {"messages"} dicts
    max_tokens: int = 16
    model: str = "brainstacks"
    temperature: float = 0.0
    api_key: str | None = None
    admin_key: str | None = None
    reload_every: float | None = None  # seconds between POST /admin/reload calls while the load runs
    timeout: float = 120.0  # seconds, whole request (connect + all chunks)
    extra_body: dict = field(default_factory=dict)  # merged into every request body (e.g. {"ignore_eos": true})

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency={self.concurrency} must be >= 1")
        if self.requests < 1:
            raise ValueError(f"requests={self.requests} must be >= 1")
        if self.duration is not None and self.duration <= 0:
            raise ValueError(f"duration={self.duration} must be > 0")
        if self.reload_every is not None and self.reload_every <= 0:
            raise ValueError(f"reload_every={self.reload_every} must be > 0")
        if self.timeout <= 0:
            raise ValueError(f"timeout={self.timeout} must be > 0")
        if self.endpoint not in ("completions", "chat"):
            raise ValueError(f"endpoint={self.endpoint!r} must be 'completions' or 'chat'")
        if not self.prompts:
            raise ValueError("prompts is empty")


@dataclass
class RequestResult:
    """One request's outcome. Times are seconds; `t_start` is relative to the start of the run."""

    index: int
    t_start: float
    latency_s: float
    ok: bool
    status: int | None = None
    error: str | None = None  # bucket, see stats.error_kind
    message: str | None = None  # first 200 characters of the error detail
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    usage_reported: bool = False
    chunks: int = 0
    bundle_version: int | None = None


@dataclass
class ReloadResult:
    """One POST /admin/reload made during the run."""

    t: float
    latency_s: float
    result: str  # "ok" or an error bucket
    status: int | None = None
    version: int | None = None
    message: str | None = None


@dataclass
class LoadReport:
    """Everything a run measured; `summary()` condenses it into the reported figures."""

    config: LoadConfig
    wall_s: float
    results: list[RequestResult]
    reloads: list[ReloadResult]

    def summary(self) -> dict:
        ok = [r for r in self.results if r.ok]
        errors: dict[str, int] = {}
        for r in self.results:
            if not r.ok:
                errors[r.error or "unknown"] = errors.get(r.error or "unknown", 0) + 1
        gen = sum(r.completion_tokens for r in ok)
        wall = self.wall_s if self.wall_s > 0 else float("nan")
        reload_by: dict[str, int] = {}
        for rl in self.reloads:
            reload_by[rl.result] = reload_by.get(rl.result, 0) + 1
        versions = sorted({r.bundle_version for r in ok if r.bundle_version is not None})
        return {
            "requests": len(self.results),
            "ok": len(ok),
            "errors": len(self.results) - len(ok),
            "errors_by_kind": dict(sorted(errors.items())),
            "wall_s": self.wall_s,
            "requests_per_s": len(ok) / wall,
            "generated_tokens": gen,
            "prompt_tokens": sum(r.prompt_tokens for r in ok),
            "tokens_per_s": gen / wall,
            "usage_missing": sum(1 for r in ok if not r.usage_reported),
            "latency_s": summarize([r.latency_s for r in ok]),
            "ttft_s": summarize([r.ttft_s for r in ok if r.ttft_s is not None]),
            "itl_s": summarize([g for r in ok for g in r.itl_s]),
            "reloads": {
                "attempted": len(self.reloads),
                "ok": reload_by.get("ok", 0),
                "failed": len(self.reloads) - reload_by.get("ok", 0),
                "by_result": dict(sorted(reload_by.items())),
            },
            "bundle_versions_seen": versions,
        }

    def to_dict(self) -> dict:
        cfg = asdict(self.config)
        cfg.pop("api_key", None)
        cfg.pop("admin_key", None)
        cfg["prompts"] = len(self.config.prompts)
        return {
            "config": cfg,
            "summary": self.summary(),
            "reloads": [asdict(r) for r in self.reloads],
            "requests": [asdict(r) for r in self.results],
        }


def load_prompts(path: str | Path) -> list:
    """Prompts from a file: JSONL objects with "prompt" or "messages", or else one plain-text prompt per line."""
    out: list = []
    for lineno, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg}") from e
            if not isinstance(obj.get("prompt"), str) and not isinstance(obj.get("messages"), list):
                raise ValueError(f"{path}:{lineno}: object has neither a 'prompt' string nor a 'messages' list")
            out.append(obj)
        else:
            out.append(line)
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def build_body(cfg: LoadConfig, index: int) -> tuple[str, dict]:
    """(path, JSON body) of request `index`: prompts are used round-robin."""
    item = cfg.prompts[index % len(cfg.prompts)]
    body: dict = {"model": cfg.model, "max_tokens": cfg.max_tokens, "temperature": cfg.temperature}
    if cfg.endpoint == "chat":
        if isinstance(item, dict) and "messages" in item:
            body["messages"] = item["messages"]
        else:
            text = item["prompt"] if isinstance(item, dict) else item
            body["messages"] = [{"role": "user", "content": text}]
        path = "/v1/chat/completions"
    else:
        if isinstance(item, dict) and "prompt" not in item:
            body["prompt"] = "\n".join(m.get("content", "") for m in item["messages"])
        else:
            body["prompt"] = item["prompt"] if isinstance(item, dict) else item
        path = "/v1/completions"
    if isinstance(item, dict) and isinstance(item.get("body"), dict):
        body.update(item["body"])  # per-prompt request fields (e.g. one request's `weights`, or a peer's `lora`)
    if cfg.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(cfg.extra_body)
    return path, body


def _apply_usage(res: RequestResult, usage: dict | None) -> None:
    if usage is None:
        return
    res.usage_reported = True
    res.completion_tokens = int(usage.get("completion_tokens") or 0)
    res.prompt_tokens = int(usage.get("prompt_tokens") or 0)


async def _send_stream(client: httpx.AsyncClient, path: str, body: dict, headers: dict, res: RequestResult,
                       t0: float) -> None:
    async with client.stream("POST", path, json=body, headers=headers) as resp:
        res.status = resp.status_code
        if resp.status_code >= 400:
            res.error = error_kind(status=resp.status_code)
            res.message = (await resp.aread()).decode("utf-8", "replace")[:200]
            return
        parser = SSEParser()
        token_times: list[float] = []
        usage = None
        done = False

        def handle(ev) -> bool:
            nonlocal usage, done
            info = parse_event_data(ev.data)
            if info is None:
                done = True
                return True
            res.chunks += 1
            if info.error is not None:
                res.error, res.message = "stream_error", info.error[:200]
                return True
            if info.text:
                token_times.append(time.perf_counter())
            if info.usage is not None:
                usage = info.usage
            if info.bundle_version is not None:
                res.bundle_version = info.bundle_version
            return False

        async for line in resp.aiter_lines():
            ev = parser.feed(line)
            if ev is not None and handle(ev):
                break
        else:
            tail = parser.flush()
            if tail is not None:
                handle(tail)
        if res.error is not None:
            return
        if not done:
            res.error = "incomplete_stream"
            res.message = "stream ended without data: [DONE]"
            return
        if token_times:
            res.ttft_s = token_times[0] - t0
            res.itl_s = gaps(token_times)
        _apply_usage(res, usage)
        if usage is None:
            res.completion_tokens = len(token_times)


async def _send_plain(client: httpx.AsyncClient, path: str, body: dict, headers: dict, res: RequestResult) -> None:
    resp = await client.post(path, json=body, headers=headers)
    res.status = resp.status_code
    if resp.status_code >= 400:
        res.error = error_kind(status=resp.status_code)
        res.message = resp.text[:200]
        return
    try:
        payload = resp.json()
    except json.JSONDecodeError as e:
        res.error, res.message = "bad_json", str(e)[:200]
        return
    info = read_chunk(payload)
    if info.error is not None:
        res.error, res.message = "response_error", info.error[:200]
        return
    res.bundle_version = info.bundle_version
    _apply_usage(res, info.usage)


async def send_one(client: httpx.AsyncClient, cfg: LoadConfig, index: int, run_t0: float) -> RequestResult:
    """Issue request `index` and time it. Never raises (except cancellation): failures become error buckets."""
    path, body = build_body(cfg, index)
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    t0 = time.perf_counter()
    res = RequestResult(index=index, t_start=t0 - run_t0, latency_s=0.0, ok=False)
    try:
        if cfg.stream:
            coro = _send_stream(client, path, body, headers, res, t0)
        else:
            coro = _send_plain(client, path, body, headers, res)
        await asyncio.wait_for(coro, timeout=cfg.timeout)
    except Exception as e:  # any failure of one request is data, not a crash of the run
        res.error = error_kind(exc=e)
        res.message = (str(e) or type(e).__name__)[:200]
    res.latency_s = time.perf_counter() - t0
    res.ok = res.error is None
    return res


async def _reloader(client: httpx.AsyncClient, cfg: LoadConfig, stop: asyncio.Event, run_t0: float,
                    out: list[ReloadResult], before_reload: Callable[[], None] | None) -> None:
    headers = {"Authorization": f"Bearer {cfg.admin_key}"} if cfg.admin_key else {}
    assert cfg.reload_every is not None
    while True:
        try:
            await asyncio.wait_for(stop.wait(), timeout=cfg.reload_every)
            return  # the load finished first
        except asyncio.TimeoutError:
            pass
        t0 = time.perf_counter()
        rec = ReloadResult(t=t0 - run_t0, latency_s=0.0, result="ok")
        try:
            if before_reload is not None:
                await asyncio.to_thread(before_reload)
            resp = await asyncio.wait_for(client.post("/admin/reload", headers=headers), timeout=cfg.timeout)
            rec.status = resp.status_code
            if resp.status_code >= 400:
                rec.result = error_kind(status=resp.status_code)
                rec.message = resp.text[:200]
            else:
                try:
                    payload = resp.json()
                except json.JSONDecodeError:
                    payload = {}
                if isinstance(payload, dict):
                    v = payload.get("bundle_version", payload.get("version"))
                    rec.version = v if isinstance(v, int) else None
        except Exception as e:
            rec.result = error_kind(exc=e)
            rec.message = (str(e) or type(e).__name__)[:200]
        rec.latency_s = time.perf_counter() - t0
        out.append(rec)


async def run_load(cfg: LoadConfig, before_reload: Callable[[], None] | None = None,
                   transport: httpx.AsyncBaseTransport | None = None) -> LoadReport:
    """Run the load described by `cfg` and return its report.

    `before_reload` (optional) runs in a thread before each reload POST: a benchmark uses it to publish a new
    bundle version so that every reload really swaps. `transport` lets tests use an in-process ASGI app.
    """
    limits = httpx.Limits(max_connections=cfg.concurrency + 2, max_keepalive_connections=cfg.concurrency + 2)
    timeout = httpx.Timeout(cfg.timeout)
    results: list[RequestResult] = []
    reloads: list[ReloadResult] = []
    next_index = 0
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=cfg.url, limits=limits, timeout=timeout, transport=transport) as client:
        run_t0 = time.perf_counter()
        deadline = run_t0 + cfg.duration if cfg.duration is not None else None

        async def worker() -> None:
            nonlocal next_index
            while next_index < cfg.requests and (deadline is None or time.perf_counter() < deadline):
                index = next_index
                next_index += 1
                results.append(await send_one(client, cfg, index, run_t0))

        reload_task = None
        if cfg.reload_every is not None:
            reload_task = asyncio.create_task(_reloader(client, cfg, stop, run_t0, reloads, before_reload))
        try:
            await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
        finally:
            wall = max((r.t_start + r.latency_s for r in results), default=0.0)
            stop.set()
            if reload_task is not None:
                await reload_task
    results.sort(key=lambda r: r.index)
    return LoadReport(config=cfg, wall_s=wall, results=results, reloads=reloads)


def run(cfg: LoadConfig, before_reload: Callable[[], None] | None = None) -> LoadReport:
    """Synchronous wrapper around run_load (own event loop)."""
    return asyncio.run(run_load(cfg, before_reload=before_reload))

"""Fault matrix (issue 9, items 2 and 3) against a real uvicorn server: transactional reloads, engine health, the
engine's failure containment, queue hygiene and shutdown. Faults are injected deterministically: the model thread is
held at a step boundary with `engine.call(gate.wait)`, and library functions are patched to raise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import load_file

from server.app import create_app
from server.settings import ServerSettings

from .conftest import build_bundle

ROOT = Path(__file__).resolve().parents[2]


def metric(url: str, name: str, **labels) -> float:
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(name)


def until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `cond` (bounded), never a sleep standing in for an event."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def fingerprint(url: str) -> dict:
    """The same temperature-0 completions, with logprobs, routed and with every stack on."""
    out = {}
    for model in ("brainstacks", "brainstacks:all"):
        r = httpx.post(url + "/v1/completions", json={"model": model, "prompt": "two plus two", "max_tokens": 8,
                                                      "temperature": 0, "logprobs": 2}, timeout=60)
        assert r.status_code == 200, r.text
        c = r.json()["choices"][0]
        out[model] = (c["text"], c["logprobs"]["token_logprobs"], r.json()["brainstacks"])
    return out


# ---------------------------------------------------------------------------------------------------- item 2
class Versions:
    """Writes new versions of a served bundle: a new domain "legal" (from math's stack) with a router over all."""

    def __init__(self, bundle: Path):
        self.bundle = bundle
        self.v1 = json.loads((bundle / "manifest.json").read_text())
        self.version = self.v1["version"]
        self.hidden = self.v1["base"]["fingerprint"]["hidden_size"]

    def write(self, tensors=lambda t: t, router_domains=None) -> int:
        from brainstacks.bundle import DomainEntry, Manifest, save_router, save_stack, write_manifest
        from brainstacks.router import MetaRouter

        self.version += 1
        base = load_file(str(self.bundle / "stacks/math/0/stack.safetensors"))
        rel = save_stack(self.bundle, "legal", 0, tensors({k: v.clone() for k, v in base.items()}))  # sha matches
        m = Manifest.from_dict({**self.v1, "version": self.version}, "v1")
        m.domains.append(DomainEntry("legal", [rel]))
        doms = router_domains if router_domains is not None else m.domain_names
        m.router = save_router(self.bundle, MetaRouter(self.hidden, doms), rel=f"router/v{self.version}")
        write_manifest(self.bundle, m)
        return self.version


def nan_first(t: dict) -> dict:
    k = sorted(t)[0]
    t[k].view(-1)[0] = float("nan")
    return t


@pytest.fixture()
def served(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "bundle", core_base_dir)
    app = create_app(ServerSettings(bundle=str(bundle), quantize="none", max_tokens_limit=400))
    return live_server_factory(app), app, bundle


def test_poisoned_reloads_answer_409_and_serving_stays_bit_identical(served, monkeypatch):
    s, app, bundle = served
    before = fingerprint(s.url)
    stacked = app.state.bs.runner.stacked
    packed = {p: (lay.AW.clone(), lay.BT.clone()) for p, lay in stacked.layers.items()}
    stacks_before = httpx.get(s.url + "/admin/stacks").json()
    vs = Versions(bundle)

    def truncated() -> int:
        v = vs.write()
        raw = (bundle / "manifest.json").read_bytes()
        (bundle / "manifest.json").write_bytes(raw[: len(raw) // 2])  # a writer that did not replace it atomically
        return v

    def oom_while_packing() -> int:
        from brainstacks.layer import StackedLinear

        calls = {"n": 0}
        real = StackedLinear.pack

        def pack(self, stacks):
            calls["n"] += 1
            if calls["n"] == 3:  # part-way through the layers
                raise torch.OutOfMemoryError("simulated: out of memory while packing")
            return real(self, stacks)

        monkeypatch.setattr(StackedLinear, "pack", pack)
        return vs.write()

    cases = [
        (lambda: vs.write(nan_first), "non-finite"),
        (lambda: vs.write(lambda t: {k: v.float() for k, v in t.items()}),
         "is float32, the bundle's stacks are bfloat16"),
        (truncated, "corrupt JSON"),
        (lambda: vs.write(router_domains=["math", "code"]), "missing ['legal']"),
        (oom_while_packing, "OutOfMemoryError"),
    ]
    for make, reason in cases:
        make()
        r = httpx.post(s.url + "/admin/reload", timeout=60)
        assert r.status_code == 409, (reason, r.text)
        err = r.json()["error"]
        assert err["code"] == "bundle_refused" and any(reason in x for x in err["reasons"]), (reason, err)
        assert err["bundle_version"] == 1
        assert fingerprint(s.url) == before, reason  # the same temperature-0 completions, logprobs included
        assert httpx.get(s.url + "/admin/stacks").json() == stacks_before
        assert httpx.get(s.url + "/health").json()["bundle_version"] == 1
    for p, lay in stacked.layers.items():  # the serving tensors themselves are untouched
        assert torch.equal(lay.AW, packed[p][0]) and torch.equal(lay.BT, packed[p][1]), p
    assert metric(s.url, "brainstacks_reloads_total", result="refused") == len(cases)
    assert metric(s.url, "brainstacks_reloads_total", result="ok") == 0

    monkeypatch.undo()  # the same kind of version, valid, goes through: the refusals left nothing behind
    v = vs.write()
    r = httpx.post(s.url + "/admin/reload", timeout=60).json()
    assert r["result"] == "ok" and r["bundle_version"] == v and r["added"] == ["legal"]
    again = httpx.post(s.url + "/v1/completions", json={"model": "brainstacks:math", "prompt": "two plus two",
                                                         "max_tokens": 8, "temperature": 0}).json()
    assert again["brainstacks"]["weights"]["legal"] == 0.0 and again["brainstacks"]["bundle_version"] == v


def test_watch_snapshots_content_and_retries_a_refused_version_when_it_changes(tmp_path, core_base_dir,
                                                                              live_server_factory):
    bundle = build_bundle(tmp_path / "bundle", core_base_dir)
    s = live_server_factory(create_app(ServerSettings(bundle=str(bundle), quantize="none", watch=True,
                                                      watch_interval=0.1)))
    vs = Versions(bundle)
    vs.write(nan_first)  # v2, poisoned: refused once, and not retried while the manifest stays the same
    until(lambda: metric(s.url, "brainstacks_reloads_total", result="refused") == 1, what="the refusal")
    assert httpx.get(s.url + "/health").json()["bundle_version"] == 1
    vs.version -= 1
    vs.write()  # v2 again, repaired: the same version number, other content -> tried again, and served
    until(lambda: httpx.get(s.url + "/health").json()["bundle_version"] == 2, what="the repaired v2")
    assert metric(s.url, "brainstacks_reloads_total", result="refused") == 1
    assert "legal" in httpx.get(s.url + "/health").json()["domains"]


# ---------------------------------------------------------------------------------------------------- item 3
def hold(app) -> threading.Event:
    """Hold the model thread at its next step boundary until the returned gate is set."""
    gate = threading.Event()
    app.state.bs.engine.call(lambda: gate.wait(60))
    return gate


def post_async(url: str, body: dict, out: list, timeout: float = 60) -> threading.Thread:
    def go():
        try:
            out.append(httpx.post(url + "/v1/completions", json=body, timeout=timeout))
        except httpx.HTTPError as e:
            out.append(e)

    t = threading.Thread(target=go)
    t.start()
    return t


def test_forty_dropped_streams_leave_no_running_or_waiting_rows(served):
    s, app, _ = served
    got: list[int] = []

    def drop_after_two_chunks():
        with httpx.stream("POST", s.url + "/v1/completions", timeout=60,
                          json={"prompt": "x", "max_tokens": 300, "stream": True}) as r:
            n = 0
            for line in r.iter_lines():
                n += line.startswith("data: ")
                if n == 2:
                    break
            got.append(n)

    threads = [threading.Thread(target=drop_after_two_chunks) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(got) == 40
    deadline = time.monotonic() + 3.0  # the bound: both gauges back to 0 within 3 s
    while (metric(s.url, "brainstacks_running_requests"), metric(s.url, "brainstacks_waiting_requests")) != (0, 0):
        assert time.monotonic() < deadline, "rows of dropped streams are still counted"
        time.sleep(0.05)


def test_clients_that_time_out_while_queued_leave_the_queue(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "b", core_base_dir)
    app = create_app(ServerSettings(bundle=str(bundle), quantize="none", max_batch=1, max_waiting=4))
    s = live_server_factory(app)
    engine = app.state.bs.engine
    gate = hold(app)
    try:
        gone: list = []
        for _ in range(3):  # three clients give up while queued
            post_async(s.url, {"prompt": "x", "max_tokens": 4}, gone, timeout=0.5).join()
        assert all(isinstance(x, httpx.TimeoutException) for x in gone)
        until(lambda: engine.waiting_rows == 0, what="the cancelled requests to leave the queue")
        assert metric(s.url, "brainstacks_waiting_requests") == 0
        fresh: list = []
        threads = [post_async(s.url, {"prompt": "x", "max_tokens": 4}, fresh) for _ in range(4)]
        until(lambda: engine.waiting_rows == 4, what="four fresh requests queued")
    finally:
        gate.set()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in fresh] == [200] * 4  # no 429: the queue held only live requests


def test_a_request_that_waits_past_max_queue_wait_fails_with_503(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "b", core_base_dir)
    app = create_app(ServerSettings(bundle=str(bundle), quantize="none", max_queue_wait=0.2))
    s = live_server_factory(app)
    engine = app.state.bs.engine
    gate = hold(app)
    out: list = []
    try:
        t = post_async(s.url, {"prompt": "x", "max_tokens": 4}, out)
        until(lambda: engine.waiting_rows == 1, what="a queued request")
        time.sleep(0.4)  # the request itself waits past 0.2 s (the engine's stall clock starts before it arrives)
    finally:
        gate.set()
    t.join(60)
    assert out[0].status_code == 503 and out[0].json()["error"]["code"] == "queue_timeout"
    assert httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_admission_keeps_the_kv_token_budget(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "b", core_base_dir)
    app = create_app(ServerSettings(bundle=str(bundle), quantize="none", max_batch=8, kv_token_budget=64))
    s = live_server_factory(app)
    engine = app.state.bs.engine
    seen: list[int] = []
    real = engine._decode

    def decode():
        seen.append(engine.running_rows)
        real()

    engine._decode = decode
    gate = hold(app)
    out: list = []
    try:  # each row reserves prompt (2-3 tokens) + 24: two fit in 64, three do not
        threads = [post_async(s.url, {"prompt": "x", "max_tokens": 24}, out) for _ in range(5)]
        until(lambda: engine.waiting_rows == 5, what="five queued requests")
    finally:
        gate.set()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in out] == [200] * 5
    assert seen and max(seen) == 2  # the batch filled up to the budget, never beyond


def test_a_row_whose_sampling_fails_fails_alone(served, monkeypatch):
    s, app, _ = served
    import server.batch as batch

    real = batch.sample_batch

    def sample_batch(logits, params, gens, histories=None, select=None):
        if any(p.seed == 13 for p in params):
            raise ValueError("simulated sampling failure")
        return real(logits, params, gens, histories, select)

    monkeypatch.setattr(batch, "sample_batch", sample_batch)
    engine = app.state.bs.engine
    gate = hold(app)
    out: list = []
    try:  # three rows admitted together, one of them poisoned
        threads = [post_async(s.url, {"prompt": "x", "max_tokens": 6, "seed": seed, "user": str(seed)}, out)
                   for seed in (1, 13, 2)]
        until(lambda: engine.waiting_rows == 3, what="three queued requests")
    finally:
        gate.set()
    for t in threads:
        t.join(60)
    codes = sorted(r.status_code for r in out)
    assert codes == [200, 200, 500], [r.text for r in out]
    bad = next(r for r in out if r.status_code == 500)
    assert "sampling failed" in bad.json()["error"]["message"]
    assert engine.health()["ready"]


def test_a_failed_cache_merge_leaves_the_running_batch_intact(served, monkeypatch):
    s, app, _ = served
    from brainstacks import kvcache

    body = {"prompt": "two plus two", "max_tokens": 120, "temperature": 0, "stream": True}

    def stream_text(after_first=None) -> str:
        text = []
        with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    text.append(json.loads(line[6:])["choices"][0]["text"] if json.loads(line[6:])["choices"] else "")
                    if after_first is not None and len(text) == 1:
                        after_first()
                        after_first = None
        return "".join(text)

    reference = stream_text()  # alone
    engine = app.state.bs.engine
    out: list = []
    assert app.state.bs.runner.decode_path == "fused"  # SlotKV; EagerKV's extend builds everything before assigning
    calls = {"n": 0}

    def copy_rows(self, other, start):
        calls["n"] += 1
        self.K[:, start : start + other.rows].fill_(1e4)  # part-way: keys written (masked: never read), then a failure
        raise RuntimeError("simulated: out of memory while merging caches")

    def join_a_newcomer():
        gate = hold(app)
        try:
            out.append(post_async(s.url, {"prompt": "x", "max_tokens": 4}, out))
            until(lambda: engine.waiting_rows == 1, what="the newcomer queued")
            monkeypatch.setattr(kvcache.SlotKV, "_copy_rows", copy_rows)
        finally:
            gate.set()

    assert stream_text(join_a_newcomer) == reference  # the running row never noticed
    out.pop(0).join(60)
    assert calls["n"] >= 1 and out[0].status_code == 500


def test_ready_goes_503_when_steps_keep_failing_and_recovers(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "b", core_base_dir)
    app = create_app(ServerSettings(bundle=str(bundle), quantize="none", ready_failed_steps=2))
    s = live_server_factory(app)
    runner = app.state.bs.runner
    real = runner.prefill, runner.decode

    def broken(*a, **k):
        raise RuntimeError("simulated device failure")

    runner.prefill = runner.decode = broken
    for _ in range(2):
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    ready = httpx.get(s.url + "/health/ready")
    assert ready.status_code == 503 and "steps failed" in ready.json()["error"]["message"]
    assert httpx.get(s.url + "/health").status_code == 503  # /health reflects readiness
    assert httpx.get(s.url + "/health/live").status_code == 200
    runner.prefill, runner.decode = real
    assert httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
    assert httpx.get(s.url + "/health/ready").status_code == 200


def test_ready_goes_503_when_the_engine_is_stuck(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "b", core_base_dir)
    app = create_app(ServerSettings(bundle=str(bundle), quantize="none", ready_stuck_seconds=0.3))
    s = live_server_factory(app)
    assert httpx.get(s.url + "/health/ready").status_code == 200
    gate = hold(app)  # the model thread hangs in a call
    out: list = []
    try:
        t = post_async(s.url, {"prompt": "x", "max_tokens": 2}, out)
        until(lambda: httpx.get(s.url + "/health/ready").status_code == 503, what="ready to go 503")
        assert "no engine step finished" in httpx.get(s.url + "/health/ready").json()["error"]["message"]
        assert httpx.get(s.url + "/health/live").status_code == 200
    finally:
        gate.set()
    t.join(60)
    assert out[0].status_code == 200
    until(lambda: httpx.get(s.url + "/health/ready").status_code == 200, what="ready again")


def test_a_stuck_engine_cannot_hold_a_reload_forever(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "b", core_base_dir)
    app = create_app(ServerSettings(bundle=str(bundle), quantize="none", engine_call_timeout=0.5))
    s = live_server_factory(app)
    Versions(bundle).write()
    gate = hold(app)
    try:
        r = httpx.post(s.url + "/admin/reload", timeout=60)
    finally:
        gate.set()
    assert r.status_code == 409 and "did not take the call within 0.5 s" in r.json()["error"]["message"]
    assert httpx.get(s.url + "/health").json()["bundle_version"] == 1
    assert httpx.post(s.url + "/admin/reload", timeout=60).json()["result"] == "ok"  # the lock was released


def test_ready_goes_503_when_the_engine_thread_dies(served):
    s, app, _ = served

    class Die(BaseException):  # not an Exception: nothing in the step catches it, so the thread itself ends
        pass

    def dying(*a, **k):
        raise Die()

    app.state.bs.runner.prefill = app.state.bs.runner.decode = dying
    r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=60)
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"  # in flight: told, not left hanging
    until(lambda: not app.state.bs.engine._thread.is_alive(), what="the thread to end")
    ready = httpx.get(s.url + "/health/ready")
    assert ready.status_code == 503 and "engine thread is dead" in ready.json()["error"]["message"]
    assert httpx.get(s.url + "/health").status_code == 503
    assert httpx.get(s.url + "/health/live").status_code == 200
    assert httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 503


def test_sigterm_ends_open_streams_with_an_error_event_then_done(tmp_path, core_base_dir):
    bundle = build_bundle(tmp_path / "bundle", core_base_dir)
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BRAINSTACKS_MAX_TOKENS_LIMIT": "480"}
    proc = subprocess.Popen([sys.executable, "-m", "brainstacks_cli", "serve", "--bundle", str(bundle), "--port",
                             str(port), "--quantize", "none", "--drain-timeout", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, "the server exited"
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        until(up, timeout=120, what="the server")
        results: list[list[str]] = []
        started = threading.Barrier(4)

        def stream():
            with httpx.stream("POST", url + "/v1/completions", timeout=60,
                              json={"prompt": "x", "max_tokens": 480, "stream": True}) as r:
                lines = r.iter_lines()
                got = [next(ln for ln in lines if ln.startswith("data: "))]
                started.wait(30)
                got += [ln for ln in lines if ln.startswith("data: ")]
                results.append(got)

        threads = [threading.Thread(target=stream) for _ in range(3)]
        for t in threads:
            t.start()
        started.wait(30)  # every stream is open and has its first chunk
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(results) == 3
    for lines in results:
        assert lines[-1] == "data: [DONE]"  # ended, not cut
        last = json.loads(lines[-2][6:])
        assert last.get("error", {}).get("code") == "shutting_down" or last["choices"][0]["finish_reason"], last
    assert any("error" in json.loads(lines[-2][6:]) for lines in results)


def test_the_openai_client_raises_on_a_stream_that_ends_with_an_error_event(tmp_path, core_base_dir,
                                                                            live_server_factory):
    """What a real client does with the error event + [DONE] ending: the SDK raises APIError naming the cause
    (not a JSON error, not a silent short answer)."""
    import openai

    bundle = build_bundle(tmp_path / "b", core_base_dir)
    app = create_app(ServerSettings(bundle=str(bundle), quantize="none", request_timeout=0.5))
    s = live_server_factory(app)
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
    gate = hold(app)
    try:
        with pytest.raises(openai.APIError, match="timed out"):
            for _ in client.completions.create(model="brainstacks", prompt="x", max_tokens=8, stream=True):
                pass
        with pytest.raises(openai.InternalServerError, match="timed out"):  # non-streaming: the 503 envelope
            client.completions.create(model="brainstacks", prompt="x", max_tokens=8)
    finally:
        gate.set()


def test_watch_acts_on_a_change_only_once_it_has_settled():
    """A writer caught half-way (content b, then c a moment later) is not reloaded at b: the watcher waits for the
    same content on two checks in a row, then reloads once; unchanged content is never reloaded again."""
    import asyncio

    from server.registry import watch

    class Scripted:  # the two things watch() asks of a registry, driven by a script of content stamps
        seen_manifest = "a"

        def __init__(self):
            self.script = iter(["a", "b", "c", "c", "c", None, "c", "d", "d"])
            self.reloads = []
            self.stop = asyncio.Event()

        def manifest_stamp(self):
            try:
                self.current = next(self.script)
            except StopIteration:
                self.stop.set()
            return self.current

        async def reload(self):
            self.reloads.append(self.current)

    async def go():
        reg = Scripted()
        await asyncio.wait_for(watch(reg, 0.001, reg.stop), 10)
        return reg.reloads

    assert asyncio.run(go()) == ["c", "d"]

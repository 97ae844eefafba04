"""loadtest end to end against a real HTTP server on a loopback port (uvicorn in a thread).

The server here is a small FastAPI app speaking OpenAI's completion shapes, with switches to misbehave
(an error status, a stream cut before [DONE], an in-band error), so every error bucket is exercised
over real sockets. test_loadtest_server.py runs loadtest against the project's own server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from loadtest import LoadConfig, format_table, plot_latency, run, write_json
from loadtest.__main__ import main as loadtest_main


def make_app() -> FastAPI:
    app = FastAPI()
    state = {"version": 1, "reloads": 0}

    def err(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"error": {"message": msg, "type": "invalid_request_error", "param": None,
                                       "code": None}}, status_code=status)

    @app.post("/v1/completions")
    async def completions(req: Request):
        body = await req.json()
        n_tok = int(body.get("max_tokens", 16))
        prompt = body["prompt"]
        if body.get("model") == "missing" or prompt == "404":
            return err(404, "model not found")
        if req.headers.get("authorization") not in (None, "Bearer k"):
            return err(401, "bad key")
        ext = {"weights": {"a": 1.0}, "bundle_version": state["version"]}
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": n_tok,
                 "total_tokens": len(prompt.split()) + n_tok}
        if not body.get("stream"):
            await asyncio.sleep(0.002 * n_tok)
            return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "text": " tok" * n_tok, "finish_reason": "length", "logprobs": None}],
                    "usage": usage, "brainstacks": ext}

        async def gen():
            for i in range(n_tok):
                await asyncio.sleep(0.002)
                if prompt == "cut" and i == 2:
                    return  # connection ends without [DONE]
                if prompt == "inband" and i == 2:
                    yield "data: " + json.dumps({"error": {"message": "engine failed", "type": "server_error"}})
                    yield "\n\n"
                    return
                chunk = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "text": " tok", "finish_reason": None, "logprobs": None}],
                         "brainstacks": ext}
                yield f"data: {json.dumps(chunk)}\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield "data: " + json.dumps({"id": "cmpl-1", "object": "text_completion", "choices": [],
                                             "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    @app.post("/admin/reload")
    async def reload(req: Request):
        if req.headers.get("authorization") != "Bearer admin":
            return err(401, "admin key required")
        state["version"] += 1
        state["reloads"] += 1
        return {"reloaded": True, "bundle_version": state["version"]}

    app.state.fake = state
    return app


@pytest.fixture(scope="module")
def server():
    app = make_app()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert th.is_alive() and time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", app.state.fake
    srv.should_exit = True
    th.join(timeout=10)


def test_streaming_run_measures_tokens_ttft_itl_and_reloads(server, tmp_path):
    url, state = server
    before = state["reloads"]
    cfg = LoadConfig(url=url, concurrency=4, requests=24, stream=True, max_tokens=8, prompts=["hello there"],
                     reload_every=0.05, admin_key="admin", api_key="k")
    report = run(cfg)
    s = report.summary()
    assert s["requests"] == 24 and s["ok"] == 24 and s["errors"] == 0
    assert s["generated_tokens"] == 24 * 8 and s["usage_missing"] == 0
    assert s["prompt_tokens"] == 24 * 2
    assert s["ttft_s"]["count"] == 24
    assert s["itl_s"]["count"] == 24 * 7  # 8 text chunks -> 7 gaps per request
    assert 0 < s["ttft_s"]["p50"] <= s["latency_s"]["p50"]
    assert s["tokens_per_s"] == pytest.approx(s["generated_tokens"] / s["wall_s"])
    # the server sleeps >= 16 ms per request and runs 6 rounds of 4: the run lasts >= 96 ms > one 50 ms period
    assert s["reloads"]["attempted"] >= 1 and s["reloads"]["failed"] == 0
    assert state["reloads"] - before == s["reloads"]["attempted"]
    assert all(r.version is not None for r in report.reloads)
    assert s["bundle_versions_seen"] and min(s["bundle_versions_seen"]) >= 1

    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    write_json(report, out_json)
    plot_latency(report, out_png)
    data = json.loads(out_json.read_text())
    assert data["summary"]["ok"] == 24 and len(data["requests"]) == 24
    assert "api_key" not in data["config"] and "admin_key" not in data["config"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(report)
    assert "inter-token" in table and "reloads" in table


def test_errors_are_bucketed_by_kind(server):
    url, _ = server
    prompts = ["ok prompt", "404", "cut", "inband"]
    report = run(LoadConfig(url=url, concurrency=2, requests=8, stream=True, max_tokens=5, prompts=prompts))
    s = report.summary()
    assert s["ok"] == 2 and s["errors"] == 6
    assert s["errors_by_kind"] == {"http_404": 2, "incomplete_stream": 2, "stream_error": 2}
    assert s["generated_tokens"] == 2 * 5  # failed requests add no tokens
    failed = {r.index % 4: r for r in report.results if not r.ok}
    assert failed[1].status == 404 and "model not found" in failed[1].message
    assert failed[3].message == "engine failed"


def test_non_streaming_wrong_key_and_admin_failures(server):
    url, _ = server
    report = run(LoadConfig(url=url, concurrency=2, requests=4, max_tokens=3, api_key="wrong"))
    assert report.summary()["errors_by_kind"] == {"http_401": 4}
    report = run(LoadConfig(url=url, concurrency=1, requests=6, max_tokens=10, reload_every=0.01))
    s = report.summary()
    assert s["ok"] == 6 and s["generated_tokens"] == 60 and s["ttft_s"]["count"] == 0
    assert s["reloads"]["attempted"] >= 1 and s["reloads"]["ok"] == 0
    assert set(s["reloads"]["by_result"]) == {"http_401"}


def test_connection_refused_is_an_exception_bucket():
    import socket

    with socket.socket() as sock:  # a port nobody listens on: bind, read it, close
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = run(LoadConfig(url=f"http://127.0.0.1:{port}", concurrency=2, requests=3, timeout=5))
    assert report.summary()["errors_by_kind"] == {"ConnectError": 3}


def test_cli_writes_json_and_png_and_exit_status(server, tmp_path, capsys):
    url, _ = server
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one two\nthree four five\n")
    out_json, out_png = tmp_path / "cli.json", tmp_path / "cli.png"
    rc = loadtest_main(["--url", url, "--concurrency", "3", "--requests", "9", "--stream", "--max-tokens", "4",
                        "--prompts", str(prompts), "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    assert "throughput" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert data["summary"]["generated_tokens"] == 36 and data["config"]["concurrency"] == 3
    assert out_png.stat().st_size > 1000
    assert loadtest_main(["--url", url, "--requests", "2", "--model", "missing"]) == 1
    assert loadtest_main(["--url", url, "--requests", "0"]) == 2

"""Bad input, auth, limits, queue-full and not-ready: each answers a 4xx/503 in OpenAI's envelope, and the server
keeps serving (httpx against a real uvicorn server)."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import httpx
import pytest

from server.app import create_app
from server.loading import load_runner
from server.settings import ServerSettings

from .conftest import LiveServer, build_bundle

API, ADMIN = "sk-test-api", "sk-test-admin"


@pytest.fixture(scope="module")
def server(tmp_path_factory, core_base_dir):
    bundle = build_bundle(tmp_path_factory.mktemp("err") / "bundle", core_base_dir)
    settings = ServerSettings(bundle=str(bundle), quantize="none", api_key=API, admin_key=ADMIN, max_tokens_limit=32,
                              max_n=4, max_prompt_tokens=64)
    s = LiveServer(create_app(settings)).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {API}"}) as c:
        yield c


def assert_envelope(r: httpx.Response, status: int, code: str | None = None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def ok(http):
    r = http.post("/v1/completions", json={"prompt": "two plus two", "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_api_key_guards_v1(server):
    assert_envelope(httpx.post(server.url + "/v1/completions", json={"prompt": "x"}), 401, "invalid_api_key")
    assert_envelope(httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {API}"}).status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200  # ops endpoints stay open


def test_admin_key_guards_admin_and_debug(server, http):
    for method, path in (("GET", "/admin/stacks"), ("POST", "/admin/reload"), ("POST", "/debug/route"),
                         ("GET", "/debug/requests/x")):
        assert_envelope(http.request(method, path, json={}), 401)  # the API key is not the admin key
    r = httpx.post(server.url + "/debug/route", json={"prompt": "two plus two"},
                   headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and set(r.json()["weights"]) == {"math", "code"}


@pytest.mark.parametrize("body,status,code", [
    ({"prompt": ""}, 400, None),
    ({"prompt": ["ok", ""]}, 400, None),
    ({"messages": []}, 400, None),
    ({"prompt": "x", "max_tokens": 33}, 400, None),
    ({"prompt": "x", "max_tokens": 0}, 400, None),
    ({"prompt": "x", "max_tokens": -5}, 400, None),
    ({"prompt": "x", "max_tokens": 10**30}, 400, None),
    ({"prompt": "x", "max_tokens": "many"}, 400, None),
    ({"prompt": "x", "n": 5}, 400, None),
    ({"prompt": "x", "n": 0}, 400, None),
    ({"prompt": "x", "temperature": -1}, 400, None),
    ({"prompt": "x", "temperature": "hot"}, 400, None),
    ({"prompt": "x", "top_p": 1.5}, 400, None),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, None),
    ({"prompt": "x", "stop": [""]}, 400, None),
    ({"prompt": "x", "logprobs": 6}, 400, None),
    ({"prompt": "x", "weights": {"poetry": 1.0}}, 400, "unknown_domain"),
    ({"prompt": "x", "weights": {"math": 2.0}}, 400, None),
    ({"prompt": "x", "weights": {"math": "high"}}, 400, None),
    ({"prompt": "x", "unknown_field": 1}, 400, None),
    ({"prompt": "x", "model": "brainstacks:poetry"}, 404, "model_not_found"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model_not_found"),
    ({"prompt": [999999]}, 400, None),
    ({"prompt": "word " * 100}, 400, "context_length_exceeded"),
    ({"prompt": "x", "presence_penalty": 2.5}, 400, None),
    ({"prompt": "x", "frequency_penalty": "high"}, 400, None),
    ({"prompt": "x", "echo": 0}, 400, None),
    ({"prompt": "x", "echo": True, "logprobs": 1}, 400, "unsupported_parameter"),
    ({"prompt": "x", "max_tokens": "5"}, 400, None),
    ({"prompt": None}, 400, None),
    ({}, 400, None),
])
def test_bad_completion_requests(http, body, status, code):
    assert_envelope(http.post("/v1/completions", json=body), status, code)


def test_context_length_with_max_tokens(http, server):
    # prompt within the prompt limit, but prompt + max_tokens beyond the model's 512 positions is refused
    app_state = server.app.state.bs
    app_state.runner.max_model_len, old = 40, app_state.runner.max_model_len
    try:
        err = assert_envelope(http.post("/v1/completions", json={"prompt": "word " * 20, "max_tokens": 30}), 400)
        assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    finally:
        app_state.runner.max_model_len = old


@pytest.mark.parametrize("body,status", [
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": 1}, 400),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400),
    ({"messages": "hi"}, 400),
])
def test_bad_chat_requests(http, body, status):
    assert_envelope(http.post("/v1/chat/completions", json=body), status)


def test_malformed_json_and_invalid_utf8(http):
    h = {"content-type": "application/json"}
    assert_envelope(http.post("/v1/completions", content=b'{"prompt": "x",', headers=h), 400)
    assert_envelope(http.post("/v1/completions", content=b'{"prompt": "\xff\xfe\xfa"}', headers=h), 400)
    assert_envelope(http.post("/v1/completions", content=b"[1, 2]", headers=h), 400)
    assert_envelope(http.post("/v1/completions", content=b'{"prompt": "x", "max_tokens": NaN}', headers=h), 400)
    ok(http)


def test_unknown_paths_and_methods(http):
    assert_envelope(http.get("/v1/nothing"), 404)
    assert_envelope(http.get("/v1/completions"), 405)
    assert_envelope(http.get("/debug/requests/nope", headers={"Authorization": f"Bearer {ADMIN}"}), 404,
                    "request_not_found")
    ok(http)


def test_request_id_is_the_servers_and_the_clients_is_recorded(http):
    r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers={"X-Request-Id": "abc-123"})
    rid = r.headers["x-request-id"]
    assert rid != "abc-123" and len(rid) == 32
    rec = http.get(f"/debug/requests/{rid}", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert rec["id"] == r.json()["id"] and rec["client_request_id"] == "abc-123"
    r = http.post("/v1/completions", json={"prompt": ""}, headers={"X-Request-Id": "bad id with spaces"})
    assert len(r.headers["x-request-id"]) == 32


def test_queue_full_answers_429_with_retry_after(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "b", core_base_dir)
    s = live_server_factory(create_app(ServerSettings(bundle=str(bundle), quantize="none", max_batch=1, max_waiting=1,
                                                      max_tokens_limit=400, retry_after=3)))
    body = {"prompt": "two plus two", "max_tokens": 300, "temperature": 1.0}
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        rs = list(ex.map(lambda _: httpx.post(s.url + "/v1/completions", json=body, timeout=120), range(4)))
    codes = sorted(r.status_code for r in rs)
    assert codes.count(429) >= 1 and codes.count(200) >= 1, codes
    for r in rs:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "3"
            assert_envelope(r, 429, "queue_full")
    assert httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_503_until_loaded_then_ready(tmp_path, core_base_dir):
    bundle = build_bundle(tmp_path / "b", core_base_dir)
    gate = threading.Event()

    def slow_factory(settings):
        gate.wait(60)
        return load_runner(settings)

    app = create_app(ServerSettings(bundle=str(bundle), quantize="none"), runner_factory=slow_factory)
    s = LiveServer(app).start_unready()
    try:
        r = httpx.get(s.url + "/health", timeout=2)
        assert_envelope(r, 503, "not_ready")
        assert "retry-after" in r.headers
        assert_envelope(httpx.post(s.url + "/v1/completions", json={"prompt": "x"}), 503)
        gate.set()
        assert app.state.bs.loaded.wait(60) and app.state.bs.ready
        assert httpx.get(s.url + "/health").status_code == 200
    finally:
        gate.set()
        s.stop()


def test_load_failure_reports_503_with_reason(tmp_path):
    app = create_app(ServerSettings(bundle=str(tmp_path / "missing"), quantize="none"))
    s = LiveServer(app).start_unready()
    try:
        assert app.state.bs.loaded.wait(60)
        err = assert_envelope(httpx.get(s.url + "/health"), 503)
        assert "manifest" in err["message"]
    finally:
        s.stop()


def test_disconnected_stream_frees_its_slot(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "b", core_base_dir)
    app = create_app(ServerSettings(bundle=str(bundle), quantize="none", max_batch=1, max_tokens_limit=400,
                                    max_waiting=4))
    s = live_server_factory(app)
    engine = app.state.bs.engine
    gate = threading.Event()
    runner, decode = app.state.bs.runner, app.state.bs.runner.decode

    def slow_decode(*a, **k):  # 400 steps take >= 2 s, so a loaded machine's client still sees the row running
        time.sleep(0.005)
        return decode(*a, **k)

    runner.decode = slow_decode
    # a greedy prompt that runs to max_tokens (no EOS), so only the disconnect can end it early
    prompt = next(p for p in ("two plus two", "the patient", "def add", "what is", "blood", "code", "sum")
                  if httpx.post(s.url + "/v1/completions", timeout=60, json={"prompt": p, "max_tokens": 400,
                                "temperature": 0}).json()["choices"][0]["finish_reason"] == "length")
    with httpx.stream("POST", s.url + "/v1/completions", timeout=60,
                      json={"prompt": prompt, "max_tokens": 400, "stream": True, "temperature": 0}) as r:
        next(ln for ln in r.iter_lines() if ln.startswith("data: "))
        # the first chunk can leave as soon as the row is routed, before its prefill: wait until it runs
        deadline = time.monotonic() + 30
        while engine.running_rows != 1:
            assert time.monotonic() < deadline, "the streamed row never started running"
            time.sleep(0.01)
        engine.call(gate.wait)  # hold the model thread at the next step boundary, so the row cannot finish first
        assert engine.running_rows == 1
    threading.Timer(0.5, gate.set).start()  # the disconnect is noticed while the engine is held
    # the client is gone: its row leaves at the next step, and the single slot serves the next request
    r2 = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=60)
    assert r2.status_code == 200
    hist = [v for v in app.state.bs.history.recent() if v["finish_reasons"] == ["cancelled"]]
    assert hist and 0 < hist[0]["usage"]["completion_tokens"] < 400


def test_request_timeout_answers_an_error_not_length(tmp_path, core_base_dir, live_server_factory):
    """A request that runs past request_timeout fails (503 "timeout"; in a stream: an error event, then [DONE]),
    never a 200 with finish_reason "length" that a client would take for a complete answer."""
    bundle = build_bundle(tmp_path / "b", core_base_dir)
    app = create_app(ServerSettings(bundle=str(bundle), quantize="none", request_timeout=0.5, max_tokens_limit=400))
    s = live_server_factory(app)
    gate = threading.Event()
    app.state.bs.engine.call(gate.wait)  # the engine makes no progress until released: the request must time out
    try:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 400}, timeout=60)
        with httpx.stream("POST", s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 400, "stream": True},
                          timeout=60) as st:
            lines = [ln for ln in st.iter_lines() if ln.startswith("data: ")]
    finally:
        gate.set()
    assert r.status_code == 503 and r.json()["error"]["code"] == "timeout"
    assert st.status_code == 200 and lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["error"]["code"] == "timeout"


def test_oversized_body_is_refused(http):
    assert_envelope(http.post("/v1/completions", content=b'{"prompt": "' + b"a" * (9 * 1024 * 1024) + b'"}',
                              headers={"content-type": "application/json"}), 413, "payload_too_large")

    def chunks():
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    r = http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and "error" in r.json()
    ok(http)


def test_a_library_error_answers_500_in_the_envelope_with_its_class_as_code(server, monkeypatch):
    """A brainstacks.errors.BrainstacksError reaching a route (here a malformed bundle pointer) is mapped by
    server/errors.py: 500 server_error, code from its class, its own message; the server keeps serving."""
    from brainstacks.errors import BundleError

    reg = server.app.state.bs.registry

    def broken():
        raise BundleError("BUNDLE/CURRENT: not a version number")

    monkeypatch.setattr(reg, "describe", broken)
    err = assert_envelope(httpx.get(server.url + "/admin/stacks", headers={"Authorization": f"Bearer {ADMIN}"}), 500,
                          "bundle_error")
    assert err["type"] == "server_error" and err["message"] == "BUNDLE/CURRENT: not a version number"
    monkeypatch.undo()
    assert httpx.get(server.url + "/admin/stacks", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200

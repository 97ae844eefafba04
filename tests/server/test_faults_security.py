"""Fault matrix, secure by default (issue 9, item 1): one test per rule, against a real uvicorn server on loopback or,
for clients that are not loopback, the ASGI app itself with a fake client address (no traffic leaves 127.0.0.1).

Rules: /admin, /debug and /metrics refuse a missing key when the API key is set; with no key at all /admin and
/debug answer loopback clients only; keys are checked before the body is read; the default body limit is 1 MiB;
prompt characters are capped before tokenizing; /debug/route is bounded like a request and tokenizes off the event
loop; debug records are keyed by server-made ids only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import httpx
import pytest

from server import api
from server.app import create_app
from server.middleware import GuardMiddleware, is_loopback, path_policy, security_warnings
from server.settings import ServerSettings

from .conftest import build_bundle

API, ADMIN = "sk-fault-api", "sk-fault-admin"
GUARDED = (("GET", "/admin/stacks"), ("POST", "/admin/reload"), ("POST", "/debug/route"), ("GET", "/debug/requests/x"),
           ("GET", "/debug/requests"), ("GET", "/metrics"))


def envelope(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(err) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


@pytest.fixture(scope="module")
def api_only(tmp_path_factory, core_base_dir):
    """A server with only BRAINSTACKS_API_KEY set, a small prompt-character cap and a short request timeout."""
    from .conftest import LiveServer

    bundle = build_bundle(tmp_path_factory.mktemp("sec") / "bundle", core_base_dir)
    s = LiveServer(create_app(ServerSettings(bundle=str(bundle), quantize="none", api_key=API, max_prompt_chars=200,
                                             max_prompt_tokens=64, max_tokens_limit=16, request_timeout=5.0))).start()
    yield s
    s.stop()


def auth(key: str = API) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_admin_debug_and_metrics_need_the_api_key_when_only_it_is_set(api_only):
    for method, path in GUARDED:
        body = {"prompt": "x"} if method == "POST" else None
        envelope(httpx.request(method, api_only.url + path, json=body), 401, "invalid_api_key")
        envelope(httpx.request(method, api_only.url + path, json=body, headers=auth("wrong")), 401)
    assert httpx.get(api_only.url + "/admin/stacks", headers=auth()).status_code == 200
    assert httpx.get(api_only.url + "/metrics", headers=auth()).text.startswith("# HELP")
    r = httpx.post(api_only.url + "/debug/route", json={"prompt": "two plus two"}, headers=auth())
    assert r.status_code == 200 and set(r.json()["weights"]) == {"math", "code"}
    assert httpx.get(api_only.url + "/health").status_code == 200  # probes stay open


def test_admin_key_is_required_on_admin_when_set_and_accepted_on_v1(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "b", core_base_dir)
    s = live_server_factory(create_app(ServerSettings(bundle=str(bundle), quantize="none", api_key=API,
                                                      admin_key=ADMIN)))
    envelope(httpx.get(s.url + "/admin/stacks", headers=auth(API)), 401)  # the API key is not the admin key
    assert httpx.get(s.url + "/admin/stacks", headers=auth(ADMIN)).status_code == 200
    assert httpx.get(s.url + "/v1/models", headers=auth(ADMIN)).status_code == 200
    assert httpx.get(s.url + "/metrics", headers=auth(ADMIN)).status_code == 200


def test_with_no_keys_admin_and_debug_answer_loopback_clients_only():
    # the ASGI app directly, no lifespan: the guard answers before any route; a route it lets through answers 503
    # (not loaded), which tells "passed the guard" from "refused"
    app = create_app(ServerSettings(bundle="/nonexistent", quantize="none"))

    async def status(client: tuple[str, int], method: str, path: str) -> int:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as c:
            r = await c.request(method, path, json={"prompt": "x"} if method == "POST" else None)
            if r.status_code == 403:
                assert r.json()["error"]["code"] == "loopback_only" and r.json()["error"]["type"] == "permission_error"
            return r.status_code

    for client in (("10.1.2.3", 5000), ("192.168.1.20", 1), ("::ffff:10.0.0.1", 2), ("2001:db8::1", 3),
                   ("testclient", 4)):
        for method, path in GUARDED[:5]:
            assert asyncio.run(status(client, method, path)) == 403, (client, path)
        assert asyncio.run(status(client, "GET", "/v1/models")) == 503  # /v1 is open when no API key is set
        assert asyncio.run(status(client, "GET", "/metrics")) == 200  # so is /metrics (it follows /v1)
    for client in (("127.0.0.1", 5000), ("127.8.9.10", 1), ("::1", 2), ("::ffff:127.0.0.1", 3)):
        for method, path in GUARDED[:5]:
            assert asyncio.run(status(client, method, path)) == 503, (client, path)


def test_loopback_and_path_policy_units():
    assert is_loopback("127.0.0.1") and is_loopback("127.255.0.1") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.2")
    for host in ("10.0.0.1", "0.0.0.0", "::", "localhost", "", None, "128.0.0.1", "::2"):
        assert not is_loopback(host), host
    assert path_policy("/admin/reload") == path_policy("/debug/route") == path_policy("/debugx") == "admin"
    assert path_policy("/v1/models") == path_policy("/metrics") == path_policy("/nothing") == "api"
    assert path_policy("/health") == path_policy("/health/ready") == path_policy("/") == "open"


def test_binding_a_non_loopback_host_without_keys_warns(caplog):
    assert security_warnings(ServerSettings(host="127.0.0.1")) == []
    assert security_warnings(ServerSettings(host="::1")) == []
    assert security_warnings(ServerSettings(host="0.0.0.0", api_key=API)) == []
    with caplog.at_level(logging.WARNING, logger="brainstacks.server"):
        create_app(ServerSettings(host="0.0.0.0", quantize="none"))
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("SECURITY" in m and "0.0.0.0" in m and "/v1" in m for m in msgs), msgs
    assert any("loopback clients only" in m for m in msgs), msgs


def test_keys_are_checked_before_the_body_is_read(api_only):
    # the guard alone, with a receive that counts: a refused request never pulls a byte
    reached = []

    async def inner(scope, receive, send):
        reached.append(scope["path"])

    guard = GuardMiddleware(inner, ServerSettings(api_key=API))
    pulls = []
    sent = []

    async def receive():
        pulls.append(1)
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    async def send(message):
        sent.append(message)

    headers = [(b"authorization", b"Bearer wrong"), (b"content-length", str(2 << 20).encode())]
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": headers,
             "client": ("127.0.0.1", 1)}
    asyncio.run(guard(scope, receive, send))
    assert pulls == [] and reached == [] and sent[0]["status"] == 401
    sent.clear()  # a websocket is refused the same way (policy violation), before the app sees it

    async def connect():
        return {"type": "websocket.connect"}

    ws = {"type": "websocket", "path": "/admin/stacks", "headers": [], "client": ("10.1.2.3", 1)}
    asyncio.run(GuardMiddleware(inner, ServerSettings())(ws, connect, send))
    assert sent == [{"type": "websocket.close", "code": 1008}] and reached == []
    # over a real socket: a 2 MiB body with a wrong key is 401 (not 413: the limit is only looked at after the key)
    big = b'{"prompt": "' + b"a" * (2 << 20) + b'"}'
    t0 = time.perf_counter()
    r = httpx.post(api_only.url + "/v1/completions", content=big, headers={**auth("wrong"),
                                                                         "content-type": "application/json"})
    envelope(r, 401, "invalid_api_key")
    assert time.perf_counter() - t0 < 30
    # the connection is still usable afterwards: the server keeps serving
    assert httpx.get(api_only.url + "/v1/models", headers=auth()).status_code == 200


def test_default_body_limit_is_one_mib(api_only):
    assert ServerSettings().max_body_bytes == 1024 * 1024
    over = b'{"prompt": "' + b"a" * (1024 * 1024) + b'"}'
    h = {**auth(), "content-type": "application/json"}
    envelope(httpx.post(api_only.url + "/v1/completions", content=over, headers=h), 413, "payload_too_large")

    def chunked():  # no Content-Length: the guard counts while it reads and stops past the limit
        yield b'{"prompt": "'
        for _ in range(4):
            yield b"a" * (512 * 1024)
        yield b'"}'

    envelope(httpx.post(api_only.url + "/v1/completions", content=chunked(), headers=h), 413, "payload_too_large")
    under = b'{"prompt": "' + b"a" * (1000 * 1000) + b'"}'  # within the body limit: the prompt cap answers
    envelope(httpx.post(api_only.url + "/v1/completions", content=under, headers=h), 400, "prompt_too_long")


def test_prompt_characters_are_capped_before_tokenizing(api_only, monkeypatch):
    calls = []
    real = api.encode_prompt
    monkeypatch.setattr(api, "encode_prompt", lambda tok, text: calls.append(len(text)) or real(tok, text))
    h = auth()
    err = envelope(httpx.post(api_only.url + "/v1/completions", json={"prompt": "a" * 201}, headers=h), 400,
                   "prompt_too_long")
    assert err["param"] == "prompt" and "200" in err["message"]
    err = envelope(httpx.post(api_only.url + "/v1/completions", json={"prompt": ["ok", "b" * 201]}, headers=h), 400)
    assert err["param"] == "prompt.1"
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "c" * 201}]
    err = envelope(httpx.post(api_only.url + "/v1/chat/completions", json={"messages": msgs}, headers=h), 400,
                   "prompt_too_long")
    assert err["param"] == "messages.1.content"
    assert calls == []  # nothing was tokenized
    r = httpx.post(api_only.url + "/v1/completions", json={"prompt": "a" * 20, "max_tokens": 2}, headers=h)
    assert r.status_code == 200 and calls == [20]


def test_debug_route_is_bounded_like_a_request_and_tokenizes_off_the_loop(api_only, monkeypatch):
    import server.routes.debug as debug_routes

    where = []
    real = debug_routes.encode_prompt

    def spy(tok, text):
        try:
            asyncio.get_running_loop()
            where.append("event loop")
        except RuntimeError:
            where.append("worker")
        return real(tok, text)

    monkeypatch.setattr(debug_routes, "encode_prompt", spy)
    url, h = api_only.url + "/debug/route", auth()
    assert httpx.post(url, json={"prompt": "two plus two"}, headers=h).status_code == 200
    assert where == ["worker"]
    envelope(httpx.post(url, json={"prompt": "a" * 201}, headers=h), 400, "prompt_too_long")
    envelope(httpx.post(url, json={"prompt": "x " * 90}, headers=h), 400, "context_length_exceeded")
    assert where == ["worker", "worker"]  # the character cap answered before tokenizing
    # the model thread is held: routing cannot run, and the request ends at request_timeout instead of hanging
    gate = threading.Event()
    api_only.app.state.bs.engine.call(gate.wait)
    try:
        t0 = time.perf_counter()
        r = httpx.post(url, json={"prompt": "two plus two"}, headers=h, timeout=60)
        took = time.perf_counter() - t0
        assert httpx.get(api_only.url + "/v1/models", headers=h, timeout=5).status_code == 200  # the loop is free
    finally:
        gate.set()
    envelope(r, 503, "timeout")
    assert 4.0 < took < 30


def test_client_request_id_cannot_overwrite_another_requests_record(api_only):
    h = auth()
    a = httpx.post(api_only.url + "/v1/completions", json={"prompt": "two plus two", "max_tokens": 2, "user": "alice"},
                   headers={**h, "X-Request-Id": "alice-1"})
    a_rid, a_id = a.headers["x-request-id"], a.json()["id"]
    assert a_rid != "alice-1"
    for forged in (a_rid, a_id, "alice-1"):
        b = httpx.post(api_only.url + "/v1/completions", json={"prompt": "def add", "max_tokens": 2, "user": "mallory"},
                       headers={**h, "X-Request-Id": forged})
        assert b.status_code == 200 and b.headers["x-request-id"] not in (a_rid, forged)
    for key in (a_rid, a_id):
        rec = httpx.get(api_only.url + f"/debug/requests/{key}", headers=h).json()
        assert rec["id"] == a_id and rec["user"] == "alice" and rec["client_request_id"] == "alice-1"
    envelope(httpx.get(api_only.url + "/debug/requests/alice-1", headers=h), 404, "request_not_found")

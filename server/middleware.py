"""The two pure-ASGI layers in front of every route (streams pass through untouched), and the key rules.

`GuardMiddleware` (inner) checks the bearer key from the path and the `Authorization` header alone, before any byte of
the body is read, then reads the body up to `max_body_bytes` (413 beyond, by Content-Length or while counting a
chunked body) and replays it to the app. /v1 and /metrics need the API key (or the admin key) when one is set; /admin
and /debug need the admin key when set, else the API key when set, else they answer loopback clients only (403 for
others). /health*, / and the OpenAPI pages are open. Its refusals are errors of server/errors.py.

`AccessMiddleware` (outer) gives every request a server-made X-Request-Id (a client's own is logged and kept in the
debug record, never used as a key), counts it in the request metrics, and logs it as one JSON line (logger
`brainstacks.access`), refusals included.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import time
import uuid

from server.errors import APIError, forbidden, payload_too_large, unauthorized
from server.metrics import Metrics
from server.settings import ServerSettings

access_log = logging.getLogger("brainstacks.access")

_RID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _bearer(scope) -> str | None:
    for k, v in scope.get("headers", []):
        if k == b"authorization":
            h = v.decode("latin-1")
            return h[7:].strip() if h[:7].lower() == "bearer " else None
    return None


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped forms; False for anything else (names, None)."""
    if not host:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def security_warnings(settings: ServerSettings) -> list[str]:
    """What is exposed by binding `settings.host` with the keys set (logged loudly at startup)."""
    if settings.host == "localhost" or is_loopback(settings.host):
        return []
    out = []
    if settings.api_key is None:
        out.append(f"binding {settings.host} with no BRAINSTACKS_API_KEY: /v1 and /metrics are open to every client "
                   "that can reach this address")
    if settings.api_key is None and settings.admin_key is None:
        out.append("no BRAINSTACKS_ADMIN_KEY or BRAINSTACKS_API_KEY: /admin and /debug answer loopback clients only "
                   "(set a key to use them remotely)")
    return out


def _check(token: str | None, *keys: str | None) -> bool:
    if token is None:
        return False
    return any(k is not None and hmac.compare_digest(token.encode(), k.encode()) for k in keys)


class AccessMiddleware:
    """Pure ASGI (streams pass through untouched): request id, X-Request-Id header, JSON access log, request metrics."""

    ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/debug/route",
                 "/debug/requests", "/admin/stacks", "/admin/reload", "/", "/health/live", "/health/ready",
                 "/tokenize", "/detokenize", "/v1/load_lora_adapter", "/v1/unload_lora_adapter")

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    def _endpoint(self, path: str) -> str:
        if path in self.ENDPOINTS:
            return path
        if path.startswith("/debug/requests/"):
            return "/debug/requests/{id}"
        if path.startswith("/v1/models/"):
            return "/v1/models/{id}"
        if path.startswith("/admin/stacks/"):
            return "/admin/stacks/{domain}"
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = None
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                incoming = v.decode("latin-1")
        client_rid = incoming if incoming and _RID.match(incoming) else None
        rid = uuid.uuid4().hex  # always the server's own: debug records are keyed by it
        scope.setdefault("state", {})["request_id"] = rid
        scope["state"]["client_request_id"] = client_rid
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            self.metrics.requests.labels(endpoint=self._endpoint(path), status=str(status["code"])).inc()
            access_log.info(json.dumps({"event": "access", "request_id": rid, "client_request_id": client_rid,
                                        "method": scope.get("method"),
                                        "path": path, "status": status["code"],
                                        "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
                                        "client": (scope.get("client") or ["?"])[0]}))


ADMIN_V1_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})  # vLLM's names, admin's rules
OPEN_PATHS = frozenset({"/", "/health", "/health/live", "/health/ready", "/openapi.json", "/docs",
                        "/docs/oauth2-redirect", "/redoc", "/favicon.ico"})


def path_policy(path: str) -> str:
    """"admin" (/admin*, /debug*, vLLM's adapter loading under /v1), "open" (health, the page, its static files,
    the OpenAPI pages) or "api"
    (/v1, /metrics and anything else: an unknown path is guarded like /v1, so a new route is never open by accident)."""
    if path.startswith(("/admin", "/debug")) or path in ADMIN_V1_PATHS:
        return "admin"
    if path in OPEN_PATHS or path.startswith("/static/"):
        return "open"
    return "api"


class GuardMiddleware:
    """Pure ASGI, in front of every route: the key check (from the headers alone), then the body read up to
    `max_body_bytes` and replayed to the app. A refused request never has a byte of its body read."""

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        self.settings = settings

    def refusal(self, scope) -> APIError | None:
        s = self.settings
        policy = path_policy(scope.get("path", ""))
        if policy == "open":
            return None
        token = _bearer(scope)
        if policy == "admin":
            if s.admin_key is not None:
                return None if _check(token, s.admin_key) else unauthorized("Missing or invalid admin bearer token.")
            if s.api_key is not None:
                return None if _check(token, s.api_key) else unauthorized()
            client = scope.get("client")
            if is_loopback(client[0] if client else None):
                return None
            return forbidden("/admin and /debug answer loopback clients only when neither BRAINSTACKS_ADMIN_KEY nor "
                             "BRAINSTACKS_API_KEY is set.")
        if s.api_key is not None and not _check(token, s.api_key, s.admin_key):
            return unauthorized()
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and self.refusal(scope) is not None:  # none is served; refuse like http
            await receive()  # websocket.connect
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        err = self.refusal(scope)
        if err is not None:
            return await err.response()(scope, receive, send)
        limit = self.settings.max_body_bytes
        length = None
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                length = v
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await payload_too_large(limit).response()(scope, receive, send)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                return await payload_too_large(limit).response()(scope, receive, send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

"""Every error the HTTP API returns, in OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`.

Handlers registered by `install_error_handlers(app)` map our `APIError`s, FastAPI validation errors, HTTP errors and
any unexpected exception to that envelope, so a client never sees a traceback (unexpected ones are logged with it).
An invalid request is always 400 (OpenAI's status; never FastAPI's 422), with `param` naming the field at fault
(`max_tokens`, `messages.0.role`). Every error response the server sends is built here: the routes, the middleware
(401, 403, 413 before the body is read) and the streams (an error event) all take their `APIError` from this module.
A `brainstacks.errors.BrainstacksError` that reaches a route (a malformed bundle pointer, a config error) is a 500
`server_error` whose code names its class (`bundle_error`, `config_error`, ...) and whose message is its own (those
messages are written to be read: they name the file or value at fault).
"""

from __future__ import annotations

import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from brainstacks.errors import BrainstacksError

log = logging.getLogger("brainstacks.server")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope."""

    error: ErrorBody


class APIError(Exception):
    """An error with its HTTP status and OpenAI fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}
        self.extra = extra or {}  # more keys of the error object, after the four of OpenAI's envelope

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          **self.extra}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, "invalid_request_error", param, code)


def unauthorized(message: str = "Missing or invalid bearer token.") -> APIError:
    return APIError(401, message, "authentication_error", None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> APIError:
    return APIError(403, message, "permission_error", None, "loopback_only")


def payload_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body exceeds {limit} bytes (max_body_bytes).", "invalid_request_error", None,
                    "payload_too_large")


def not_ready(message: str = "The model is loading; try again shortly.") -> APIError:
    return APIError(503, message, "service_unavailable", None, "not_ready", {"Retry-After": "1"})


def queue_full(retry_after: int) -> APIError:
    return APIError(429, "Too many requests are waiting; retry later.", "rate_limit_error", None, "queue_full",
                    {"Retry-After": str(retry_after)})


def timed_out(what: str, timeout: float, retry_after: int) -> APIError:
    """503: `what` did not finish within request_timeout."""
    return APIError(503, f"{what} did not finish within request_timeout={timeout}s.", "server_error", None, "timeout",
                    {"Retry-After": str(retry_after)})


def aborted(error: str | None, code: str) -> APIError:
    """The engine gave up on a request (its error event's message and code): 503 when the server is shutting down,
    the engine is dead, the request waited too long for a slot or timed out; 500 for an internal failure."""
    code = code or ("shutting_down" if "shutting down" in (error or "") else "internal")
    if code in ("shutting_down", "engine_dead", "queue_timeout", "timeout"):
        return APIError(503, f"Generation aborted: {error}.", "server_error", None, code)
    return APIError(500, f"Generation failed: {error}.", "server_error", None, "internal_error")


def bundle_refused(reasons: list[str], bundle_version: int, replicas: dict | None = None) -> APIError:
    """409 for POST /admin/reload: the new version was refused (the old one keeps serving); the error object also
    carries the reasons, the version served and, under Ray Serve, each replica's result."""
    extra: dict = {"reasons": reasons, "bundle_version": bundle_version}
    if replicas is not None:
        extra["replicas"] = replicas
    return APIError(409, "Bundle refused: " + "; ".join(reasons), "invalid_request_error", None, "bundle_refused",
                    extra=extra)


def internal_error() -> APIError:
    return APIError(500, "Internal server error.", "server_error", None, "internal_error")


def library_error(exc: BrainstacksError) -> APIError:
    """500 for a typed library error (its class as the code: BundleError -> bundle_error)."""
    code = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
    return APIError(500, str(exc) or type(exc).__name__, "server_error", None, code)


# every status the API may answer besides 200, for the OpenAPI spec (schemathesis checks conformance)
ERROR_RESPONSES = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 429, 503)}
RELOAD_RESPONSES = {**ERROR_RESPONSES, 409: ERROR_RESPONSES[400]}  # POST /admin/reload: 409 when refused

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _loc(err: dict) -> str | None:
    """The field path of a pydantic error, without its location prefix and union-member tags:
    ("body", "stop", "list[constrained-str]", 0) -> "stop"; ("body", "messages", 0, "role") -> "messages.0.role"."""
    out: list[str] = []
    for i, x in enumerate(err.get("loc", ())):
        if i == 0 and x in ("body", "query", "path", "header"):
            continue
        if isinstance(x, int) or (isinstance(x, str) and x.isdigit()):
            out.append(str(x))
        elif isinstance(x, str) and _FIELD.match(x) and x not in _TAGS:
            out.append(x)
        else:  # a union tag such as "list[int]" or "function-after[...]": what follows is inside a type, not a field
            break
    return ".".join(out) or None


_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "tuple", "literal", "constrained_str"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return invalid("The request body is not valid JSON.", None, "invalid_json").response()
        msgs = []
        for e in errs[:5]:
            where = _loc(e) or "body"
            msgs.append(f"{where}: {e.get('msg', 'invalid value')}")
        # pydantic's messages can quote the input; keep them short and never include internals
        message = "; ".join(msgs)[:1000] or "Invalid request."
        return invalid(message, _loc(first), "invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        # keep the exception's headers: a 405 carries `Allow`
        return APIError(exc.status_code, str(exc.detail), "invalid_request_error", None,
                        codes.get(exc.status_code), dict(exc.headers or {})).response()

    @app.exception_handler(BrainstacksError)
    async def _library(request: Request, exc: BrainstacksError):
        log.error("%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
        return library_error(exc).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return internal_error().response()


def sse_error(exc: APIError) -> str:
    """An error as one SSE event (a stream that already started cannot change its status code)."""
    return f"data: {json.dumps(exc.body())}\n\n"

"""Every error the HTTP API returns, in OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`.

Handlers registered by `install_error_handlers(app)` map our `APIError`s, FastAPI validation errors, HTTP errors and
any unexpected exception to that envelope, so a client never sees a traceback (unexpected ones are logged with it).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

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
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, "invalid_request_error", param, code)


def unauthorized(message: str = "Missing or invalid bearer token.") -> APIError:
    return APIError(401, message, "authentication_error", None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})


def not_ready(message: str = "The model is loading; try again shortly.") -> APIError:
    return APIError(503, message, "service_unavailable", None, "not_ready", {"Retry-After": "1"})


def queue_full(retry_after: int) -> APIError:
    return APIError(429, "Too many requests are waiting; retry later.", "rate_limit_error", None, "queue_full",
                    {"Retry-After": str(retry_after)})


# every status the API may answer besides 200, for the OpenAPI spec (schemathesis checks conformance)
ERROR_RESPONSES = {s: {"model": ErrorResponse} for s in (400, 401, 404, 422, 429, 503)}


def _loc(err: dict) -> str | None:
    loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path")]
    return ".".join(loc) or None


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
        return APIError(422, message, "invalid_request_error", _loc(first), "invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        return APIError(exc.status_code, str(exc.detail), "invalid_request_error", None,
                        codes.get(exc.status_code)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return APIError(500, "Internal server error.", "server_error", None, "internal_error").response()


def sse_error(exc: APIError) -> str:
    """An error as one SSE event (a stream that already started cannot change its status code)."""
    return f"data: {json.dumps(exc.body())}\n\n"

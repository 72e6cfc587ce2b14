"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

Every failure a client can cause is an `APIError` raised where it is detected; the handlers here
turn those, FastAPI's validation errors (422 by default, 400 here as in the OpenAI API, malformed
JSON included), unknown routes and unexpected exceptions into that one shape, so the official
clients raise their typed exceptions (BadRequestError, NotFoundError, RateLimitError, ...).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type = type or _TYPES.get(status, "server_error")
        self.param, self.code = param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def validation_error(exc: RequestValidationError) -> APIError:
    """The first problem, named the way a user wrote it (`max_tokens`, `messages.0.role`)."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request")
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    kind = first.get("type")
    if kind == "json_invalid" or (not loc and isinstance(first.get("input"), (bytes, str))):
        reason = (first.get("ctx") or {}).get("error", "not JSON")
        return APIError(400, f"We could not parse the JSON body of your request ({reason}). The body must be a "
                        "JSON object, sent with Content-Type: application/json.", code="invalid_json")
    if not loc and kind == "missing":
        return APIError(400, "the request has no body; expected a JSON object", code="invalid_json")
    if not loc and kind in ("model_attributes_type", "dict_type", "model_type"):
        return APIError(400, "the request body must be a JSON object", code="invalid_json")
    param = _param(loc)
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    others = {_param([str(x) for x in e.get("loc", ()) if x != "body"]) for e in errors[1:]} - {param}
    more = f" (and problems with {', '.join(sorted(str(o) for o in others))})" if others else ""
    return APIError(400, f"{param + ': ' if param else ''}{msg}{more}", param=param, code="invalid_value")


def _param(loc: list[str]) -> str | None:
    """`prompt.list[int]` -> `prompt`: union members add their type to the path, the user's field
    is what came before."""
    parts = []
    for x in loc:
        if not x.isidentifier() and not x.isdigit():
            break
        if x in ("str", "int", "float", "bool"):
            break
        parts.append(x)
    return ".".join(parts) or None


def install(app: FastAPI, on_error: Callable[[str, int], None] | None = None) -> None:
    """Register the handlers; `on_error(path, status)` is told of every client error (metrics)."""

    def respond(request: Request, exc: APIError) -> JSONResponse:
        if on_error is not None:
            on_error(request.url.path, exc.status)
        return error_response(exc)

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return respond(request, APIError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return respond(request, APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error"))

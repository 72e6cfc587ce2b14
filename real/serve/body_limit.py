"""A request-body limit enforced before anything parses the body.

An ASGI middleware, because the JSON parser must never see an oversized body: a 50 MB body
parsed on the shared event loop stalls every stream for seconds and keeps the memory. A declared
Content-Length over the limit is answered 413 at once, without reading the body; a chunked body
is counted as it arrives and cut off at the limit (413 as well), so no more than `max_bytes`
(plus one chunk) is ever buffered.
"""
from __future__ import annotations

import json

from starlette.exceptions import HTTPException

from real.serve.errors import APIError

TOO_LARGE = 413


def too_large(max_bytes: int) -> APIError:
    return APIError(TOO_LARGE, f"the request body exceeds this server's limit of {max_bytes} bytes",
                    type="invalid_request_error", code="request_too_large")


class BodyLimit:
    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _respond(send, APIError(400, "malformed Content-Length header", code="invalid_request"))
                return
            if size > self.max_bytes:
                await _respond(send, too_large(self.max_bytes))
                return
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException, as FastAPI turns any other error while reading a body into
                    # a generic 400; the app's handler answers it in the OpenAI shape.
                    raise HTTPException(TOO_LARGE, too_large(self.max_bytes).message)
            return message

        await self.app(scope, counted, send)


async def _respond(send, exc: APIError) -> None:
    body = json.dumps(exc.body()).encode()
    await send({"type": "http.response.start", "status": exc.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

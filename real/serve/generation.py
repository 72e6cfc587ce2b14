"""From an admitted Run to what the client receives: text deltas, whole answers, SSE streams.

Disconnects: a streaming response watches the connection (Starlette cancels the body iterator
when the client goes away) and `EventStream` always closes both the body iterator and the Run,
even if the stream never started; a non-streaming request races the generation against the
connection (`until_disconnect`) and cancels it when the client leaves first. Either way the Run's
close releases the request on every engine, so its pages are freed within a round trip.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

from starlette.requests import Request as HTTPRequest
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core_api.errors import EngineDown
from real.serve.detokenizer import TextStream
from real.serve.errors import APIError, error_body
from real.serve.responses import SSE_DONE, Shape, sse, usage
from real.serve.router import Run

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


def as_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineDown):
        return APIError(503, f"engine unavailable: {exc}", "service_unavailable", code="engine_down")
    return APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")


async def deltas(run: Run, text: TextStream) -> AsyncIterator[tuple[str, str | None]]:
    """(text, finish_reason) pieces; finish_reason only on the last. A stop string ends the stream
    here, and leaving `aclosing` closes the Run's chunks, which releases the request."""
    async with aclosing(run.chunks()) as chunks:
        async for chunk in chunks:
            piece = text.push(chunk.token_ids)
            if text.stopped:
                run.status, run.finish_reason = "ok", "stop"
                yield piece, "stop"
                return
            if chunk.finished:
                yield piece + text.flush(), _finish_reason(chunk.finish_reason)
                return
            if piece:
                yield piece, None
    raise RuntimeError(f"the strategy's stream for {run.req.id} ended without a finished chunk")


def _finish_reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length") else (reason or "stop")


async def whole(run: Run, text: TextStream, shape: Shape) -> dict:
    parts, reason = [], None
    try:
        async for piece, reason in deltas(run, text):
            parts.append(piece)
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as exc:  # noqa: BLE001 - any engine failure becomes an OpenAI error
        raise as_api_error(exc) from None
    return shape.whole("".join(parts), reason, usage(run.req.prompt_len, run.num_tokens))


async def events(run: Run, text: TextStream, shape: Shape, include_usage: bool,
                 continuous_usage: bool = False) -> AsyncIterator[bytes]:
    """SSE body. Failures after the headers went out become an `error` event (the openai client
    raises it as APIError), then `[DONE]`. With `continuous_usage` (vLLM's
    stream_options.continuous_usage_stats) every chunk carries the usage so far."""

    def so_far() -> dict | None:
        return usage(run.req.prompt_len, run.num_tokens) if continuous_usage else None

    try:
        if shape.chat:
            yield sse(shape.chunk("", None, role=True, use=so_far()))
        async for piece, reason in deltas(run, text):
            if piece or reason:
                yield sse(shape.chunk(piece, reason, use=so_far()))
        if include_usage:
            yield sse(shape.usage_chunk(usage(run.req.prompt_len, run.num_tokens)))
    except Exception as exc:  # noqa: BLE001 - reported in-band: the status line is already sent
        err = as_api_error(exc)
        yield sse(error_body(err.message, err.type, err.param, err.code))
    yield SSE_DONE


class EventStream(StreamingResponse):
    """text/event-stream whose body iterator and `on_close` always run to their end, whatever
    way the response ends (done, client gone, server shutdown, never started)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], headers: dict) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self.on_close()


async def until_disconnect(request: HTTPRequest, work: Awaitable):
    """Await `work` unless the client disconnects first; then cancel it and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientGone()
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)


async def _disconnected(request: HTTPRequest) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

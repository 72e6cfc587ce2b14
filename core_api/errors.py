"""What an engine call can fail with: one vocabulary, raised alike by the simulated and the real
engines, so a strategy catches the same exception whichever backend runs it.

    try:
        await prefill.remote_send(req, kv_addr, decode.id, begin, end)
    except (EngineDown, TransferFailed):
        ...  # fall back: prefill on the decode engine

Every class is an EngineCallError; `kind` is its name on the wire (real engines send it with
the error, the client raises the matching class).
"""
from __future__ import annotations


class EngineCallError(RuntimeError):
    """A sub-request failed on an engine."""

    kind = "EngineCallError"


class EngineDown(EngineCallError):
    """The engine is dead or unreachable (its process died, it stopped answering, it was closed)."""

    kind = "EngineDown"


class RequestRejected(EngineCallError, ValueError):
    """The request can never run on this engine as asked: longer than its context or its KV
    memory, larger than the share of pages its kind of work may hold, or malformed."""

    kind = "RequestRejected"


class ReservationExpired(EngineCallError):
    """A reservation (prep_recv) was not used before its deadline and its pages were reclaimed."""

    kind = "ReservationExpired"


class RequestReleased(EngineCallError):
    """The request was released on the engine (by the router or a strategy) while this call waited."""

    kind = "RequestReleased"


class TransferFailed(EngineCallError):
    """KV could not be delivered: the receiver's reservation is gone, or the receiver stopped answering."""

    kind = "TransferFailed"


class RequestFailed(EngineCallError):
    """The engine failed the request while running it (for example its forward pass raised)."""

    kind = "RequestFailed"


ERRORS: dict[str, type[EngineCallError]] = {cls.kind: cls for cls in (
    EngineCallError, EngineDown, RequestRejected, ReservationExpired, RequestReleased, TransferFailed, RequestFailed)}


def error_of_kind(kind: str | None, message: str) -> EngineCallError:
    """The exception for a wire `kind` (an unknown or missing kind is the base class)."""
    return ERRORS.get(kind or "", EngineCallError)(message)

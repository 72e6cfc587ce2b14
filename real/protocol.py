"""Wire protocol between the router, engine processes and their peers: msgpack + pydantic.

Every zmq message is a multipart: frame 0 is a msgpack map validated by one of the pydantic
models below (discriminated by `op`), frames 1.. are raw tensor bytes described by that header
(only `kv` messages carry any). Nothing is pickled, so an engine can talk to a router in another
Python, on another host, or to a client in another language.

Calls carry a client-chosen `id`; every answer (`reply`, `error`) echoes it; `chunks` carries
the ids of the start_generate streams it feeds. An engine
answers a message it cannot parse or does not know with an `error` (id when it could read one)
and keeps running: a bad client must never take an engine down.

Engine-to-engine messages (`kv`, `kv_ack`) use the same framing: the sender engine connects a
DEALER to the receiver's ROUTER socket, so one address per engine serves both roles.
"""
from __future__ import annotations

import operator
from functools import reduce
from typing import Annotated, Any, Literal

import msgpack
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core_api.engine import EngineLoad
from core_api.types import KVAddr, Request, SamplingParams


class ProtocolError(ValueError):
    """A message that cannot be decoded or validated; `call_id` when one could be read."""

    def __init__(self, reason: str, call_id: int | None = None) -> None:
        super().__init__(reason)
        self.call_id = call_id


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- value types ------------------------------------------------------------------------
class WireSampling(_Msg):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop_token_ids: list[int] = []
    ignore_eos: bool = False


class WireRequest(_Msg):
    """A Request: the prompt as little-endian int32 bytes (or a list of ids from simple clients)."""

    id: str = Field(min_length=1)
    prompt: bytes | list[int]
    sampling: WireSampling = WireSampling()
    arrival_time: float = 0.0

    @classmethod
    def of(cls, req: Request) -> WireRequest:
        s = req.sampling
        return cls(id=req.id, prompt=req.prompt.astype("<i4", copy=False).tobytes(), arrival_time=req.arrival_time,
                   sampling=WireSampling(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                                         seed=s.seed, stop_token_ids=list(s.stop_token_ids),
                                         ignore_eos=s.ignore_eos))

    def to_request(self) -> Request:
        if isinstance(self.prompt, bytes):
            if len(self.prompt) % 4:
                raise ValueError(f"request {self.id}: prompt bytes are not a whole number of int32")
            prompt = np.frombuffer(self.prompt, dtype="<i4").astype(np.int32)
        else:
            prompt = np.asarray(self.prompt, dtype=np.int64)
        s = self.sampling
        sampling = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                                  stop_token_ids=tuple(s.stop_token_ids), ignore_eos=s.ignore_eos)
        return Request(self.id, prompt, sampling, arrival_time=self.arrival_time)


class WireKVAddr(_Msg):
    engine_id: str
    page_ids: list[int]
    page_size: int = Field(ge=1)
    begin: int = Field(ge=0)
    end: int = Field(ge=0)
    token: str = Field("", max_length=128)  # the receiver's capability for this reservation

    @classmethod
    def of(cls, a: KVAddr) -> WireKVAddr:
        return cls(engine_id=a.engine_id, page_ids=list(a.page_ids), page_size=a.page_size, begin=a.begin, end=a.end,
                   token=a.token)

    def to_kv_addr(self) -> KVAddr:
        return KVAddr(self.engine_id, tuple(self.page_ids), self.page_size, self.begin, self.end, self.token)


LOAD_FIELDS = ("num_waiting", "num_running", "num_receiving", "queued_prefill_tokens", "free_pages",
               "cached_pages", "total_pages", "page_size")


def load_to_wire(load: EngineLoad) -> list[int]:
    return [getattr(load, f) for f in LOAD_FIELDS]


def load_from_wire(engine_id: str, values: list[int]) -> EngineLoad:
    return EngineLoad(engine_id, *values)


# -- router -> engine ---------------------------------------------------------------------
class Hello(_Msg):
    op: Literal["hello"]
    id: int


class PrepRecv(_Msg):
    op: Literal["prep_recv"]
    id: int
    req: WireRequest
    end: int | None = None


class RemoteSend(_Msg):
    op: Literal["remote_send"]
    id: int
    req: WireRequest
    kv_addr: WireKVAddr
    dst: str
    dst_address: str  # the receiver's control socket; the sender connects to it directly
    dst_host: str = ""  # the receiver's host key: same host -> shared-memory transport may apply
    dst_rank: int = -1  # the receiver's NCCL rank, when engines share a process group
    begin: int = Field(ge=0)
    end: int | None = None


class StartGenerate(_Msg):
    op: Literal["start_generate"]
    id: int
    req: WireRequest
    begin: int = 0


class Release(_Msg):
    op: Literal["release"]
    id: int
    req_id: str


class CachedPrefixLen(_Msg):
    op: Literal["cached_prefix_len"]
    id: int
    req: WireRequest


class Stats(_Msg):
    op: Literal["stats"]
    id: int


class Ping(_Msg):
    op: Literal["ping"]
    id: int


class PeerDown(_Msg):
    """The router saw a peer die: fail transfers to it now instead of waiting for a timeout."""

    op: Literal["peer_down"]
    id: int
    engine_id: str
    address: str = ""


class Shutdown(_Msg):
    op: Literal["shutdown"]
    id: int


class LinkFault(_Msg):
    """Fault injection on this engine's KV path to `dst`: for `duration` seconds its chunks are
    held (factor None: a partition) or sent `factor` times slower."""

    op: Literal["link_fault"]
    id: int
    dst: str
    duration: float = Field(gt=0)
    factor: float | None = Field(None, gt=1)


class Reset(_Msg):
    """The router declared this engine dead and now takes it back: end all its work (callers of
    the earlier incarnation get an error) and start again empty, as incarnation `incarnation`."""

    op: Literal["reset"]
    id: int
    incarnation: int = Field(ge=0)


# -- engine -> engine ---------------------------------------------------------------------
class KVChunk(_Msg):
    """KV of prompt tokens [token_begin, token_end) of `req_id`, for the receiver's `page_ids`,
    written only if `token` is the capability the receiver issued for that reservation.

    `mode` names the transport that carries the bytes (a module of real.transports) and `meta`
    holds that transport's own header fields, which it validates on arrival: where the bytes
    are (frames after this header, the sender's shared pool, a matching NCCL send, ...).
    `last` marks the final chunk: once it has landed the receiver completes the reservation.
    """

    op: Literal["kv"]
    id: int  # transfer sequence number on the sender
    req_id: str
    token_begin: int = Field(ge=0)
    token_end: int = Field(ge=0)
    page_ids: list[int]
    last: bool
    token: str = Field("", max_length=128)  # the reservation's capability, from the receiver's KVAddr
    mode: str = Field(max_length=32)
    meta: dict[str, Any] = {}


class KVAck(_Msg):
    op: Literal["kv_ack"]
    id: int
    req_id: str
    ok: bool
    done: bool = False  # the reservation is complete (answer to a `last` chunk)
    error: str | None = None


# -- engine -> router ---------------------------------------------------------------------
class Reply(_Msg):
    op: Literal["reply"]
    id: int
    result: dict[str, Any] = {}
    load: list[int] | None = None


class Chunks(_Msg):
    """One step's new tokens for every stream of one router connection, column-wise: stream
    `ids[i]` (its start_generate call id) got `tokens[i]` at engine monotonic time `times[i]`.
    Streams that ended in this step: call ids `finished`, finish reasons `reasons` (parallel).
    One message per step per connection, not per sequence: the router decodes one message per
    step whatever the batch size (failures still come as one `error` per stream)."""

    op: Literal["chunks"]
    id: int = 0  # not a call id: every client message has one
    ids: list[int]
    tokens: list[int]
    times: list[float]
    finished: list[int] = []
    reasons: list[str] = []
    load: list[int] | None = None


class Error(_Msg):
    op: Literal["error"]
    id: int | None = None
    error: str
    kind: str = "EngineCallError"
    load: list[int] | None = None


_ENGINE_TYPES = (Hello, PrepRecv, RemoteSend, StartGenerate, Release, CachedPrefixLen, Stats, Ping, PeerDown,
                 Shutdown, Reset, LinkFault, KVChunk, KVAck)
_ENGINE = TypeAdapter(Annotated[reduce(operator.or_, _ENGINE_TYPES), Field(discriminator="op")])
_CLIENT = TypeAdapter(Annotated[Reply | Chunks | Error, Field(discriminator="op")])
ENGINE_OPS = frozenset(t.model_fields["op"].annotation.__args__[0] for t in _ENGINE_TYPES)


def encode(msg: BaseModel) -> bytes:
    return msgpack.packb(msg.model_dump(mode="python", exclude_defaults=False), use_bin_type=True)


def _decode(adapter: TypeAdapter, data: bytes, known: frozenset | None = None):
    try:
        raw = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # noqa: BLE001 - any garbage must become a ProtocolError
        raise ProtocolError(f"malformed message: not msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"malformed message: expected a map, got {type(raw).__name__}")
    call_id = raw.get("id") if isinstance(raw.get("id"), int) else None
    op = raw.get("op")
    if known is not None and op not in known:
        raise ProtocolError(f"unknown op {op!r}; known: {', '.join(sorted(known))}", call_id)
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ProtocolError(f"malformed {op!r} message: {details}", call_id) from None


def decode_engine_msg(data: bytes):
    """A message an engine receives; ProtocolError (with the call id if readable) otherwise."""
    return _decode(_ENGINE, data, ENGINE_OPS)


def decode_client_msg(data: bytes):
    """A message a router-side client receives."""
    return _decode(_CLIENT, data)

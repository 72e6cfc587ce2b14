"""An engine's KV transports: the one it was configured with, zmq frames as the way to any peer,
and whichever others its peers send with.

Sending, the configured transport is tried first and zmq frames (which reach any engine) last.
Receiving, a chunk lands through the transport its header names, created on the first such chunk
when it was not configured here (a zmq-configured engine still takes shared-memory chunks from a
peer on its host); its header fields are validated by that transport before anything is written.
"""
from __future__ import annotations

import time
from typing import Any

from real.protocol import KVChunk, RemoteSend
from real.transport import LocalKV, Sender, Transport
from real.transports import transport_class


class EngineTransports:
    def __init__(self, local: LocalKV, mode: str) -> None:
        self.local = local
        self._by_mode: dict[str, Transport] = {}
        self._senders = [self._get(mode, configured=True)]
        if mode != "zmq":
            self._senders.append(self._get("zmq", configured=True))
        self.bytes_received = 0
        self.land_s = 0.0  # time spent writing received pages into the pool

    def _get(self, mode: str, configured: bool = False) -> Transport:
        transport = self._by_mode.get(mode)
        if transport is None:
            cls = transport_class(mode)
            if not (configured or cls.lands_unconfigured):
                raise ValueError(f"a {mode} KV chunk reached an engine not started with transport {mode!r}")
            transport = self._by_mode[mode] = cls(self.local)
        return transport

    def sender_for(self, dst: RemoteSend) -> Sender:
        for transport in self._senders:
            sender = transport.sender_for(dst)
            if sender is not None:
                return sender
        raise ValueError(f"no KV transport of this engine reaches {dst.dst} at {dst.dst_address}")

    def hello_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for transport in self._senders:
            fields.update(transport.hello_fields())
        return fields

    def land(self, msg: KVChunk, frames: list, dst_ids: list[int]) -> None:
        """Write the chunk's pages into `dst_ids`; ValueError when it cannot be landed here."""
        if not dst_ids:
            return
        t0 = time.perf_counter()
        try:
            transport = self._get(msg.mode)
            self.bytes_received += transport.land(transport.Meta.model_validate(msg.meta), frames, dst_ids)
        finally:
            self.land_s += time.perf_counter() - t0

    def drain(self, msg: KVChunk) -> None:
        """A refused chunk: let its transport consume whatever it carries (NCCL stays in step)."""
        transport = self._by_mode.get(msg.mode)
        if transport is not None:
            try:
                transport.drain(transport.Meta.model_validate(msg.meta))
            except ValueError:
                pass  # a header too malformed to drain by: the chunk is refused all the same

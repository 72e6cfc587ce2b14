"""Test helper: one EngineWorker in this process and a DEALER client to it, pumped by hand.

Lets a test put several requests into one batch, poke at the model, and read every answer the
engine sends, without processes or timing: `pump()` runs the worker's poll and one step.
"""
from __future__ import annotations

import itertools
import time

import zmq

from real import protocol as p
from real.config import EngineSpec
from real.worker import EngineWorker


class InProcEngine:
    def __init__(self, ctx: zmq.Context | None = None, **spec) -> None:
        self.worker = EngineWorker(EngineSpec(**{"num_pages": 64, "max_num_seqs": 8, **spec}), ctx)
        self.ctx = self.worker.ctx
        self._ids = itertools.count(1)
        self.clients: list[zmq.Socket] = []
        self.client = self.connect()

    def connect(self, **sockopts) -> zmq.Socket:
        """Another client connection (another router, or an attacker)."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        for opt, value in sockopts.items():
            sock.setsockopt(getattr(zmq, opt), value)
        sock.connect(self.worker.address)
        self.clients.append(sock)
        return sock

    def send(self, msg, frames: list[bytes] = (), sock: zmq.Socket | None = None) -> int:
        """Post a message (id filled in); returns its call id."""
        if getattr(msg, "id", 1) == 0:
            msg.id = next(self._ids)
        (sock or self.client).send_multipart([p.encode(msg), *frames])
        return msg.id

    def pump(self, steps: int = 1) -> None:
        for _ in range(steps):
            self.worker._poll(5)
            self.worker.step()

    def answers(self, sock: zmq.Socket | None = None, wait_s: float = 2.0, until=None) -> list:
        """Pump until `until(answers)` holds (or one answer arrives); every decoded answer."""
        sock = sock or self.client
        out: list = []
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            self.pump()
            while sock.poll(0):
                out.append(_decode(sock.recv_multipart()[0]))
            if (until(out) if until else out):
                break
        return out

    def call(self, msg, sock: zmq.Socket | None = None, wait_s: float = 5.0):
        """Send and wait for the answer to this call."""
        call_id = self.send(msg, sock=sock)
        found = self.answers(sock, wait_s, until=lambda a: any(m.id == call_id for m in a))
        return next(m for m in found if m.id == call_id)

    def close(self) -> None:
        for sock in self.clients:
            sock.close(0)
        self.worker.close()


def _decode(data: bytes):
    """An answer to a client (reply, chunks, error) or to a KV sender (kv_ack)."""
    try:
        return p.decode_client_msg(data)
    except p.ProtocolError:
        return p.decode_engine_msg(data)

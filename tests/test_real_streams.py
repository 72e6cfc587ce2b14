"""Batched stream messages on the router side, and on-time arrivals; no engine process needed."""
from __future__ import annotations

import asyncio
import time

import numpy as np

from core_api.errors import EngineCallError
from core_api.types import Request, SamplingParams
from real import protocol as p
from real.client import RealEngine
from real.pacer import paced


def chunks(**kw) -> bytes:
    return p.encode(p.Chunks(op="chunks", **kw))


def test_one_chunks_message_feeds_every_stream_it_names():
    async def go():
        engine = RealEngine("tcp://127.0.0.1:1", "e0")
        sent = []
        engine._post = sent.append  # no socket: record what would go out
        req = lambda i: Request(f"r{i}", np.arange(5, dtype=np.int32), SamplingParams(max_tokens=3))
        streams = [engine.start_generate(req(i)) for i in range(3)]
        firsts = [asyncio.ensure_future(s.__anext__()) for s in streams]
        await asyncio.sleep(0)
        ids = [m.id for m in sent]
        engine._dispatch(p.decode_client_msg(chunks(ids=ids, tokens=[7, 8, 9], times=[1.0, 1.0, 1.0])))
        got = [await f for f in firsts]
        assert [c.token_ids for c in got] == [[7], [8], [9]] and not any(c.finished for c in got)
        # Two steps pile up for stream 0 before it looks: one chunk; stream 1 ends, stream 2 fails.
        engine._dispatch(p.decode_client_msg(chunks(ids=ids[:2], tokens=[1, 2], times=[2.0, 2.0])))
        engine._dispatch(p.decode_client_msg(chunks(ids=ids[:2], tokens=[3, 4], times=[3.0, 3.0], finished=[ids[1]],
                                                    reasons=["length"])))
        engine._dispatch(p.decode_client_msg(p.encode(p.Error(op="error", id=ids[2], error="released"))))
        c0 = await streams[0].__anext__()
        assert (c0.token_ids, c0.times, c0.finished) == ([1, 3], [2.0, 3.0], False)
        c1 = await streams[1].__anext__()
        assert (c1.token_ids, c1.finished, c1.finish_reason) == ([2, 4], True, "length")
        try:
            await streams[2].__anext__()
            raise AssertionError("a failed stream must raise")
        except EngineCallError as exc:
            assert "released" in str(exc)
        await streams[0].aclose()

    asyncio.run(go())


def test_arrivals_start_in_order_never_early():
    async def go():
        arrivals = [0.002 * i for i in range(20)]
        origin = time.monotonic() + 0.005
        started = []
        await paced(arrivals, origin, lambda i: started.append((i, time.monotonic() - origin - arrivals[i])))
        return started

    started = asyncio.run(go())
    assert [i for i, _ in started] == list(range(20))
    assert all(late >= 0 for _, late in started)  # (how late is a timing question: not asserted here)


def test_stream_out_counts_what_it_queues_and_sends():
    """An engine's stream figures (its stats): steps that queued tokens, tokens, messages sent."""
    from types import SimpleNamespace

    from real.streams import Stream, StreamOut

    sent = []
    out = StreamOut(10.0, lambda ident, msg: sent.append((ident, msg)))
    seqs = [SimpleNamespace(handle=Stream(b"router", i), output=[], token_times=[], finish_reason=None)
            for i in range(2)]
    quiet = SimpleNamespace(handle=None, output=[7], token_times=[0.0])  # not a stream: not counted

    def step(finished=()):
        for s in seqs:
            s.output.append(1)
            s.token_times.append(0.0)
        out.add([*seqs, quiet], list(finished))

    step()  # first tokens: sent at once
    step()
    step()  # queued: the interval is long
    assert (out.steps, out.tokens, out.messages, len(sent)) == (3, 6, 1, 1)
    step(finished=seqs[:1])  # a stream ends: sent at once
    assert (out.steps, out.tokens, out.messages) == (4, 8, 2)
    assert sent[-1][1].tokens == [1] * 6 and sent[-1][1].finished == [0]
    out.flush()  # nothing queued: no message
    assert out.messages == 2

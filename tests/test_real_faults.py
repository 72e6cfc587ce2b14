"""Failures end in clear errors, never hangs, and never leak pages: a decode engine killed mid-run,
a remote_send into an expired reservation, an engine that stops answering, malformed and unknown
control messages, a released stream, a request too large for the engine."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import msgpack
import numpy as np
import pytest
import zmq
import zmq.asyncio
from real_helpers import run

from core_api.errors import EngineCallError, EngineDown
from core_api.types import Request, SamplingParams
from core_api.workload import Workload
from real.cluster import RealCluster, check_no_leaks, run_workload

ENGINE = {"model": "tiny", "num_pages": 256, "page_size": 16, "max_num_batched_tokens": 64}


def req(rid: str, n: int, max_tokens: int = 4, seed: int = 0, arrival: float = 0.0) -> Request:
    prompt = np.random.default_rng(seed).integers(0, 256, n, dtype=np.int32)
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens), arrival_time=arrival)


@pytest.fixture(scope="module")
def pair():
    """Two engines whose reservations expire after 0.4 s."""
    with RealCluster.local(2, reservation_timeout_s=0.4, **ENGINE) as c:
        yield c


async def _killed_decode(cluster: RealCluster):
    params = {"prefill": ["e0"], "decode": ["e1", "e2"]}
    async with cluster.session() as engines:
        live = list(engines.values())
        # Long generations so that the kill lands mid-run; arrivals spread over 0.6 s.
        reqs = [req(f"k{i}", 20 + 7 * i, max_tokens=150, seed=i, arrival=0.05 * i) for i in range(12)]
        started = time.monotonic()
        task = asyncio.ensure_future(run_workload(live, Workload(reqs), "pd", params))
        # Kill e1 while it is decoding (a fixed delay raced the generations on a fast machine).
        deadline = time.monotonic() + 20
        while (await engines["e1"].stats())["running"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        cluster.kill("e1")
        killed_at = time.monotonic() - started  # on the run's clock (it starts with the task)
        result = await asyncio.wait_for(task, 60)
        after = await run_workload(live, Workload([req(f"after{i}", 30, seed=100 + i) for i in range(4)]), "pd", params)
        stats = await check_no_leaks([engines["e0"], engines["e2"]])
        return result, after, stats, killed_at


def test_killing_the_decode_engine_fails_its_requests_fast():
    with RealCluster.local(3, **ENGINE) as cluster:
        result, after, stats, killed_at = run(_killed_decode(cluster))
    failed = [r for r in result.records if r.status == "failed"]
    ok = [r for r in result.records if r.status == "ok"]
    assert failed, "the kill landed after every request had finished"
    assert any(r.tags["decode"] == "e2" for r in ok)
    assert all(r.tags["decode"] == "e2" or r.finish_time <= killed_at for r in ok)
    for r in failed:
        assert "e1" in r.reason and "down" in r.reason, r.reason
    # Failures surface within a bounded time of the kill (the watchdog polls every 100 ms).
    assert max(r.finish_time for r in failed) - killed_at < 2.0
    # The router keeps serving: new requests go to the live decode engine and complete.
    assert all(r.status == "ok" and r.tags["decode"] == "e2" for r in after.records)
    assert after.engine_stats["e1"]["down"].startswith("process") and set(stats) == {"e0", "e2"}


async def _expired(cluster: RealCluster):
    async with cluster.session() as engines:
        e0, e1 = engines["e0"], engines["e1"]
        r = req("exp", 50)
        kv_addr, matched = await e1.prep_recv(r, end=-1)
        await asyncio.sleep(0.8)  # past the 0.4 s reservation timeout
        with pytest.raises(EngineCallError, match="(expired|no open reservation)"):
            await asyncio.wait_for(e0.remote_send(r, kv_addr, "e1", matched, -1), 10)
        stats = await check_no_leaks([e0, e1], settle_s=0.5)
        # The engines still serve the same request id afterwards.
        tokens = []
        async for chunk in e1.start_generate(r):
            tokens += chunk.token_ids
        return stats, tokens


def test_remote_send_to_expired_reservation_fails_and_frees_sender_pages(pair):
    stats, tokens = run(_expired(pair))
    assert stats["e0"]["pages"]["used"] == 0 and stats["e1"]["pages"]["reserved"] == 0
    assert stats["e0"]["forward_tokens"] >= 16  # the sender did compute a page before the receiver said no
    assert len(tokens) == 4


async def _raw_calls(cluster: RealCluster):
    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    cluster.ephemeral.router.client(sock)  # an authenticated client that sends garbage
    sock.connect(cluster.addresses["e0"])
    sent = [
        [b"\x00not msgpack\xff"],
        [msgpack.packb([1, 2, 3])],
        [msgpack.packb({"op": "launch_missiles", "id": 7})],
        [msgpack.packb({"op": "prep_recv", "id": 8})],
        [msgpack.packb({"op": "start_generate", "id": 9, "req": {"id": "x", "prompt": b"\x01\x02\x03"}})],
        [msgpack.packb({"op": "start_generate", "id": 10, "req": {"id": "y", "prompt": [1, 2]}, "bogus": 1})],
        [msgpack.packb({"op": "kv", "id": 11, "req_id": "nobody", "token_begin": 0, "token_end": 16,
                        "page_ids": [0], "last": True, "mode": "zmq",
                        "meta": {"shape": [2, 1, 2, 16, 2, 16], "dtype": "float32"}}), b"\x00" * 8],
        [msgpack.packb({"op": "ping", "id": 12})],
    ]
    answers = []
    try:
        for frames in sent:
            await sock.send_multipart(frames)
            answers.append(msgpack.unpackb(await asyncio.wait_for(sock.recv(), 5)))
    finally:
        sock.close(0)
    async with cluster.session() as engines:
        tokens = []
        async for chunk in engines["e0"].start_generate(req("after-garbage", 20)):
            tokens += chunk.token_ids
        await check_no_leaks(list(engines.values()))
    return answers, tokens


def test_malformed_and_unknown_messages_get_error_replies(pair):
    answers, tokens = run(_raw_calls(pair))
    kinds = [(a["op"], a.get("id")) for a in answers]
    assert kinds == [("error", None), ("error", None), ("error", 7), ("error", 8), ("error", 9), ("error", 10),
                     ("kv_ack", 11), ("reply", 12)]
    assert "not msgpack" in answers[0]["error"]
    assert "unknown op 'launch_missiles'" in answers[2]["error"]
    assert "req" in answers[3]["error"]
    assert "int32" in answers[4]["error"]
    assert "bogus" in answers[5]["error"]
    assert answers[6]["ok"] is False and "no open reservation" in answers[6]["error"]
    assert len(tokens) == 4  # and the engine still serves


async def _released_stream(cluster: RealCluster):
    async with cluster.session() as engines:
        e0 = engines["e0"]
        got = []
        with pytest.raises(EngineCallError, match="released"):
            async for chunk in e0.start_generate(req("long", 30, max_tokens=2000)):
                got += chunk.token_ids
                if len(got) >= 3:
                    await e0.release("long")
        with pytest.raises(EngineCallError, match="exceed"):
            async for _ in e0.start_generate(req("huge", 5000)):
                pass
        await check_no_leaks(list(engines.values()))
        return got


def test_release_aborts_a_stream_and_oversized_requests_are_rejected(pair):
    assert len(run(_released_stream(pair))) >= 3


async def _frozen(cluster: RealCluster):
    cluster.config = cluster.config.model_copy(update={"heartbeat_s": 0.1, "heartbeat_timeout_s": 0.8})
    async with cluster.session() as engines:
        e1 = engines["e1"]
        os.kill(cluster.procs["e1"].pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(EngineDown, match="no answer"):
                async for _ in e1.start_generate(req("frozen", 10)):
                    pass
            waited = time.monotonic() - t0
            assert e1.load().num_waiting > 1e9  # load-aware strategies now avoid it
        finally:
            os.kill(cluster.procs["e1"].pid, signal.SIGCONT)
        return waited


def test_unresponsive_engine_fails_calls_after_heartbeat_timeout(pair):
    waited = run(_frozen(pair))
    assert waited < 3.0
    # The engine itself is fine again: a new session works and the abandoned request left nothing.
    pair.config = pair.config.model_copy(update={"heartbeat_s": 0.5, "heartbeat_timeout_s": 10.0})

    async def after():
        async with pair.session() as engines:
            await engines["e1"].release("frozen")
            await check_no_leaks(list(engines.values()))

    run(after())

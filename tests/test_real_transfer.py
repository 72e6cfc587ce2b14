"""KV page transports and the wire protocol: page copies, shared-memory pools, zmq frames, message
validation; PD through the zmq transport is token-exact too; NCCL between two GPUs (gpu)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from real_helpers import reference, requests, run, serve_checked, tokens_of

from core_api.types import KVAddr, Request, SamplingParams
from real import protocol as p
from real.cluster import RealCluster
from real.engine_transports import EngineTransports
from real.loading import load_model
from real.page_copy import copy_pages, gather_pages, runs, scatter_pages
from real.shared_pool import SharedPool
from real.transport import LocalKV, Transport
from real.transports import transport_class, transport_modes

SHAPE = (2, 12, 2, 4, 2, 8)  # layers, pages, K/V, page size, kv heads, head dim


def pool(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def test_runs_coalesce_consecutive_pages():
    assert runs([3, 4, 5, 9, 10], [7, 8, 9, 1, 2]) == [(3, 7, 3), (9, 1, 2)]
    assert runs([1, 2], [5, 4]) == [(1, 5, 1), (2, 4, 1)]
    assert runs([], []) == []


def test_copy_gather_scatter_agree_with_indexing():
    src, dst = pool(0), pool(1)
    want = dst.clone()
    d, s = [0, 1, 2, 7, 3], [5, 6, 7, 0, 11]
    want[:, d] = src[:, s]
    copy_pages(dst, d, src, s)
    assert torch.equal(dst, want)
    other = pool(2)
    scatter_pages(other, d, gather_pages(src, s))
    assert torch.equal(other[:, d], src[:, s])


def test_shared_pool_is_visible_to_another_mapping():
    a = SharedPool.create(SHAPE, torch.float32)
    try:
        assert not a.tensor.any()  # a fresh pool reads as zeros
        a.tensor[1, 3] = 7.0
        b = SharedPool.attach(a.path, SHAPE, torch.float32)
        assert torch.equal(b.tensor, a.tensor)
        b.tensor[0, 0] = 1.0
        assert a.tensor[0, 0].eq(1.0).all()
        with pytest.raises(ValueError, match="not a microserving"):
            SharedPool.attach("/etc/passwd", SHAPE, torch.float32)
    finally:
        a.unlink()


def chunk(mode: str, meta: dict, n: int) -> p.KVChunk:
    return p.KVChunk(op="kv", id=1, req_id="r", token_begin=0, token_end=n * SHAPE[3], page_ids=list(range(n)),
                     last=True, mode=mode, meta=meta)


def receiver(pool: torch.Tensor, mode: str = "zmq") -> EngineTransports:
    return EngineTransports(LocalKV(pool, host="h", spec=None), mode)


def test_zmq_and_shm_transports_land_the_same_pages():
    shared = SharedPool.create(SHAPE, torch.float32)
    try:
        shared.tensor.copy_(pool(3))
        sending = LocalKV(shared.tensor, host="h", spec=None, shared=shared)
        src_ids, dst_ids = [4, 5, 9], [0, 2, 3]
        for mode in ("zmq", "shm"):
            meta, frames = transport_class(mode)(sending).pack(src_ids)
            dst = torch.zeros(SHAPE)
            into = receiver(dst)  # configured for zmq: shm chunks still land (created on the first one)
            into.land(chunk(mode, meta.model_dump(), 3), frames, dst_ids)
            assert torch.equal(dst[:, dst_ids], shared.tensor[:, src_ids]), mode
            assert not dst[:, [1, 4]].any()
            assert into.bytes_received == 3 * dst[:, 0].numel() * 4
        meta, frames = transport_class("zmq")(sending).pack([1, 2])
        with pytest.raises(ValueError, match="shape"):
            receiver(torch.zeros(SHAPE)).land(chunk("zmq", meta.model_dump(), 3), frames, dst_ids)
    finally:
        shared.unlink()


@pytest.mark.parametrize(("mode", "meta", "why"), [
    ("carrier_pigeon", {}, "unknown KV transport 'carrier_pigeon'"),
    ("../keys", {}, "unknown KV transport"),
    ("zmq", {"shape": [2, 3, 2, 4, 2, 8]}, "dtype"),  # a field missing
    ("zmq", {"shape": [2, 3, 2, 4, 2, 8], "dtype": "float32", "extra": 1}, "extra"),  # a field too many
    ("shm", {"shm_name": "/etc/passwd", "src_pages": [0, 1, 2], "pool_shape": list(SHAPE), "dtype": "float32"},
     "not a microserving KV pool"),
    ("nccl", {"shape": [1], "dtype": "float32", "src_rank": 0}, "not started with transport 'nccl'"),
])
def test_a_chunk_its_transport_cannot_land_is_refused_with_the_reason(mode, meta, why):
    dst = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match=why):
        receiver(dst).land(chunk(mode, meta, 3), [b"\0" * 4], [0, 1, 2])
    assert not dst.any()


def test_each_transport_is_one_module_named_by_its_mode():
    assert {"zmq", "shm", "cuda_ipc", "nccl"} <= set(transport_modes())
    for mode in transport_modes():
        cls = transport_class(mode)
        assert issubclass(cls, Transport) and cls.mode == mode and cls.Meta is not None


def test_senders_prefer_the_configured_transport_and_fall_back_to_zmq_frames():
    shared = SharedPool.create(SHAPE, torch.float32)
    try:
        engine = EngineTransports(LocalKV(shared.tensor, host="h", spec=None, shared=shared), "shm")

        def to(host: str):
            return engine.sender_for(p.RemoteSend(op="remote_send", id=1, req=p.WireRequest(id="r", prompt=[1]),
                                                  kv_addr=p.WireKVAddr(engine_id="d", page_ids=[0], page_size=4,
                                                                       begin=0, end=4),
                                                  dst="d", dst_address="tcp://x:1", dst_host=host, begin=0))

        assert to("h").mode == "shm" and to("another host").mode == "zmq"
        assert engine.hello_fields() == {"shm": shared.path}
    finally:
        shared.unlink()


def test_wire_request_and_kv_addr_round_trip():
    req = Request("a", np.array([5, 0, 70000], dtype=np.int32),
                  SamplingParams(max_tokens=3, temperature=0.5, seed=9, stop_token_ids=(4,)), arrival_time=1.5)
    back = p.decode_engine_msg(p.encode(p.StartGenerate(op="start_generate", id=1, req=p.WireRequest.of(req))))
    r2 = back.req.to_request()
    assert r2.id == "a" and r2.prompt.tolist() == [5, 0, 70000] and r2.sampling == req.sampling
    addr = KVAddr("e1", (3, 4), 16, 32, 60)
    assert p.WireKVAddr.of(addr).to_kv_addr() == addr
    load = p.load_from_wire("e0", [1, 2, 3, 4, 5, 6, 7, 16])
    assert p.load_to_wire(load) == [1, 2, 3, 4, 5, 6, 7, 16]


def test_decode_rejects_garbage_with_reasons():
    import msgpack

    with pytest.raises(p.ProtocolError, match="not msgpack"):
        p.decode_engine_msg(b"\xc1")
    with pytest.raises(p.ProtocolError, match="unknown op") as info:
        p.decode_engine_msg(msgpack.packb({"op": "nope", "id": 3}))
    assert info.value.call_id == 3
    with pytest.raises(p.ProtocolError, match="max_tokens"):
        p.decode_engine_msg(msgpack.packb({"op": "start_generate", "id": 4,
                                           "req": {"id": "x", "prompt": [1], "sampling": {"max_tokens": 0}}}))


async def _pd_over_zmq(cluster):
    async with cluster.session() as engines:
        pd = await serve_checked(engines.values(), requests("zpd", 8), "pd", {"prefill": ["e0"], "decode": ["e1"]})
        bal = await serve_checked(engines.values(), requests("zbal", 9), "balanced_pd",
                                  {"ratio": 0.3, "prefill": ["e1"], "decode": ["e0"]})
        return pd, bal


def test_pd_over_the_zmq_transport_is_exact():
    with RealCluster.local(2, model="tiny", num_pages=256, transport="zmq", max_num_batched_tokens=64) as c:
        assert not c.shm_files  # pools are private memory: the bytes must travel in frames
        pd, bal = run(_pd_over_zmq(c))
    model = load_model("tiny")
    for result, tag, seed in ((pd, "zpd", 8), (bal, "zbal", 9)):
        assert tokens_of(result) == reference(model, requests(tag, seed))
    assert pd.engine_stats["e1"]["kv_bytes_received"] == pd.engine_stats["e0"]["kv_bytes_sent"] > 0


@pytest.mark.gpu
def test_pd_over_nccl_between_two_gpus_is_exact():
    from real.transports.nccl import nccl_available

    if not nccl_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices and NCCL")
    from real.config import RealClusterConfig

    config = RealClusterConfig(engines=[
        {"id": "p0", "device": "cuda:0", "transport": "nccl", "model": "tiny", "num_pages": 256},
        {"id": "d0", "device": "cuda:1", "transport": "nccl", "model": "tiny", "num_pages": 256}])

    async def go(cluster):
        async with cluster.session() as engines:
            return await serve_checked(engines.values(), requests("n", 10), "pd", {"prefill": ["p0"], "decode": ["d0"]})

    with RealCluster(config) as c:
        result = run(go(c))
    want = reference(load_model("tiny"), requests("n", 10))
    assert tokens_of(result) == want
    assert result.engine_stats["d0"]["kv_bytes_received"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("transport", ["zmq", "cuda_ipc"])  # pinned host staging; device to device
def test_pd_on_one_gpu_is_exact(transport):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")

    async def go(cluster):
        async with cluster.session() as engines:
            return await serve_checked(engines.values(), requests("g", 11), "pd", {"prefill": ["e0"], "decode": ["e1"]})

    with RealCluster.local(2, model="tiny", device="cuda:0", num_pages=256, transport=transport) as c:
        result = run(go(c))
    want = reference(load_model("tiny", device="cuda:0"), requests("g", 11))
    assert tokens_of(result) == want
    assert result.engine_stats["e1"]["kv_bytes_received"] > 0


def test_device_transports_are_refused_on_cpu_engines():
    from pydantic import ValidationError

    from real.config import EngineSpec

    for transport in ("cuda_ipc", "nccl"):
        with pytest.raises(ValidationError, match=f"transport '{transport}' needs a CUDA device"):
            EngineSpec(transport=transport)

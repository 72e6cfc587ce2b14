"""One error vocabulary: the simulator and real engines raise the same core_api.errors class for
the same failure, so a strategy's `except` works on both backends."""
from __future__ import annotations

import numpy as np
import pytest
from real_helpers import run

from core_api import errors
from core_api.strategy import Strategy
from core_api.types import Request, SamplingParams
from core_api.workload import Workload
from sim.cluster import SimCluster
from sim.config import ClusterConfig, EngineConfig

TIMEOUT_S = 0.4


def req(rid: str, n: int, max_tokens: int = 4) -> Request:
    return Request(rid, np.arange(n, dtype=np.int32) % 200, SamplingParams(max_tokens=max_tokens))


class Provoke(Strategy):
    """Each request provokes one failure and tags which error class the engines raised."""

    async def generate(self, req):
        e0, e1 = self.engines
        try:
            if req.id == "too-long":
                async for _ in e0.start_generate(req):
                    pass
            elif req.id == "expired":
                kv_addr, matched = await e1.prep_recv(req, end=-1)
                await self.runtime.sleep(3 * TIMEOUT_S)
                await e0.remote_send(req, kv_addr, e1.id, begin=matched, end=-1)
            elif req.id == "released":
                async for _ in e0.start_generate(req):
                    await e0.release(req.id)
        except errors.EngineCallError as exc:
            self.tag(req, error=type(exc).__name__)
        if False:
            yield


REQUESTS = [req("too-long", 5000), req("expired", 60), req("released", 30, max_tokens=50)]
EXPECTED = {"too-long": "RequestRejected", "expired": "TransferFailed", "released": "RequestReleased"}


def test_the_simulator_raises_the_vocabulary():
    cluster = SimCluster(ClusterConfig(engines=[EngineConfig(count=2, num_pages=512, max_model_len=2048,
                                                             reservation_timeout_s=TIMEOUT_S)]))
    cluster.strategy = Provoke(list(cluster.engines.values()), cluster.runtime)
    result = cluster.run(Workload(REQUESTS))
    assert {r.request_id: r.tags.get("error") for r in result.records} == EXPECTED
    cluster.check_no_leaks()


def test_real_engines_raise_the_same_classes():
    from core_api import strategy as registry
    from real.cluster import RealCluster, check_no_leaks, run_workload

    registry.register("test_provoke")(Provoke)

    async def go(cluster):
        async with cluster.session() as engines:
            result = await run_workload(list(engines.values()), Workload(REQUESTS), "test_provoke", {})
            await check_no_leaks(list(engines.values()))
            return result

    with RealCluster.local(2, model="tiny", num_pages=512, max_model_len=2048,
                           reservation_timeout_s=TIMEOUT_S) as cluster:
        result = run(go(cluster))
    assert {r.request_id: r.tags.get("error") for r in result.records} == EXPECTED


def test_wire_kinds_map_to_classes():
    for kind, cls in errors.ERRORS.items():
        exc = errors.error_of_kind(kind, "msg")
        assert type(exc) is cls and isinstance(exc, errors.EngineCallError) and str(exc) == "msg"
    assert type(errors.error_of_kind("SomethingNew", "m")) is errors.EngineCallError
    assert isinstance(errors.RequestRejected("x"), ValueError)  # callers catching ValueError still do
    with pytest.raises(errors.EngineCallError):
        raise errors.EngineDown("gone")

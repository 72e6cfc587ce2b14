"""Reservations cannot deadlock engines: bursts through strategies in which engines both send and
receive (or relay KV) complete on the simulator; reservations expire on a timer; the limits that
make this so are checked at the edge with clear errors."""
from __future__ import annotations

import pytest
from burst_strategies import BidirectionalPD, Chain

from core_api.scheduler import RequestRejected, Scheduler, SchedulerConfig
from core_api.scheduler_config import SchedulingPolicy
from core_api.strategy import Strategy
from core_api.workload import WorkloadSpec, generate
from sim.cluster import SimCluster
from sim.config import ClusterConfig, EngineConfig
from tests.helpers import make_request


def burst(n: int = 300, seed: int = 0):
    return generate(WorkloadSpec(num_requests=n, arrival={"rate": float("inf")}, seed=seed,
                                 prompt_len={"kind": "uniform", "low": 100, "high": 800},
                                 output_len={"kind": "uniform", "low": 5, "high": 100},
                                 prefix={"num_groups": 4, "prefix_len": 128, "fraction": 0.5}))


@pytest.mark.parametrize("strategy, engines", [(BidirectionalPD, 2), (Chain, 3)])
@pytest.mark.parametrize("num_pages, max_num_seqs", [(600, 256), (2000, 8)])
def test_a_burst_through_engines_that_send_and_receive_completes(strategy, engines, num_pages, max_num_seqs):
    cluster = SimCluster(ClusterConfig(engines=[EngineConfig(count=engines, num_pages=num_pages,
                                                             max_num_seqs=max_num_seqs)]))
    cluster.strategy = strategy(list(cluster.engines.values()), cluster.runtime)
    result = cluster.run(burst())
    bad = [(r.request_id, r.reason) for r in result.records if r.status != "ok"]
    assert not bad, bad[:3]
    assert all(r.output_len == r.max_tokens for r in result.records)
    cluster.check_no_leaks()


class ReserveAndWait(Strategy):
    """Reserves pages on e1 that nobody fills, looks at e1 after the timeout, then generates there."""

    async def generate(self, req):
        e1 = self.engines[1]
        await e1.prep_recv(req, end=-1)
        held = e1.load().num_receiving
        await self.runtime.sleep(5.0)
        self.tag(req, held_before=held, held_after=e1.load().num_receiving)
        async for chunk in e1.start_generate(req, begin=-1):  # no reservation left: a full prefill
            yield chunk


def test_a_reservation_nobody_fills_expires_on_time_on_an_idle_engine():
    """The simulator used to check expiry only when an engine woke for other work, so on an idle
    engine a reservation pinned its pages for ever; now it expires at its deadline."""
    cluster = SimCluster(ClusterConfig(engines=[EngineConfig(count=2, num_pages=256, reservation_timeout_s=2.0)]))
    cluster.strategy = ReserveAndWait(list(cluster.engines.values()), cluster.runtime)
    [record] = cluster.run(generate(WorkloadSpec(num_requests=1, prompt_len={"kind": "fixed", "value": 100}))).records
    assert record.tags == {"held_before": 1, "held_after": 0}
    assert record.status == "ok" and record.output_len == record.max_tokens
    cluster.check_no_leaks()


def test_reservations_hold_at_most_their_share_and_wait_beyond_it():
    s = Scheduler(SchedulerConfig(num_pages=40, page_size=4, max_num_seqs=8, policy=SchedulingPolicy(watermark=0)))
    reqs = [make_request(f"r{i}", 32, seed=i) for i in range(4)]  # 8 pages each; the share is 20 pages
    seqs = [s.add_receive(r, None) for r in reqs]
    admitted = [s.try_admit_receive(q, 0.0) for q in seqs]
    assert admitted == [True, True, False, False]
    assert s.reserved_pages == 16 and s.kv.num_available == 24  # the rest stays for the engine's own work
    # A send behind the waiting reservations is not blocked by them.
    s.add_send(make_request("send", 40, seed=9), 0, None)
    assert "send" in [q.id for q in s.schedule(0.0).batch.seqs]
    s.release("r0")
    assert s.try_admit_receive(seqs[2], 0.0)


def test_work_that_can_never_fit_its_share_is_refused_at_once():
    s = Scheduler(SchedulerConfig(num_pages=40, page_size=4, max_num_seqs=8))
    with pytest.raises(RequestRejected, match="more than reservations may hold on this engine \\(20\\)"):
        s.add_receive(make_request("big", 100, max_tokens=1), None)
    with pytest.raises(RequestRejected, match="more than the 20 this engine keeps for its own work"):
        s.add_send(make_request("huge", 100, max_tokens=1), 0, None)
    single = Scheduler(SchedulerConfig(num_pages=40, page_size=4, max_num_seqs=1))
    with pytest.raises(RequestRejected, match="leaves no slot for reservations"):
        single.add_receive(make_request("r", 8), None)

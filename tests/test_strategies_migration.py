"""Context migration: migrate_context moves a prefix's KV into another engine's prefix cache, and
prefix_migration does it in the background when a hot prefix's engine is overloaded."""
import numpy as np

from core_api.recording import calls_for, wrap_all
from core_api.workload import WorkloadSpec, generate
from sim.cluster import SimCluster
from strategies.migration import context_request, migrate_context
from tests.helpers import make_request, small_cluster
from tests.test_strategies_harness import make_cluster, run_checked, shape


def _scenario(cluster, script):
    out = {}
    cluster.runtime.process(script(out))
    cluster.env.run()
    cluster.check_no_leaks()
    return out


def test_after_migration_the_receiver_matches_the_whole_context_in_full_pages():
    cluster = SimCluster(small_cluster(2, num_pages=512))
    e0, e1 = wrap_all(cluster.engines.values())
    doc = np.random.default_rng(0).integers(0, 32000, 1000, dtype=np.int32)

    async def script(out):
        async for _ in e0.start_generate(make_request("warm", 0, prompt=np.append(doc, 7))):
            pass
        probe = make_request("probe", 0, prompt=np.append(doc, [1, 2, 3]))
        out["before"] = await e1.cached_prefix_len(probe)
        out["moved"] = await migrate_context(context_request("migrate-0", doc), e0, e1)
        _, out["matched"] = await e1.prep_recv(probe, end=-1)
        await e1.release(probe.id)

    out = _scenario(cluster, script)
    assert out["before"] == 0
    assert out["moved"] == out["matched"] == 1000 // 16 * 16
    calls = calls_for(e0.log, "migrate-0")
    assert [(c.method, c.engine) for c in calls] == [("prep_recv", "e1"), ("remote_send", "e0"), ("release", "e1")]
    assert calls[0].args["end"] == 992 and calls[1].args == {"dst": "e1", "begin": 0, "end": 992}
    # the sender served the context from its prefix cache: nothing recomputed for the migration
    assert cluster.engines["e0"].sched.kv.hits == 992


def test_migration_sends_only_what_the_receiver_lacks_and_computes_what_the_sender_lacks():
    cluster = SimCluster(small_cluster(2, num_pages=512))
    e0, e1 = wrap_all(cluster.engines.values())
    doc = np.random.default_rng(1).integers(0, 32000, 700, dtype=np.int32)

    async def script(out):
        await migrate_context(context_request("m-a", doc[:320]), e0, e1)  # e0 computes it: cached nowhere
        out["moved"] = await migrate_context(context_request("m-b", doc), e0, e1)
        out["tiny"] = await migrate_context(context_request("m-c", doc[:15]), e0, e1)  # under a page

    out = _scenario(cluster, script)
    assert out["moved"] == 688 and out["tiny"] == 0
    send = next(c for c in calls_for(e0.log, "m-b") if c.method == "remote_send")
    assert send.args == {"dst": "e1", "begin": 320, "end": 688}
    assert calls_for(e0.log, "m-c") == []


def test_prefix_migration_moves_a_hot_prefix_and_routes_later_requests_to_the_receiver():
    workload = generate(WorkloadSpec(
        num_requests=150, seed=2, arrival={"rate": 40.0},
        prompt_len={"kind": "lognormal", "mean": 200, "sigma": 0.5, "max": 1000},
        output_len={"kind": "lognormal", "mean": 100, "sigma": 0.5, "max": 400},
        prefix={"num_groups": 2, "prefix_len": 4000, "choice": "zipf", "alpha": 2.0}))
    cluster, log, _ = make_cluster("prefix_migration", {"max_imbalance": 4}, n=3, num_pages=4096)
    result = run_checked(cluster, workload)
    assert cluster.runtime.spawn_errors == []
    migrated = {r.tags["migration"]: r for r in result.records if "migration" in r.tags}
    assert migrated, "the hot prefix's engine never counted as overloaded"
    for mid, rec in migrated.items():
        calls = calls_for(log, mid)
        assert shape(calls) in (["prep_recv", "remote_send", "release"], ["prep_recv", "release"])
        receiver, home = rec.tags["migrate_to"], rec.tags["engine"]
        assert calls[0].engine == calls[-1].engine == receiver != home
        # what the home caches when it is overloaded: the prefix's full pages computed so far
        end = calls[0].args["end"]
        assert end % 16 == 0 and 0 < end <= 4000
        if len(calls) == 3:
            assert calls[1].engine == home and calls[1].args["begin"] == calls[0].result["matched"]
        # later requests with that prefix may now run on the receiver, hitting the migrated pages
        landed = max(c.time for c in calls)
        later = [r for r in result.records if r.arrival_time > landed and r.tags.get("engine") == receiver
                 and r.tags.get("mode") == "hit"]
        if end == 4000:
            assert later and all(r.tags["matched"] == 4000 for r in later)
    assert any(calls_for(log, mid)[0].args["end"] == 4000 for mid in migrated)

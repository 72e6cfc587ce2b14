"""Host effects of real engines in the simulator: control-call latency, per-send engine CPU, calls
read between steps. Off by default (exact timings elsewhere stay exact); on, they cost exactly
what they say on an idle cluster."""
import pytest

from sim.cluster import SimCluster
from tests.helpers import make_request, small_cluster, workload_of

RPC = 1e-3


def run_one(strategy="pd", prompt_len=256, max_tokens=4, **host):
    config = small_cluster(2, strategy).model_copy(update=host)
    [record] = SimCluster(config).run(workload_of([make_request("r", prompt_len, max_tokens)])).records
    return record


def test_rpc_latency_adds_its_round_trips_to_an_idle_pd_request_exactly():
    base, slow = run_one(), run_one(rpc_latency_s=RPC)
    # prep_recv (a round trip) + remote_send (a round trip) + start_generate (dispatch only)
    assert slow.first_token_time - base.first_token_time == pytest.approx(2.5 * RPC, abs=1e-12)
    gaps = lambda r: [b - a for a, b in zip(r.token_times, r.token_times[1:])]
    assert gaps(slow) == pytest.approx(gaps(base), abs=1e-15)  # decoding is not a call


def test_rpc_latency_delays_round_robin_by_the_dispatch_half():
    base, slow = run_one("round_robin"), run_one("round_robin", rpc_latency_s=RPC)
    assert slow.first_token_time - base.first_token_time == pytest.approx(RPC / 2, abs=1e-12)


def test_send_overhead_is_charged_to_the_senders_step():
    base, slow = run_one(), run_one(send_overhead_s=2e-4)
    assert slow.first_token_time - base.first_token_time == pytest.approx(2e-4, abs=1e-12)


def test_calls_between_steps_change_nothing_on_an_idle_cluster():
    base, boundary = run_one(rpc_latency_s=RPC), run_one(rpc_latency_s=RPC, calls_between_steps=True)
    assert boundary.token_times == base.token_times


def test_a_busy_decode_engine_answers_prep_recv_at_the_end_of_its_step():
    def second_ttft(**host):
        config = small_cluster(2, "pd").model_copy(update=host)
        # "a" decodes on e1 for a long time; "b" arrives in the middle of one of its steps.
        reqs = [make_request("a", 64, 400), make_request("b", 64, 2, arrival=0.05, seed=1)]
        records = {r.request_id: r for r in SimCluster(config).run(workload_of(reqs)).records}
        return records["b"].first_token_time - records["b"].arrival_time

    assert second_ttft(calls_between_steps=True) > second_ttft()


def test_router_cpu_is_free_while_an_engine_idles_and_taken_from_busy_ones_otherwise():
    # One request on two engines: the other engine's core is idle, so the router costs nothing.
    assert run_one("round_robin").token_times == run_one("round_robin", router_cpu_per_token_s=1e-3).token_times

    def finish_times(**host):
        config = small_cluster(2, "round_robin").model_copy(update=host)
        reqs = [make_request(f"r{i}", 64, 50, seed=i) for i in range(4)]
        return [r.finish_time for r in SimCluster(config).run(workload_of(reqs)).records]

    # Both engines busy: every streamed token costs them router time.
    assert all(b > a for a, b in zip(finish_times(), finish_times(router_cpu_per_token_s=1e-4)))

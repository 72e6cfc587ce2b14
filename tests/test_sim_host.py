"""Host effects of real engines in the simulator: control-call latency, per-send engine CPU, calls
read between steps, streaming tokens to the router, the slower step after idling. Off by default (exact timings elsewhere stay
exact); on, they cost exactly what they say on an idle cluster."""
from itertools import pairwise

import pytest
from pydantic import ValidationError

from sim.cluster import SimCluster
from sim.config import ClusterConfig
from sim.idle_cost import IdleCost
from sim.stream_cost import StreamCost, StreamQueue
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


def test_recv_overhead_is_charged_to_the_receivers_next_step():
    base, slow = run_one(), run_one(recv_overhead_s=3e-4)
    # the decode engine's first step after the handoff (its one-token prefill) pays it, once
    assert slow.first_token_time - base.first_token_time == pytest.approx(3e-4, abs=1e-12)
    gaps = lambda r: [b - a for a, b in zip(r.token_times, r.token_times[1:])]
    assert gaps(slow) == pytest.approx(gaps(base), abs=1e-15)
    assert run_one("round_robin", recv_overhead_s=3e-4).token_times == run_one("round_robin").token_times


@pytest.mark.parametrize("strategy, charged, free", [
    ("round_robin", "generate_overhead_s", "handoff_generate_overhead_s"),  # a new request: the whole prompt
    ("pd", "handoff_generate_overhead_s", "generate_overhead_s"),  # the decode engine continues a handoff
])
def test_a_start_generate_costs_its_engine_the_handling_of_its_kind(strategy, charged, free):
    base = run_one(strategy)
    slow = run_one(strategy, **{charged: 1.5e-4})
    # the request's first step on that engine pays it, once
    assert slow.first_token_time - base.first_token_time == pytest.approx(1.5e-4, abs=1e-12)
    gaps = lambda r: [b - a for a, b in zip(r.token_times, r.token_times[1:])]
    assert gaps(slow) == pytest.approx(gaps(base), abs=1e-15)
    assert run_one(strategy, **{free: 1.5e-4}).token_times == base.token_times


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


def test_router_cpu_is_taken_from_every_engine_in_equal_shares():
    # One request on two engines: its engine pays half of each token's router time in the next
    # step (the other half falls on the other engine's core, measured to cost as much).
    base = run_one("round_robin", max_tokens=10)
    paid = run_one("round_robin", max_tokens=10, router_cpu_per_token_s=1e-3)
    assert paid.first_token_time == base.first_token_time
    assert [b - a for a, b in zip(gaps(base), gaps(paid))] == pytest.approx([5e-4] * 9, abs=1e-12)

    def finish_times(**host):
        config = small_cluster(2, "round_robin").model_copy(update=host)
        reqs = [make_request(f"r{i}", 64, 50, seed=i) for i in range(4)]
        return [r.finish_time for r in SimCluster(config).run(workload_of(reqs)).records]

    # Both engines busy: every streamed token costs them router time.
    assert all(b > a for a, b in zip(finish_times(), finish_times(router_cpu_per_token_s=1e-4)))


def test_router_cpu_taken_during_a_step_makes_that_step_end_later():
    """The router runs while a step runs, on its core: an engine in a long prefill while the other
    streams tokens delivers its first token later by its share of their router time (not its next
    step: that is when the router takes an idle engine's share)."""
    cost = 2e-5  # small enough that the stretch itself sees no more tokens

    def records(**host):
        config = small_cluster(2, "round_robin", max_num_batched_tokens=8192).model_copy(update=host)
        reqs = [make_request("a", 16, 400), make_request("b", 8000, 2, seed=1)]  # a on e0, b on e1
        return {r.request_id: r for r in SimCluster(config).run(workload_of(reqs)).records}

    base, paid = records(), records(router_cpu_per_token_s=cost)
    tokens_meanwhile = sum(t < base["b"].first_token_time for t in paid["a"].token_times)
    assert tokens_meanwhile > 10
    assert paid["b"].first_token_time - base["b"].first_token_time == pytest.approx(
        tokens_meanwhile * cost / 2, abs=1e-12)


# -- streaming tokens to the router (sim.stream_cost) ------------------------------------------
def stream(message=0.0, step=0.0, token=0.0, interval=0.0):
    return StreamCost(interval_s=interval, message_s=message, step_s=step, token_s=token)


def gaps(record):
    return [b - a for a, b in zip(record.token_times, record.token_times[1:])]


def test_free_streaming_changes_no_time():
    # Stepping one step at a time (a stream cost turns decode runs off) gives the same times.
    for strategy in ("round_robin", "pd"):
        assert run_one(strategy, max_tokens=30, stream=stream()).token_times == \
            run_one(strategy, max_tokens=30).token_times


def test_a_message_per_step_delays_every_next_step_by_its_cost():
    base = run_one("round_robin", max_tokens=20)
    paid = run_one("round_robin", max_tokens=20, stream=stream(message=3e-4, step=2e-5, token=1e-6))
    assert paid.first_token_time == base.first_token_time  # sent after the token's time is stamped
    assert [b - a for a, b in zip(gaps(base), gaps(paid))] == pytest.approx([3.21e-4] * 19, abs=1e-12)


def test_an_interval_sends_one_message_per_interval():
    base = run_one("round_robin", max_tokens=40)
    step = gaps(base)[-1]  # a decode step of this lone request (they barely grow with context)
    interval = 4.5 * step
    paid = run_one("round_robin", max_tokens=40, stream=stream(message=1e-4, interval=interval))
    extra = [round((b - a) / 1e-4, 3) for a, b in zip(gaps(base), gaps(paid))]
    # The first token's message goes out at once. The next token queued starts the clock, and
    # the message goes with the token sampled once it is 4.5 steps old: 5 steps later, so every
    # message after the first carries 6 tokens.
    assert set(extra) == {0.0, 1.0}
    sent = [i for i, x in enumerate(extra) if x]
    assert sent[0] == 0 and all(b - a == 6 for a, b in pairwise(sent)) and len(sent) == 7
    assert paid.finish_time - base.finish_time == pytest.approx(1e-4 * len(sent), abs=1e-12)


def test_stream_queue_follows_the_real_engines_rule():
    q = StreamQueue(stream(message=1.0, step=0.1, token=0.01, interval=0.5))
    assert q.after_step(0.0, 0, False) == 0.0  # nothing streamed: nothing to do
    assert q.after_step(0.0, 2, True) == pytest.approx(1.12)  # a stream started: sent at once
    assert q.after_step(0.1, 3, False) == pytest.approx(0.13)  # queued
    assert q.after_step(0.4, 3, False) == pytest.approx(0.13)  # the oldest is 0.3 s old
    assert q.after_step(0.6, 3, False) == pytest.approx(1.13)  # 0.5 s: sent
    assert q.after_step(0.7, 1, False) == pytest.approx(0.11)
    assert q.before_idle() == 1.0 and q.before_idle() == 0.0  # queued tokens go out before idling


def test_stream_cost_is_validated():
    with pytest.raises(ValidationError):
        StreamCost(message_s=-1.0, step_s=0.0, token_s=0.0)
    good = {"message_s": 1e-4, "step_s": 0, "token_s": 0}
    assert ClusterConfig.model_validate({"engines": [{}], "stream": good}).stream == StreamCost(**good)
    with pytest.raises(ValidationError, match="interval"):
        ClusterConfig.model_validate({"engines": [{}], "stream": {**good, "interval": 0.005}})  # misspelt


IDLE = {"idle_s": [0.001, 0.1], "extra_s": [1e-4, 9e-4]}


def test_idle_cost_interpolates_its_measured_table():
    cost = IdleCost(**IDLE)
    assert cost.seconds(0.0) == 0.0
    assert cost.seconds(0.0005) == pytest.approx(5e-5)  # from 0 at no idle
    assert cost.seconds(0.001) == pytest.approx(1e-4)
    assert cost.seconds(0.0505) == pytest.approx(5e-4)
    assert cost.seconds(5.0) == pytest.approx(9e-4)  # flat past the last spell measured


@pytest.mark.parametrize("bad, match", [
    ({"idle_s": [0.001, 0.1], "extra_s": [1e-4]}, "2 points"),
    ({"idle_s": [0.1, 0.001], "extra_s": [1e-4, 1e-4]}, "increasing"),
    ({"idle_s": [0.0, 0.1], "extra_s": [1e-4, 1e-4]}, "positive"),
    ({"idle_s": [0.001], "extra_s": [-1e-4]}, ">= 0"),
])
def test_idle_cost_is_validated(bad, match):
    with pytest.raises(ValidationError, match=match):
        ClusterConfig.model_validate({"engines": [{}], "idle": bad})


def test_the_step_after_an_idle_spell_pays_its_measured_extra_and_no_other_step_does():
    # round_robin on two engines: a -> e0 and b -> e1 at t = 0.01, c -> e0 long after a ended.
    def run(**host):
        reqs = [make_request("a", 64, 8), make_request("b", 64, 8, arrival=0.01, seed=1),
                make_request("c", 64, 8, arrival=0.5, seed=2)]
        config = small_cluster(2, "round_robin").model_copy(update=host)
        return {r.request_id: r for r in SimCluster(config).run(workload_of(reqs)).records}

    base, cold = run(), run(idle=IdleCost(**IDLE))
    cost = IdleCost(**IDLE)
    assert cold["a"].token_times == base["a"].token_times  # its engine had just started: no idle
    assert cold["b"].first_token_time - base["b"].first_token_time == pytest.approx(cost.seconds(0.01), abs=1e-12)
    idle_e0 = 0.5 - cold["a"].finish_time
    assert cold["c"].first_token_time - base["c"].first_token_time == pytest.approx(cost.seconds(idle_e0), abs=1e-12)
    for r in "bc":
        assert gaps(cold[r]) == pytest.approx(gaps(base[r]), abs=1e-12)  # decode steps follow steps

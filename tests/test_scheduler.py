"""The shared scheduler: chunked prefill, admission, preemption, prefix reuse, PD bookkeeping."""
import numpy as np
import pytest

from core_api.scheduler import RequestRejected, Scheduler, SchedulerConfig
from core_api.scheduler_config import SchedulingPolicy
from tests.helpers import make_request


def drain(s: Scheduler, now: float = 0.0, limit: int = 10_000):
    """Run steps until idle; returns the batches' (id, start, n, sample) rows."""
    steps = []
    while (s.running or s.waiting or s.receive_queue) and limit:
        out = s.schedule(now)
        rows = list(zip([q.id for q in out.batch.seqs], out.batch.starts, out.batch.num_new, out.batch.sample))
        if not rows:
            break
        steps.append(rows)
        s.update(out.batch, None, now)
        limit -= 1
    return steps


def test_chunked_prefill_respects_token_budget_then_decodes():
    s = Scheduler(SchedulerConfig(num_pages=64, page_size=4, max_num_batched_tokens=16))
    s.add_generate(make_request("a", 30, max_tokens=3))
    steps = drain(s)
    assert steps[0] == [("a", 0, 16, False)]
    assert steps[1] == [("a", 16, 14, True)], "the chunk that completes the prompt samples"
    assert steps[2:] == [[("a", 30, 1, True)], [("a", 31, 1, True)]]
    s.kv.check_no_leaks()
    assert s.queued_prefill_tokens == 0


def test_decodes_go_first_and_share_the_budget_with_a_new_prefill():
    s = Scheduler(SchedulerConfig(num_pages=64, page_size=4, max_num_batched_tokens=8))
    s.add_generate(make_request("a", 4, max_tokens=5))
    drain_one = s.schedule()
    s.update(drain_one.batch, None, 0)
    s.add_generate(make_request("b", 20, max_tokens=2, seed=1))
    out = s.schedule()
    assert [(q.id, n) for q, n in zip(out.batch.seqs, out.batch.num_new)] == [("a", 1), ("b", 7)]
    assert out.batch.features.decode_seqs == 1 and out.batch.features.prefill_tokens == 7


def test_prefix_cache_hit_skips_cached_pages_but_recomputes_a_token():
    s = Scheduler(SchedulerConfig(num_pages=64, page_size=4))
    a = make_request("a", 16, max_tokens=1)
    s.add_generate(a)
    drain(s)
    b = make_request("b", 16, max_tokens=1, prompt=a.prompt.copy())
    s.add_generate(b)
    out = s.schedule()
    # The whole prompt is cached, but the last page is recomputed so the first token is sampled.
    assert out.batch.starts == [12] and out.batch.num_new == [4]
    assert s.kv.hits == 12


def test_preemption_by_recompute_when_pages_run_out():
    s = Scheduler(SchedulerConfig(num_pages=6, page_size=4, max_num_batched_tokens=64, policy=SchedulingPolicy(watermark=0)))
    s.add_generate(make_request("a", 8, max_tokens=8))
    s.add_generate(make_request("b", 8, max_tokens=8, seed=1))
    steps = drain(s)
    assert s.num_preemptions > 0
    finished_rows = [r for step in steps for r in step if r[3]]
    assert sum(1 for r in finished_rows if r[0] == "a") == 8
    assert sum(1 for r in finished_rows if r[0] == "b") == 8
    s.kv.check_no_leaks()


def test_requests_that_can_never_fit_are_rejected_with_a_reason():
    s = Scheduler(SchedulerConfig(num_pages=4, page_size=4, max_model_len=100))
    with pytest.raises(RequestRejected, match="max context of 100"):
        s.add_generate(make_request("long", 99, max_tokens=5))
    with pytest.raises(RequestRejected, match="needs 5 KV pages"):
        s.add_generate(make_request("big", 17, max_tokens=2))


def test_send_and_receive_move_a_prefix_between_schedulers():
    cfg = SchedulerConfig(num_pages=32, page_size=4)
    prefill, decode = Scheduler(cfg), Scheduler(cfg)
    req = make_request("r", 10, max_tokens=2)
    recv = decode.add_receive(req, -1)
    assert decode.try_admit_receive(recv, 0)
    assert (recv.begin, recv.target, len(recv.pages), decode.kv.stats().reserved) == (0, 9, 3, 3)
    prefill.add_send(req, 0, -1)
    steps = drain(prefill)
    assert not any(r[3] for step in steps for r in step), "a prefill engine never samples"
    prefill.finish_send("r")
    prefill.kv.check_no_leaks()
    decode.complete_receive("r", now=1)
    assert decode.kv.stats().reserved == 0
    decode.add_generate(req, -1)
    steps = drain(decode)
    assert steps[0] == [("r", 9, 1, True)], "the decode engine computes only the last prompt token"
    decode.kv.check_no_leaks()


def test_expired_reservation_is_reclaimed_and_later_landing_fails():
    s = Scheduler(SchedulerConfig(num_pages=8, page_size=4, reservation_timeout_s=5))
    req = make_request("r", 8)
    seq = s.add_receive(req, None)
    s.try_admit_receive(seq, 0)
    assert s.expire(4.9) == []
    assert s.expire(5.0) == [seq]
    with pytest.raises(KeyError, match="expired or released"):
        s.complete_receive("r", now=6)
    s.kv.check_no_leaks()


def test_start_generate_cannot_claim_kv_that_never_arrived():
    s = Scheduler(SchedulerConfig(num_pages=8, page_size=4))
    req = make_request("r", 8)
    seq = s.add_receive(req, None)
    s.try_admit_receive(seq, 0)
    with pytest.raises(ValueError, match=r"only KV of \[0, 0\)"):
        s.add_generate(req, begin=8)


def test_release_frees_everything_and_keeps_computed_prefix():
    s = Scheduler(SchedulerConfig(num_pages=16, page_size=4, max_num_batched_tokens=8))
    req = make_request("r", 12, max_tokens=4)
    s.add_generate(req)
    out = s.schedule()
    s.update(out.batch, None, 0)  # 8 tokens computed: 2 full pages
    s.release("r")
    s.kv.check_no_leaks()
    assert s.kv.stats().cached == 2 and s.queued_prefill_tokens == 0


def test_identical_inputs_give_identical_schedules():
    def run():
        s = Scheduler(SchedulerConfig(num_pages=24, page_size=4, max_num_batched_tokens=16, policy=SchedulingPolicy(watermark=0)))
        rng = np.random.default_rng(7)
        for i in range(6):
            s.add_generate(make_request(f"r{i}", int(rng.integers(1, 30)), max_tokens=int(rng.integers(1, 9)), seed=i))
        return drain(s)

    assert run() == run()


def test_a_send_served_whole_by_the_cache_skips_the_queue():
    s = Scheduler(SchedulerConfig(num_pages=32, page_size=4, max_num_batched_tokens=8))
    ctx = make_request("ctx", 16, max_tokens=1)
    s.add_generate(ctx)
    drain(s)
    s.add_generate(make_request("busy", 30, max_tokens=4, seed=3))  # a prefill occupies the queue
    send = s.add_send(make_request("mig", 16, prompt=ctx.prompt.copy()), 0, None)
    assert send.status == "sent" and send.num_computed == 16 and len(s.waiting) == 1
    s.finish_send("mig")
    drain(s)
    s.kv.check_no_leaks()


def test_prefill_context_counts_the_kv_each_prefill_chunk_reads():
    s = Scheduler(SchedulerConfig(num_pages=64, page_size=4, max_num_batched_tokens=16))
    s.add_generate(make_request("a", 30, max_tokens=3))
    first = s.schedule()
    f = first.batch.features
    assert (f.prefill_tokens, f.prefill_context, f.prefill_attn) == (16, 16, 16 * 8)
    s.update(first.batch, None, 0)
    s.add_generate(make_request("b", 5, max_tokens=2, seed=1))
    second = s.schedule()  # a's last 14 prompt tokens over its 16 cached, then b's first 2 of 5
    f = second.batch.features
    assert f.prefill_context == (16 + 14) + (0 + 2)
    assert f.prefill_attn == 14 * (16 + 7) + 2 * (0 + 1)
    assert f.decode_seqs == 0 and f.decode_context == 0
    s.update(second.batch, None, 0)
    third = s.schedule()  # a decodes (not prefill context), b's remaining 3 prompt tokens over 2
    f = third.batch.features
    assert (f.decode_seqs, f.decode_context) == (1, 31)
    assert (f.prefill_tokens, f.prefill_context) == (3, 5)


# -- the scheduling policy (vLLM's admission, for replaying its runs) -------------------------
def test_whole_sequence_admission_waits_where_first_chunk_admission_would_not():
    """10 pages of 4 tokens, 16-token chunks: a running 24-token sequence holds 6 pages; a waiting
    20-token prompt has a first chunk that fits (4 pages) but not the whole prompt (5 pages)."""
    def second_admitted(policy):
        s = Scheduler(SchedulerConfig(num_pages=10, page_size=4, max_num_batched_tokens=16, policy=policy))
        s.add_generate(make_request("a", 24, max_tokens=8))
        s.update(s.schedule().batch, None, 0)  # a's first chunk: 4 pages
        s.add_generate(make_request("b", 20, max_tokens=1, seed=1))
        out = s.schedule()  # a takes its last 8 prompt tokens (2 more pages): 4 pages remain
        return "b" in [q.id for q in out.batch.seqs]

    assert second_admitted(SchedulingPolicy(watermark=0))
    assert not second_admitted(SchedulingPolicy(watermark=0, admit_whole_sequence=True))


def test_no_admission_in_a_step_that_preempted_when_the_policy_says_so():
    """a and b decode until the pages run out; a's next page preempts b, whose first 4-token
    chunk would fit again at once: re-admitted in that step, unless the policy forbids it."""
    def readmitted_in_preemption_step(policy):
        s = Scheduler(SchedulerConfig(num_pages=8, page_size=4, max_num_batched_tokens=4, policy=policy))
        s.add_generate(make_request("a", 8, max_tokens=20))
        s.add_generate(make_request("b", 8, max_tokens=20, seed=1))
        for _ in range(100):
            out = s.schedule()
            if out.preempted:
                assert [q.id for q in out.preempted] == ["b"]
                return "b" in [q.id for q in out.batch.seqs]
            s.update(out.batch, None, 0)
        raise AssertionError("no preemption happened")

    assert readmitted_in_preemption_step(SchedulingPolicy(watermark=0))
    assert not readmitted_in_preemption_step(SchedulingPolicy(watermark=0, admit_after_preemption=False))


def test_prefix_caching_off_never_reuses_pages():
    s = Scheduler(SchedulerConfig(num_pages=64, page_size=4, policy=SchedulingPolicy(prefix_caching=False)))
    a = make_request("a", 16, max_tokens=1)
    s.add_generate(a)
    drain(s)
    s.add_generate(make_request("b", 16, max_tokens=1, prompt=a.prompt.copy()))
    assert s.schedule().batch.starts == [0] and s.kv.hits == 0
    assert s.cached_prefix_len(a) == 0
    assert s.kv.num_cached == 0 and not a._page_hashes  # nothing kept for reuse: no key ever computed

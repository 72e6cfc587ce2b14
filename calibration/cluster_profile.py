"""What only two engine processes and a router can measure: KV handoffs, control calls, and the
router's CPU.

KV handoffs: prep_recv then remote_send of a prompt the sender already caches (so nothing is
computed): both calls' round trips, the sender's compute-free step, shipping, landing and the
acknowledgement. That is what a handoff costs beyond compute, and what the simulator's two
control round trips + link latency + bytes / bandwidth stand for.

Control calls: the round trip of a no-op call (the simulator's `rpc_latency_s`: prep_recv and
remote_send each pay one, start_generate half), the sender engine's CPU per remote_send outside
any step (`send_overhead_s`), the receiver's per handoff (`recv_overhead_s`), and an engine's per
start_generate call, of a new request (`generate_overhead_s`) and of a handed-off one
(`handoff_generate_overhead_s`). The handoff time
above contains both round trips, so the fitted link latency is stated net of them
(calibration.fit.to_profile).

Router CPU: the router decodes every streamed token's message and resumes the strategy's
coroutine; on this project's CPU machines that costs tens of microseconds per token. On a GPU
host it runs on spare cores and costs engines nothing; where the router shares the engines'
cores (a 2-core machine with 2 engines), every streamed token takes that CPU away from an
engine. It is measured here (CPU seconds of this process per output token, on a round-robin
run at half the burst throughput) and `calibrate fit --colocated-router` puts it in the profile,
which the simulator then takes from every engine in equal shares (sim.host) to match such a host.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import time

import numpy as np

from calibration.environment import pin_engines
from calibration.samples import TransferSample
from core_api.types import Request, SamplingParams
from core_api.workload import WorkloadSpec, generate

ROUTER_REQUESTS = 48


async def _transfers(engines, pages_list, page_size, kv_bytes_page, vocab, warmup, repeats, rng):
    src, dst = engines
    out = []
    for pages in pages_list:
        n, times = pages * page_size, []
        for r in range(warmup + repeats):
            prompt = rng.integers(0, vocab, size=n, dtype=np.int32)
            warm = Request(f"xfer-warm-{pages}-{r}", prompt, SamplingParams(max_tokens=1, ignore_eos=True))
            async for _ in src.start_generate(warm):  # the sender computes (and caches) the KV first
                pass
            req = Request(f"xfer-{pages}-{r}", prompt, SamplingParams(max_tokens=1, ignore_eos=True))
            t0 = time.perf_counter()
            kv_addr, matched = await dst.prep_recv(req, None)
            await src.remote_send(req, kv_addr, dst.id, matched, None)  # all cached: pure transfer
            dt = time.perf_counter() - t0
            await dst.release(req.id)
            if r >= warmup:
                times.append(dt)
        out.append(TransferSample(pages=pages, nbytes=pages * kv_bytes_page, time_s=statistics.median(times),
                                  times_s=times))
    return out


async def _control(engines, vocab: int, page_size: int, rng, pings: int = 40, sends: int = 16) -> dict:
    """What control calls cost outside the step loop, on idle engines: the round trip of a no-op
    call (ping: router -> engine -> router), the sender's own CPU per remote_send (handling
    the call, shipping, acknowledgements, the reply), from the engine's main-thread CPU clock
    around `sends` transfers of cached prompts, less the cost of the `stats` call that reads it,
    and likewise the receiver's per handoff (the prep_recv call, landing the KV, completing the
    reservation), read around each handoff. Then what handling a start_generate call costs the
    loop (decoding it, queuing the request; its steps are not part of it), from the engine's own
    count per call: for a new request (the prompt's KV computed by the engine itself) and for
    one whose KV was just handed to it (PD's decode engine, which already holds the request)."""
    from real import protocol as p

    src, dst = engines
    rtts = []
    for _ in range(pings):
        t0 = time.perf_counter()
        await src._call(p.Ping(op="ping", id=0))
        rtts.append(time.perf_counter() - t0)
        await asyncio.sleep(0.002)
    # Four full pages and one token: the sender caches the four pages, and the receiver is handed
    # them as PD hands them over, keeping the last prompt token to compute itself.
    prompts = [rng.integers(0, vocab, size=4 * page_size + 1, dtype=np.int32) for _ in range(sends)]
    for i, prompt in enumerate(prompts):  # compute (and cache) every prompt's KV first
        async for _ in src.start_generate(Request(f"ctl-warm-{i}", prompt, SamplingParams(max_tokens=1,
                                                                                           ignore_eos=True))):
            pass
    stats_cost = {}
    for engine in (src, dst):
        costs = []
        for _ in range(5):
            a, b = await engine.stats(), await engine.stats()
            costs.append(b["loop_cpu_s"] - a["loop_cpu_s"])
        stats_cost[engine.id] = statistics.median(costs)
    before, received = (await src.stats())["loop_cpu_s"], 0.0
    handed_off = []
    for i, prompt in enumerate(prompts):
        req = Request(f"ctl-{i}", prompt, SamplingParams(max_tokens=1, ignore_eos=True))
        split = len(prompt) - 1  # page-aligned: all of it cached on the sender, so no step
        dst_before = (await dst.stats())["loop_cpu_s"]
        kv_addr, matched = await dst.prep_recv(req, split)
        await src.remote_send(req, kv_addr, dst.id, matched, split)  # all cached: no step
        received += (await dst.stats())["loop_cpu_s"] - dst_before - stats_cost[dst.id]
        handed_off.append((req, split))
    cpu = (await src.stats())["loop_cpu_s"] - before - stats_cost[src.id]
    resumed = await _generate_call_cpu(dst, [dst.start_generate(req, begin) for req, begin in handed_off])
    fresh = [Request(f"ctl-new-{i}", rng.integers(0, vocab, size=4 * page_size, dtype=np.int32),
                     SamplingParams(max_tokens=1, ignore_eos=True)) for i in range(sends)]
    new = await _generate_call_cpu(src, [src.start_generate(req) for req in fresh])
    return {"rpc_latency_s": statistics.median(rtts), "send_overhead_s": max(0.0, cpu / sends),
            "recv_overhead_s": max(0.0, received / sends), "generate_overhead_s": new,
            "handoff_generate_overhead_s": resumed, "pings": pings, "sends": sends,
            "stats_call_cpu_s": stats_cost[src.id]}


async def _generate_call_cpu(engine, streams) -> float:
    """Mean thread CPU the engine's loop spent handling each of these start_generate calls (run
    one after another to the end), from its per-call count (real.engine_stats.CallCosts)."""
    def count(stats) -> list:
        return stats.get("calls", {}).get("start_generate", [0, 0.0])

    n0, cpu0 = count(await engine.stats())
    for stream in streams:
        async for _ in stream:
            pass
    n1, cpu1 = count(await engine.stats())
    return (cpu1 - cpu0) / (n1 - n0) if n1 > n0 else 0.0


async def _router_cost(engines, vocab: int, seed: int, max_len: int) -> dict:
    """Router CPU seconds per output token on a round-robin run at half the burst throughput."""
    from real.cluster import run_workload

    spec = WorkloadSpec(num_requests=ROUTER_REQUESTS, vocab_size=vocab, seed=seed,
                        prompt_len={"kind": "uniform", "low": 32, "high": min(256, max_len // 2)},
                        output_len={"kind": "uniform", "low": 16, "high": 64},
                        arrival={"rate": float("inf")})
    burst = await run_workload(engines, generate(spec), "round_robin", {})
    capacity = ROUTER_REQUESTS / max(burst.wall_time_s, 1e-9)
    paced = generate(spec.model_copy(update={"seed": seed + 1,
                                             "arrival": spec.arrival.model_copy(update={"rate": capacity / 2})}))
    cpu0 = time.process_time()
    result = await run_workload(engines, paced, "round_robin", {})
    cpu = time.process_time() - cpu0
    tokens = max(1, result.metrics()["total_output_tokens"])
    return {"router_cpu_per_token_s": cpu / tokens, "burst_capacity_req_s": round(capacity, 2),
            "paced_rate_req_s": round(capacity / 2, 2), "output_tokens": int(tokens), "router_cpu_s": round(cpu, 3)}


def profile_cluster(s, kv_bytes_per_token: int, vocab: int,
                    progress=None) -> tuple[list[TransferSample], dict | None]:
    """Transfer samples, control-call costs and the router's CPU cost, on two fresh engine
    processes configured as `s.engine`, pinned as calibration.validate pins them; `progress`
    (calibration.profile.Progress) hears of each of the three parts as it ends."""
    from real.cluster import RealCluster
    from real.config import RealClusterConfig

    e = s.engine
    limit = min(e.max_model_len - 1, e.num_pages * e.page_size)
    pages_list = [p for p in s.grid.transfer_pages if p * e.page_size <= limit]
    spec = e.model_dump(exclude={"id", "listen", "exit_with_parent"})
    cluster = RealCluster(RealClusterConfig(engines=[{"count": 2, **spec}]))
    rng = np.random.default_rng(s.seed + 1)

    def done(label: str, part: int) -> None:
        if progress:
            progress(part, 3, label)

    async def go():
        async with cluster.session() as engines:
            pair = list(engines.values())
            transfers = await _transfers(pair, pages_list, e.page_size, kv_bytes_per_token * e.page_size, vocab,
                                         s.warmup, s.transfer_repeats, rng) if pages_list else []
            done("KV transfers between two engines", 1)
            control = await _control(pair, vocab, e.page_size, rng)
            done("control calls", 2)
            router = await _router_cost(pair, vocab, s.seed + 2, e.max_model_len)
            done(f"router CPU over {2 * ROUTER_REQUESTS} requests", 3)
            return transfers, {**router, **control}

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        with cluster:
            pinned = pin_engines(cluster.procs)
            transfers, router = asyncio.run(go())
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
    router["pinned"] = pinned
    return transfers, router

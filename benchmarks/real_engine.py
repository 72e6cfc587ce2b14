"""Real engines on CPU: prefill and decode tokens/s, single engine vs PD, router overhead.

    PYTHONPATH=. .venv/bin/python benchmarks/real_engine.py [--models tiny,smollm2] [--threads 1]

Per model, two engine processes (1 torch thread each by default) are started once and serve:
- prefill: 8 prompts at once, max_tokens=1, on one engine (prompt tokens / wall, and the engine's
  own forward tokens / busy time);
- decode: 8 concurrent streams of short prompts on one engine (output tokens / decode wall);
- single vs PD: the same 8-request burst through round_robin on e0 alone, then pd (e0 -> e1);
- router overhead (tiny only): the router process's CPU time per request for 1-token requests,
  for round_robin (one call) and pd (prep_recv + remote_send + start_generate).
"fast" is batch_invariant=False (plain batched matmuls); "exact" is the bit-exact mode tests use.
"""
from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

SIZES = {  # prompt length for prefill, decode steps, prompt/output of the mixed burst
    "tiny": {"prefill": 512, "decode": 128, "mixed": (256, 32)},
    "smollm2": {"prefill": 256, "decode": 32, "mixed": (192, 16)},
}


def burst(tag: str, n: int, prompt_len: int, max_tokens: int, vocab: int, seed: int = 0):
    from core_api.types import Request, SamplingParams
    from core_api.workload import Workload

    rng = np.random.default_rng(seed)
    return Workload([Request(f"{tag}{i}", rng.integers(0, vocab, prompt_len, dtype=np.int32),
                             SamplingParams(max_tokens=max_tokens, ignore_eos=True)) for i in range(n)])


async def measure(engines: dict, model: str, vocab: int, router_overhead: bool) -> list[str]:
    from core_api.metrics import summarize
    from real.cluster import run_workload

    size, out = SIZES[model], []
    e0 = [engines["e0"]]
    both = list(engines.values())
    await run_workload(e0, burst("warm", 2, 32, 4, vocab), "round_robin", {})

    s0 = (await engines["e0"].stats())
    res = await run_workload(e0, burst("pre", 8, size["prefill"], 1, vocab, 1), "round_robin", {})
    s1 = (await engines["e0"].stats())
    toks = sum(r.prompt_len for r in res.records)
    wall = max(r.finish_time for r in res.records) - min(r.arrival_time for r in res.records)
    engine_rate = (s1["forward_tokens"] - s0["forward_tokens"]) / (s1["busy_s"] - s0["busy_s"])
    out.append(f"prefill  {toks / wall:8.0f} tok/s wall, {engine_rate:8.0f} tok/s in forward "
               f"(8 x {size['prefill']} tokens, one engine)")

    res = await run_workload(e0, burst("dec", 8, 16, size["decode"], vocab, 2), "round_robin", {})
    t_first = max(r.token_times[0] for r in res.records)
    t_last = max(r.finish_time for r in res.records)
    gen = sum(len([t for t in r.token_times if t > t_first]) for r in res.records)
    out.append(f"decode   {gen / (t_last - t_first):8.0f} tok/s with 8 streams "
               f"({1000 * (t_last - t_first) / (gen / 8):.1f} ms per step)")

    p_len, o_len = size["mixed"]
    runs = (("single", e0, {}, 3), ("pd 1P1D", both, {"prefill": ["e0"], "decode": ["e1"]}, 6))
    for name, chosen, params, seed in runs:  # different prompts: no prefix-cache help for the second
        strategy = "round_robin" if name == "single" else "pd"
        res = await run_workload(chosen, burst(f"mix{name[:2]}", 8, p_len, o_len, vocab, seed), strategy, params)
        m = summarize(res.records)
        out.append(f"{name:8s} TTFT {m['mean_ttft_ms']:7.1f} ms  TPOT {m['mean_tpot_ms']:6.1f} ms  "
                   f"{m['output_throughput']:7.0f} out tok/s  ({8} x {p_len} prompt, {o_len} out, burst)")

    if router_overhead:
        for strategy, chosen, params in (("round_robin", e0, {}),
                                         ("pd", both, {"prefill": ["e0"], "decode": ["e1"]})):
            n = 400
            work = burst(f"ovh{strategy[:2]}", n, 17, 1, vocab, 4)
            await run_workload(chosen, burst("w", 20, 17, 1, vocab, 5), strategy, params)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await run_workload(chosen, work, strategy, params)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            out.append(f"router   {1000 * cpu / n:6.3f} ms CPU per request ({strategy}, {n} requests of 17 tokens, "
                       f"1 output; {1000 * wall / n:.2f} ms wall each)")
    return out


async def run_model(model: str, threads: int, invariant: bool, router_overhead: bool) -> list[str]:
    from real.cluster import RealCluster

    with RealCluster.local(2, model=model, threads=threads, batch_invariant=invariant, num_pages=512,
                           max_num_batched_tokens=2048) as cluster:
        async with cluster.session() as engines:
            vocab = engines["e0"].info["vocab_size"]
            return await measure(engines, model, vocab, router_overhead)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per engine")
    ap.add_argument("--modes", default="fast,exact", help="fast (batched matmuls) and/or exact (batch-invariant)")
    args = ap.parse_args()
    for model in args.models.split(","):
        for mode in args.modes.split(","):
            if model == "smollm2" and mode == "exact" and args.modes == "fast,exact":
                continue  # minutes on one CPU thread; ask for it explicitly with --modes exact
            t0 = time.perf_counter()
            lines = asyncio.run(run_model(model, args.threads, mode == "exact", model == "tiny" and mode == "fast"))
            print(f"== {model} ({mode}, {args.threads} thread(s) per engine, 2 engine processes; "
                  f"{time.perf_counter() - t0:.0f} s)")
            for line in lines:
                print("  " + line)


if __name__ == "__main__":
    main()

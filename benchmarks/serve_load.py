"""Load on `microserving serve` over loopback: request throughput, TTFT, and what the HTTP router
adds to a request compared with calling the engine directly.

    PYTHONPATH=. .venv/bin/python benchmarks/serve_load.py [--requests 200] [--duration 20]
        [--concurrency 1,8,32] [--strategy least_loaded] [--prompt-len 64,256] [--max-tokens 32]

Setup: this script starts 2 tiny-model engine processes (RealCluster) and runs `microserving serve
--connect ...` as a separate process connected to them, the way it runs in production (the server
has its own interpreter, so the load generator never competes with it for the GIL). The script
also opens its own RealEngine clients on the same engines, for the direct baseline.

1. Router overhead: one request at a time, alternating an HTTP streaming completion and a direct
   `RealEngine.start_generate` of the same shape on an idle cluster (fresh random prompts, so no
   prefix-cache hits flatter either side). Added latency = HTTP - direct, for TTFT (to the first
   token) and end to end: FastAPI/uvicorn, JSON, tokenization, strategy, detokenization, SSE.
2. Load: a closed loop of C concurrent clients per level, each sending streaming completions
   back to back, bounded by --requests and --duration per level. Reports requests/s, output
   tokens/s, TTFT and end-to-end percentiles.

Everything is on loopback (127.0.0.1). Figures depend on the machine; the tiny model makes the
engines cheap so that the router's own costs show.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def start_server(serve_args: list[str], timeout_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    """`microserving serve --port 0 SERVE_ARGS` as a separate process; (process, base url) once it listens."""
    cmd = [sys.executable, "-m", "microserving.cli", "serve", "--port", "0", *serve_args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x))
    env.pop("MICROSERVING_ADMIN_TOKEN", None)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + timeout_s
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("server did not start:\n" + "".join(lines))


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def random_prompt(rng: np.random.Generator, lo: int, hi: int) -> str:
    n = int(rng.integers(lo, hi + 1))
    return "".join(chr(c) for c in rng.integers(97, 123, n))  # ASCII letters: one byte token each


async def http_request(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(TTFT, end to end, output tokens) of one streaming completion, seen by the client."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread()).decode()[:200]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            msg = json.loads(line[6:])
            if "error" in msg:
                raise RuntimeError(msg["error"]["message"])
            if ttft is None and msg["choices"] and msg["choices"][0]["text"]:
                ttft = time.perf_counter() - t0
            if msg.get("usage"):
                tokens = msg["usage"]["completion_tokens"]
    return ttft if ttft is not None else time.perf_counter() - t0, time.perf_counter() - t0, tokens


async def direct_request(engine, rid: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    from core_api.types import Request, SamplingParams

    req = Request(rid, np.frombuffer(prompt.encode(), dtype=np.uint8).astype(np.int32),
                  SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async for chunk in engine.start_generate(req):
        if chunk.token_ids and ttft is None:
            ttft = time.perf_counter() - t0
        tokens += len(chunk.token_ids)
    return ttft, time.perf_counter() - t0, tokens


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


async def overhead(client, engines, rng, args) -> dict:
    lo, hi = args.prompt_len
    http, direct = [], []
    for i in range(args.overhead_requests):
        engine = engines[i % len(engines)]
        http.append(await http_request(client, random_prompt(rng, lo, hi), args.max_tokens))
        direct.append(await direct_request(engine, f"direct-{i}", random_prompt(rng, lo, hi), args.max_tokens))
    med = {}
    for name, rows in (("http", http), ("direct", direct)):
        med[f"{name}_ttft"] = float(np.median([r[0] for r in rows])) * 1e3
        med[f"{name}_e2e"] = float(np.median([r[1] for r in rows])) * 1e3
    return {**med, "added_ttft_ms": med["http_ttft"] - med["direct_ttft"],
            "added_e2e_ms": med["http_e2e"] - med["direct_e2e"], "n": args.overhead_requests}


async def load_level(client, rng, c: int, args) -> dict:
    lo, hi = args.prompt_len
    results, errors = [], []
    deadline = time.perf_counter() + args.duration
    budget = [args.requests]

    async def worker() -> None:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            try:
                results.append(await http_request(client, random_prompt(rng, lo, hi), args.max_tokens))
            except Exception as exc:  # noqa: BLE001 - counted and shown
                errors.append(repr(exc))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    wall = time.perf_counter() - t0
    ttft, e2e = [r[0] for r in results], [r[1] for r in results]
    return {"concurrency": c, "requests": len(results), "errors": len(errors), "wall_s": wall,
            "req_per_s": len(results) / wall, "tok_per_s": sum(r[2] for r in results) / wall,
            "ttft_p50_ms": pct(ttft, 50), "ttft_p90_ms": pct(ttft, 90), "ttft_p99_ms": pct(ttft, 99),
            "e2e_p50_ms": pct(e2e, 50), "e2e_p99_ms": pct(e2e, 99), "first_error": errors[0] if errors else None}


async def bench(url: str, cluster, args) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(args.seed)
    limits = httpx.Limits(max_connections=max(args.concurrency) + 8, max_keepalive_connections=max(args.concurrency) + 8)
    async with cluster.session() as directory, httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        engines = list(directory.values())
        for i in range(5):  # warm up both paths (connections, first forward passes)
            await http_request(client, random_prompt(rng, *args.prompt_len), args.max_tokens)
            await direct_request(engines[i % 2], f"warm-{i}", random_prompt(rng, *args.prompt_len), args.max_tokens)
        over = await overhead(client, engines, rng, args)
        levels = [await load_level(client, rng, c, args) for c in args.concurrency]
    return over, levels


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="at most this many requests per load level")
    p.add_argument("--duration", type=float, default=20.0, help="at most this many seconds per load level")
    p.add_argument("--concurrency", default="1,8,32", help="closed-loop clients per level")
    p.add_argument("--overhead-requests", type=int, default=40, help="sequential pairs for the overhead figure")
    p.add_argument("--prompt-len", default="64,256", help="prompt length range in tokens: LO,HI")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--strategy", default="least_loaded")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.prompt_len = tuple(int(x) for x in args.prompt_len.split(","))

    import tempfile

    from real.cluster import RealCluster
    from real.config import RealClusterConfig
    from real.keys import generate_keys

    print(f"2 tiny engines, strategy {args.strategy}, prompts {args.prompt_len[0]}-{args.prompt_len[1]} tokens, "
          f"{args.max_tokens} output tokens, loopback", flush=True)
    # The server process is a second router of these engines: both hold one key directory.
    with tempfile.TemporaryDirectory() as tmp:
        keys = str(generate_keys(Path(tmp) / "keys"))
        config = RealClusterConfig(engines=[{"count": 2, "num_pages": 2048, "max_num_seqs": 64}], keys=keys)
        with RealCluster(config) as cluster:
            connect = [x for e in cluster.engine_ids for x in ("--connect", cluster.addresses[e])]
            proc, url = start_server(["--strategy", args.strategy, "--max-concurrent", "4096", "--keys", keys,
                                      *connect])
            try:
                over, levels = asyncio.run(bench(url, cluster, args))
            finally:
                stop_server(proc)
    print(f"\nrouter overhead, {over['n']} sequential requests on an idle cluster (medians):")
    print(f"  TTFT  direct {over['direct_ttft']:7.2f} ms   via HTTP {over['http_ttft']:7.2f} ms   "
          f"added {over['added_ttft_ms']:6.2f} ms")
    print(f"  E2E   direct {over['direct_e2e']:7.2f} ms   via HTTP {over['http_e2e']:7.2f} ms   "
          f"added {over['added_e2e_ms']:6.2f} ms")
    print("\nclosed-loop load (streaming completions):")
    print(f"  {'conc':>4} {'reqs':>5} {'err':>4} {'req/s':>7} {'tok/s':>8} {'TTFT p50':>9} {'p90':>7} {'p99':>7} "
          f"{'E2E p50':>8} {'p99':>7}  (ms)")
    for r in levels:
        print(f"  {r['concurrency']:>4} {r['requests']:>5} {r['errors']:>4} {r['req_per_s']:>7.1f} {r['tok_per_s']:>8.0f} "
              f"{r['ttft_p50_ms']:>9.1f} {r['ttft_p90_ms']:>7.1f} {r['ttft_p99_ms']:>7.1f} {r['e2e_p50_ms']:>8.1f} "
              f"{r['e2e_p99_ms']:>7.1f}")
        if r["first_error"]:
            print(f"       first error: {r['first_error']}")
    return 0 if not any(r["errors"] for r in levels) else 1


if __name__ == "__main__":
    sys.exit(main())

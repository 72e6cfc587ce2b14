"""KV page transfer bandwidth between two engine processes, next to an in-process memcpy.

    PYTHONPATH=. .venv/bin/python benchmarks/kv_transfer.py [--sizes 1,4,16,64,256] [--transports shm,zmq]
    python benchmarks/kv_transfer.py --device cuda:0 --transports cuda_ipc,zmq --json out.json   # GPU
    PYTHONPATH=. .venv/bin/python benchmarks/kv_transfer.py --auth off,on --rounds 3     # CURVE's cost

What is timed is the real path: engine e0 holds the prompts' KV in its prefix cache (warmed by an
untimed start_generate), e1 reserves pages with prep_recv, and e0's remote_send ships every page
(served from cache, so no compute is timed) into e1's pool and returns once all have landed and
e1 has completed the reservations. The model is a random "KV-heavy" Llama (64 KiB of fp32 KV per
token: 8 layers x 8 KV heads x 128 dims) written to a temporary HF checkpoint, so 256 MiB is only
4096 tokens of prefill. Transfers of one size run as concurrent remote_sends of <= 32 MiB each.
The baseline is `dst.copy_(src)` of the same number of contiguous bytes in one process, on the
same device (device-to-device on a GPU).

`--auth off,on` measures each transport without and with CurveZMQ authentication (every zmq
message encrypted), alternating over `--rounds`, and prints the medians, the router-to-engine
round trip (median of 200 pings) and the ratio of each figure with authentication to without.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MIB = 2**20
LAYERS, KV_HEADS, HEAD_DIM, PAGE = 8, 8, 128, 16
TOKEN_BYTES = 2 * LAYERS * KV_HEADS * HEAD_DIM * 4
MAX_REQ_TOKENS = 512  # 32 MiB per remote_send


def write_checkpoint(path: Path) -> None:
    from safetensors.torch import save_file

    from real.model_config import LlamaConfig
    from real.weights import random_state_dict

    cfg = {"architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": LAYERS, "num_attention_heads": KV_HEADS, "num_key_value_heads": KV_HEADS,
           "head_dim": HEAD_DIM, "max_position_embeddings": 4096, "torch_dtype": "float32",
           "tie_word_embeddings": False}
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(random_state_dict(LlamaConfig.from_hf(cfg), seed=0), str(path / "model.safetensors"))


def memcpy_gbps(nbytes: int, repeats: int = 5, device: str = "cpu") -> float:
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src), device) for _ in range(repeats))
    return nbytes / best / 1e9


def _timed(fn, device: str = "cpu") -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def prompts_for(size_mib: int, seed: int) -> list[np.ndarray]:
    tokens = size_mib * MIB // TOKEN_BYTES
    rng = np.random.default_rng(seed)
    lens = [MAX_REQ_TOKENS] * (tokens // MAX_REQ_TOKENS) + ([tokens % MAX_REQ_TOKENS] if tokens % MAX_REQ_TOKENS else [])
    # +1 token: the prefix cache keeps full pages of prompt[:-1]; the ranges sent are page aligned.
    return [rng.integers(0, 256, n + 1, dtype=np.int32) for n in lens]


async def transfer(engines, size_mib: int, seed: int, repeats: int) -> float:
    from core_api.types import Request, SamplingParams

    e0, e1 = engines["e0"], engines["e1"]
    best = float("inf")
    for rep in range(repeats):
        reqs = [Request(f"s{size_mib}r{rep}p{i}", p, SamplingParams(max_tokens=1))
                for i, p in enumerate(prompts_for(size_mib, seed + rep))]
        for r in reqs:  # untimed: compute the KV on e0 (it stays in e0's prefix cache)
            async for _ in e0.start_generate(r):
                pass
        ends = [r.prompt_len - 1 for r in reqs]
        addrs = await asyncio.gather(*(e1.prep_recv(r, end=end) for r, end in zip(reqs, ends)))
        t0 = time.perf_counter()
        await asyncio.gather(*(e0.remote_send(r, kv, "e1", matched, end)
                               for r, (kv, matched), end in zip(reqs, addrs, ends)))
        best = min(best, time.perf_counter() - t0)
        await asyncio.gather(*(e1.release(r.id) for r in reqs))
    return size_mib * MIB / best / 1e9


async def run_transport(ckpt: Path, transport: str, sizes: list[int], repeats: int,
                        device: str = "cpu", auth: bool = True) -> tuple[dict[int, float], float]:
    """(GB/s per size, median round trip in seconds) on a fresh pair of engines."""
    from real.cluster import RealCluster, check_no_leaks
    from real.config import RealClusterConfig

    pages = max(sizes) * MIB // (TOKEN_BYTES * PAGE) * 2 + 64
    engine = {"count": 2, "model": str(ckpt), "num_pages": pages, "batch_invariant": False, "transport": transport,
              "max_num_batched_tokens": 2048, "max_model_len": 4096, "device": device}
    with RealCluster(RealClusterConfig(engines=[engine], auth=auth)) as cluster:
        async with cluster.session() as engines:
            rtts = [await engines["e0"].round_trip() for _ in range(200)]
            out = {s: await transfer(engines, s, 1000 * s, repeats) for s in sizes}
            await check_no_leaks(list(engines.values()))
    return out, float(np.median(rtts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4,16,64,256", help="MiB per measurement")
    ap.add_argument("--transports", default="shm,zmq")
    ap.add_argument("--auth", default="on", help="on, off or off,on (CurveZMQ between router and engines)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of every setting (medians shown)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="engines' device (cuda:0: both engines on one GPU)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    auths = [{"on": True, "off": False}[a] for a in args.auth.split(",")]
    torch.set_num_threads(1)
    base = {s: memcpy_gbps(s * MIB, device=args.device) for s in sizes}
    runs: dict[str, list[tuple[dict[int, float], float]]] = {}
    errors = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp))
        for _ in range(args.rounds):
            for t in args.transports.split(","):
                for auth in auths:
                    key = f"{t}{'+curve' if auth else ''}"
                    try:
                        runs.setdefault(key, []).append(
                            asyncio.run(run_transport(Path(tmp), t, sizes, args.repeats, args.device, auth)))
                    except Exception as exc:  # noqa: BLE001 - one setting failing must not hide the others
                        errors[key] = f"{type(exc).__name__}: {exc}"
                        print(f"{key}: failed: {errors[key]}")
    results = {k: {s: float(np.median([r[0][s] for r in v])) for s in sizes} for k, v in runs.items() if v}
    rtt_us = {k: float(np.median([r[1] for r in v])) * 1e6 for k, v in runs.items() if v}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": args.device, "memcpy_gbps": base, "transfer_gbps": results,
                                         "round_trip_us": rtt_us, "errors": errors}, indent=1) + "\n")
    print(f"KV page transfer e0 -> e1 (two engine processes, {TOKEN_BYTES // 1024} KiB KV/token, "
          f"page {PAGE} tokens), best of {args.repeats}, median of {args.rounds} round(s)")
    head = f"{'size':>8} {'memcpy GB/s':>12}" + "".join(f" {t + ' GB/s':>16} {'% memcpy':>9}" for t in results)
    print(head)
    for s in sizes:
        row = f"{s:>5} MiB {base[s]:>12.2f}"
        for t, r in results.items():
            row += f" {r[s]:>16.2f} {100 * r[s] / base[s]:>8.0f}%"
        print(row)
    print("router -> engine round trip (median of 200 pings): "
          + ", ".join(f"{k} {v:.0f} us" for k, v in rtt_us.items()))
    for t in args.transports.split(","):
        plain, curve = results.get(t), results.get(f"{t}+curve")
        if plain and curve:
            ratios = ", ".join(f"{s} MiB {curve[s] / plain[s]:.2f}" for s in sizes)
            print(f"{t}: with/without CURVE, bandwidth {ratios}; round trip {rtt_us[t + '+curve'] / rtt_us[t]:.2f}")


if __name__ == "__main__":
    main()

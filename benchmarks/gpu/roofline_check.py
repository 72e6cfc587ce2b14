"""Bring-up step 3: the engine's decode and prefill steps against the GPU's roofline.

    python benchmarks/gpu/roofline_check.py --out results/roofline.json [--dry-run]

Decode: one step of B sequences at context C, timed through the engine's own step loop
(calibration.step_profiler, flashinfer attention, batched GEMMs), against the HBM roofline: every
weight read once plus every sequence's KV, at the GPU's datasheet bandwidth (sim.hardware). The
goal is >= 70% of the roofline at large batch. Prefill: one chunk of N tokens, as tokens/s and as
the fraction of peak FLOP/s its linear layers and attention need. --dry-run runs a few small shapes
of the tiny model on the CPU (fractions are then of a made-up CPU roof, only to show it runs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DECODE_BATCHES = (1, 8, 32, 64, 128, 256)
DECODE_CONTEXTS = (1024, 4096, 16384, 32768)
PREFILL_TOKENS = (512, 2048, 8192)
KV_BUDGET_BYTES = 60 * 2**30  # the pool the decode grid may fill (two engines' worth fits an H200)


def timed_steps(p, seqs_kv: int, batch: int, repeats: int) -> float:
    seqs = [p.add(seqs_kv, 1, max_tokens=repeats + 3) for _ in range(batch)]
    p.step()
    times = [p.step().seconds for _ in range(repeats)]
    p.release(seqs)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--gpu", default="H200", help="GPU preset whose datasheet figures are the roof")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from calibration.step_profiler import StepProfiler
    from real.config import EngineSpec
    from sim.hardware import get_gpu

    if args.dry_run:
        model, device, dtype = "tiny", "cpu", None
        batches, contexts, chunks = (1, 8), (128, 512), (64, 256)
        roof_bw, roof_flops = 20e9, 200e9  # made up: a CPU has no datasheet roof here
    else:
        model, device, dtype = "llama-3.1-8b", "cuda:0", "bfloat16"
        batches, contexts, chunks = DECODE_BATCHES, DECODE_CONTEXTS, PREFILL_TOKENS
        gpu = get_gpu(args.gpu)
        roof_bw, roof_flops = gpu.hbm_bandwidth_Bps, gpu.peak_bf16_flops
    probe = StepProfiler(EngineSpec(model=model, device=device, dtype=dtype, num_pages=64, batch_invariant=False))
    cfg = probe.worker.model.config
    probe.close()
    kv_token = cfg.kv_bytes_per_token()
    weight_bytes = cfg.num_params() * (4 if cfg.dtype == "float32" else 2)
    page = 16
    pages = int(min(KV_BUDGET_BYTES, max(b * (c + 64) for b in batches for c in contexts) * kv_token) // (kv_token * page))
    spec = EngineSpec(model=model, device=device, dtype=dtype, num_pages=pages, batch_invariant=False,
                      max_num_batched_tokens=max(max(chunks), max(batches)), max_num_seqs=max(batches),
                      max_model_len=max(max(contexts), max(chunks)) + 128, page_size=page)
    t0 = time.perf_counter()
    p = StepProfiler(spec)
    load_s = time.perf_counter() - t0
    decode, prefill = [], []
    for b in batches:
        for c in contexts:
            if b * (c + 64) > pages * page:
                continue
            t = timed_steps(p, c, b, args.repeats)
            roof = (weight_bytes + b * c * kv_token) / roof_bw
            decode.append({"batch": b, "context": c, "step_ms": round(t * 1e3, 4), "roofline_ms": round(roof * 1e3, 4),
                           "fraction_of_roofline": round(roof / t, 3)})
            print(f"decode B={b:<4} ctx={c:<6} {t * 1e3:8.3f} ms  roofline {roof * 1e3:7.3f} ms  "
                  f"{roof / t:6.1%}", flush=True)
    layer_flops_per_token = 2 * (cfg.num_params() - cfg.vocab_size * cfg.hidden_size)
    for n in chunks:
        times = []
        for _ in range(args.repeats):
            seqs = [p.add(0, n)]
            times.append(p.step(budget=n).seconds)
            p.release(seqs)
        t = statistics.median(times)
        flops = n * layer_flops_per_token + 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * n * n / 2
        prefill.append({"tokens": n, "step_ms": round(t * 1e3, 3), "tokens_per_s": round(n / t),
                        "fraction_of_peak_flops": round(flops / t / roof_flops, 3)})
        print(f"prefill n={n:<6} {t * 1e3:8.2f} ms  {n / t:9.0f} tok/s  {flops / t / roof_flops:6.1%} of peak",
              flush=True)
    p.close()
    large = [d["fraction_of_roofline"] for d in decode if d["batch"] >= 64]
    summary = {"model": model, "device": device, "roof": {"hbm_Bps": roof_bw, "peak_flops": roof_flops},
               "load_s": round(load_s, 1), "decode": decode, "prefill": prefill,
               "decode_large_batch_median_fraction": statistics.median(large) if large else None,
               "goal": ">= 0.70 of the HBM roofline at large batch", "dry_run": args.dry_run}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

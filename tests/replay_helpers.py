"""Builders for replay and layer-profile tests: synthetic runs and profiler bundles (no ../shared)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core_api.types import Request, SamplingParams
from core_api.workload import Workload, WorkloadSpec, generate

LLAMA_META_YAML = """\
vllm_version: 0.19.0
gpu: NVIDIA GeForce RTX 4090
hardware: RTX4090
architecture: llama
model: meta-llama/Llama-3.1-8B
variant: bf16
tp_degrees: [1]
engine_effective: {enforce_eager: true, block_size: 16}
measurement_iterations: 3
skew_fit:
  enabled: true
  per_tp:
    1: {alpha_default: 0.05}
"""
DENSE_OPS = ("embedding", "layernorm", "qkv_proj", "rotary_emb", "o_proj", "gate_up_proj", "act_fn", "down_proj",
             "final_layernorm")
TOKENS = (1, 16, 64, 256, 1024, 2048)
SEQS = (1, 8, 64, 256)
GRID_CHUNK = (0, 16, 256, 2048)
GRID_KV = (0, 16, 1024, 16384)
GRID_DECODE = (0, 1, 16, 256)


def dense_us(op: str, tokens: float) -> float:
    """A made-up linear kernel time per operator: 5 us floor + a per-token slope by operator."""
    return 5.0 + (DENSE_OPS.index(op) + 1) * 0.01 * tokens


def attention_us(chunk: float, kv_prefill: float, n_decode: float, kv_decode: float) -> float:
    """A made-up attention time linear in each axis (so linear interpolation is exact)."""
    return 8.0 + 0.02 * chunk + 0.001 * kv_prefill + 0.5 * n_decode + 0.0005 * kv_decode + 1e-5 * n_decode * kv_decode


def per_sequence_us(op: str, seqs: float) -> float:
    return (1000.0 if op == "lm_head" else 50.0) + 2.0 * seqs


def write_layer_bundle(root: Path, meta: str = LLAMA_META_YAML) -> Path:
    """A profiler bundle in the vllm-layers layout with the made-up times above."""
    tp = root / "tp1"
    tp.mkdir(parents=True)
    (root / "meta.yaml").write_text(meta)
    rows = ["layer,tokens,time_us"] + [f"{op},{t},{dense_us(op, t)}" for op in DENSE_OPS for t in TOKENS]
    (tp / "dense.csv").write_text("\n".join(rows) + "\n")
    rows = ["layer,sequences,time_us"] + [f"{op},{s},{per_sequence_us(op, s)}" for op in ("lm_head", "sampler")
                                          for s in SEQS]
    (tp / "per_sequence.csv").write_text("\n".join(rows) + "\n")
    rows = ["prefill_chunk,kv_prefill,n_decode,kv_decode,time_us"]
    for c in GRID_CHUNK:
        for kp in (GRID_KV if c else (0,)):
            for n in GRID_DECODE:
                if c == 0 and n == 0:
                    continue
                for kd in (GRID_KV[1:] if n else (0,)):
                    rows.append(f"{c},{kp},{n},{kd},{attention_us(c, kp, n, kd)}")
    (tp / "attention.csv").write_text("\n".join(rows) + "\n")
    return root


def burst_workload(num_requests: int = 40, seed: int = 0, rate: float = 20.0) -> Workload:
    """Shared prefixes and long enough outputs to fill a small KV pool; first arrival at 0."""
    spec = WorkloadSpec(num_requests=num_requests, arrival={"process": "poisson", "rate": rate},
                        prompt_len={"kind": "uniform", "low": 100, "high": 600},
                        output_len={"kind": "uniform", "low": 20, "high": 200},
                        prefix={"num_groups": 3, "prefix_len": 256, "fraction": 0.6}, vocab_size=128000, seed=seed)
    w = generate(spec)
    t0 = w.requests[0].arrival_time
    return Workload([Request(r.id, np.asarray(r.prompt), SamplingParams(max_tokens=r.sampling.max_tokens,
                                                                        ignore_eos=True),
                             arrival_time=r.arrival_time - t0) for r in w], name="burst")

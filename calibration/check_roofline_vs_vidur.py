"""Compare RooflineCostModel's defaults with Vidur's measured H100 operator times.

Data: Vidur's public H100 profiles (github.com/microsoft/vidur, data/profiling/compute/h100 and
network/h100_dgx; commit in SOURCE_COMMIT): per-operator CUDA times of one Llama-2-7B layer
(mlp.csv: QKV / O / up-gate / down projections and the elementwise ops, 1..4096 tokens, TP 1, 2,
4, 8) and NCCL all-reduce kernel times (all_reduce.csv, size in bytes).

    PYTHONPATH=. python calibration/check_roofline_vs_vidur.py [--data DIR] [--efficiency JSON]

Prints, per TP degree and token count, measured vs modelled linear-layer time of one layer,
then summaries for the linear layers, the whole non-attention layer and the all-reduce.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.cost_model import RooflineCostModel

DEFAULT_DATA = os.environ.get("VIDUR_H100_PROFILES", "/work/shared/data/vidur_h100_profiles")
LINEAR = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE = ("input_layernorm", "attn_rope", "post_attention_layernorm", "mlp_act", "add")
SHOWN_TOKENS = (1, 8, 32, 64, 128, 256, 264, 384, 512, 768, 1024, 2048, 3072, 4096)
TPS = (1, 2, 4, 8)


def median_ms(row: dict, op: str) -> float:
    return float(row[f"time_stats.{op}.median"]) * 1e-3


def load_mlp(data: Path) -> dict[tuple[int, int], dict]:
    """(tokens, tp) -> row; the file repeats a few shapes, the last one wins."""
    rows = {}
    with open(data / "mlp.csv") as fh:
        for r in csv.DictReader(fh):
            assert (r["n_embd"], r["n_expanded_embd"], r["n_head"]) == ("4096", "11008", "32"), "not Llama-2-7B"
            rows[(int(r["num_tokens"]), int(r["num_tensor_parallel_workers"]))] = r
    return rows


def summary(errs: list[float]) -> str:
    a = [abs(e) for e in errs]
    worst = max(errs, key=abs)
    return f"mean |err| {100 * statistics.mean(a):5.1f}%  median {100 * statistics.median(a):5.1f}%  " \
           f"worst {100 * worst:+6.1f}%  (n={len(errs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(DEFAULT_DATA))
    ap.add_argument("--efficiency", type=json.loads, default={}, help="RooflineEfficiency overrides as JSON")
    args = ap.parse_args()
    rows = load_mlp(args.data)

    def models(eff: dict) -> dict[int, RooflineCostModel]:
        return {tp: RooflineCostModel("H100-SXM", "Llama-2-7B", tp, eff) for tp in TPS}

    cms = models(args.efficiency)
    print(f"efficiency: {cms[1].eff.model_dump()}")
    print("\nLinear layers of one Llama-2-7B layer on H100: measured (Vidur) vs roofline, microseconds")
    print(f"{'tokens':>6} " + " ".join(f"{'TP' + str(tp) + ' meas':>10} {'model':>7} {'err':>6}" for tp in TPS))
    for n in SHOWN_TOKENS:
        cells = []
        for tp in TPS:
            meas = sum(median_ms(rows[(n, tp)], op) for op in LINEAR)
            model = cms[tp].linear_layer_time(n)
            cells.append(f"{meas * 1e6:10.1f} {model * 1e6:7.1f} {100 * (model / meas - 1):+5.0f}%")
        print(f"{n:>6} " + " ".join(cells))

    def linear_errs(cm_by_tp: dict[int, RooflineCostModel], tps=TPS) -> list[float]:
        return [cm_by_tp[tp].linear_layer_time(n) / sum(median_ms(r, op) for op in LINEAR) - 1
                for (n, tp), r in rows.items() if tp in tps]

    print("\nLinear layers, all shapes:")
    for tp in TPS:
        print(f"  TP{tp}: {summary(linear_errs(cms, (tp,)))}")
    print(f"  all: {summary(linear_errs(cms))}")
    classic = models({**args.efficiency, "overlap": 1.0})
    print(f"  same factors, classic max() roofline (overlap=1): {summary(linear_errs(classic))}")

    nonattn = [(cms[tp].linear_layer_time(n) + cms[tp].elementwise_layer_time(n))
               / sum(median_ms(r, op) for op in LINEAR + ELEMENTWISE) - 1 for (n, tp), r in rows.items()]
    print(f"\nWhole non-attention layer (linear + norms, RoPE, SwiGLU, residual): {summary(nonattn)}")

    print("\nAll-reduce (NCCL kernel time), microseconds:")
    print(f"{'bytes':>10} " + " ".join(f"{'TP' + str(tp) + ' meas':>10} {'model':>7}" for tp in TPS[1:]))
    ar: dict[tuple[int, int], float] = {}
    with open(args.data / "all_reduce.csv") as fh:
        for r in csv.DictReader(fh):
            if r["collective"] == "all_reduce" and r["rank"] == "0":
                ar[(int(r["size"]), int(r["num_workers"]))] = float(r["time_stats.all_reduce.median"]) * 1e-3
    sizes = sorted({s for s, _ in ar})
    for target in (2048, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20):
        size = min(sizes, key=lambda s: abs(math.log(s / target)))
        cells = [f"{ar[(size, tp)] * 1e6:10.1f} {cms[tp].allreduce_time(size) * 1e6:7.1f}" for tp in TPS[1:]
                 if (size, tp) in ar]
        print(f"{size:>10} " + " ".join(cells))
    ar_errs = [cms[tp].allreduce_time(size) / t - 1 for (size, tp), t in ar.items()]
    print(f"  all sizes: {summary(ar_errs)}")


if __name__ == "__main__":
    main()

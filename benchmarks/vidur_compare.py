"""Whole-process time of one simulation, this project against Vidur, on the same workload.

    .venv/bin/python benchmarks/vidur_compare.py --vidur-python /path/to/venv/bin/python
    python benchmarks/vidur_compare.py      # with Vidur installed in this Python

The workload: Llama-2-7B on one H100, N requests (default 1000) with Poisson arrivals at 4 req/s
and fixed lengths (512 prompt, 128 output tokens), the same on both sides. Each side runs as a
fresh process (imports, set-up and simulation: what a user waits for), alternating, `--repeats`
times; the script prints each time, the medians and their ratio. Both write a record per request
(its times to first token, decode, end) and the run's metrics, and neither each token's own time,
as Vidur does by default (ours: `token_times: false`, ITL percentiles from a histogram within
0.1%; Vidur also writes per-batch series). Ours is timed a second time with every token's time in
its records, and that ratio printed beside.

Vidur (`pip install vidur==0.0.26` into its own environment) loads its operator profiles and
trained predictions from Hugging Face datasets at start-up; nothing is downloaded here. The
script builds an offline dataset cache for it (HF_HUB_OFFLINE=1): the compute profile is Vidur's
own H100 measurement of Llama-2-7B's linear layers where `--vidur-data` holds it
(`vidur_h100_profiles/mlp.csv` of the project's shared data), the network profiles likewise
(`all_reduce.csv`, `send_recv.csv`); attention, which that data lacks, is a synthetic table priced
by this project's roofline. This is a timing comparison, not a fidelity one: what the profiles say
changes Vidur's predictions, not its speed. Vidur trains its predictors once (cached in the work
folder); the timed runs reuse them, as a user's second run would.
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = "meta-llama/Llama-2-7b-hf"
COMPUTE_REPO, NETWORK_REPO = "local/llama-2-7b-h100", "local/h100-dgx"
SNAPSHOT = "0" * 40  # any commit id: the offline cache has one snapshot per dataset
PROMPT, OUTPUT, RATE = 512, 128, 4.0


def synthetic_attention_csv(block_size: int = 16) -> str:
    """Attention kernel times (ms) of Llama-2-7B on an H100 over Vidur's grid, from the roofline."""
    from core_api.step import StepFeatures
    from sim.cost_model import RooflineCostModel

    m = RooflineCostModel("H100-SXM", "Llama-2-7B")
    layers = m.model.num_layers
    rows = [("n_embd,n_q_head,n_kv_head,block_size,num_tensor_parallel_workers,is_decode,batch_size,"
             "prefill_chunk_size,kv_cache_size,time_stats.attn_prefill.median,time_stats.attn_decode.median,"
             "time_stats.attn_kv_cache_save.median")]
    head = f"4096,32,32,{block_size},1"

    def attn_ms(f: StepFeatures) -> float:  # attention share of one layer: total less the same step without context
        base = StepFeatures(prefill_tokens=f.prefill_tokens, prefill_seqs=f.prefill_seqs, decode_seqs=f.decode_seqs)
        return max(1e-4, (m.step_time(f) - m.step_time(base)) / layers * 1e3)

    for chunk in (16, 64, 128, 256, 512, 1024, 2048, 4096):
        for kv in (0, 512, 1024, 2048, 4096):
            f = StepFeatures(prefill_tokens=chunk, prefill_seqs=1, prefill_attn=chunk * (kv + chunk / 2),
                             prefill_context=kv + chunk)
            rows.append(f"{head},False,1,{chunk},{kv},{attn_ms(f):.6f},0,{0.001 * chunk / 512:.6f}")
    for batch in (1, 2, 4, 8, 16, 32, 64, 128):
        for kv in (128, 512, 1024, 2048, 4096):
            f = StepFeatures(decode_seqs=batch, decode_context=batch * kv, decode_max_context=kv)
            rows.append(f"{head},True,{batch},0,{kv},0,{attn_ms(f):.6f},{0.001 * batch / 512:.6f}")
    return "\n".join(rows) + "\n"


def _dataset(cache: Path, repo: str, files: dict[str, bytes], config: dict) -> None:
    """An offline Hugging Face dataset cache entry, as huggingface_hub's snapshot_download finds one."""
    folder = cache / f"datasets--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / SNAPSHOT
    snap.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(SNAPSHOT)
    (snap / "config.json").write_text(json.dumps(config))
    for name, data in files.items():
        (snap / name).write_bytes(lzma.compress(data))


def build_vidur_cache(work: Path, data: Path | None) -> dict[str, str]:
    """The offline datasets Vidur reads; returns what each profile came from."""
    cache = work / "vidur_cache"
    used = {}

    def profile(name: str) -> bytes:
        path = data / name if data else None
        if path is None or not path.exists():
            raise SystemExit(f"error: Vidur's {name} not found under --vidur-data {data}")
        used[name] = str(path)
        return path.read_bytes()

    _dataset(cache / "profiling_data" / "compute", COMPUTE_REPO,
             {"mlp.csv.xz": profile("mlp.csv"), "attention.csv.xz": synthetic_attention_csv().encode()},
             {"model": MODEL, "device_sku": "h100"})
    used["attention.csv"] = "synthetic (this project's H100 roofline)"
    _dataset(cache / "profiling_data" / "network", NETWORK_REPO,
             {"all_reduce.csv.xz": profile("all_reduce.csv"), "send_recv.csv.xz": profile("send_recv.csv")},
             {"sku": "h100_dgx"})
    return used


def vidur_command(python: str, work: Path, n: int, max_tokens: int | None) -> list[str]:
    p = "--random_forrest_execution_time_predictor_config_"
    grid = [f"{p}prediction_max_tokens_per_request", str(max_tokens)] if max_tokens else []
    return [python, "-m", "vidur.main", "--replica_config_model_name", MODEL, "--replica_config_device", "h100",
            "--replica_config_network_device", "h100_dgx", "--replica_config_tensor_parallel_size", "1",
            "--replica_config_num_pipeline_stages", "1",
            "--cluster_config_num_replicas", "1",
            "--request_generator_config_type", "synthetic", "--synthetic_request_generator_config_num_requests",
            str(n), "--interval_generator_config_type", "poisson",
            "--poisson_request_interval_generator_config_qps", str(RATE), "--length_generator_config_type", "fixed",
            "--fixed_request_length_generator_config_prefill_tokens", str(PROMPT),
            "--fixed_request_length_generator_config_decode_tokens", str(OUTPUT),
            f"{p}model_profiling_dataset", COMPUTE_REPO, f"{p}network_profiling_dataset", NETWORK_REPO,
            f"{p}cache_dir", str(work / "vidur_cache"), "--metrics_config_output_dir", str(work / "vidur_out"),
            "--no-metrics_config_write_json_trace", "--no-metrics_config_enable_chrome_trace",
            "--no-metrics_config_store_plots", "--no-metrics_config_save_table_to_wandb", *grid]


def our_command(work: Path, n: int, token_times: bool = False) -> list[str]:
    """Ours, writing per-request records and metrics as Vidur does (request_metrics.csv: no token's
    own time), or with `token_times` every token's time in every record as well."""
    name = "ours_token_times" if token_times else "ours"
    config = work / f"{name}.json"
    config.write_text(json.dumps({
        "cluster": {"engines": [{"gpu": "H100-SXM", "model": "Llama-2-7B"}], "strategy": {"name": "round_robin"}},
        "workload": {"num_requests": n, "arrival": {"process": "poisson", "rate": RATE},
                     "prompt_len": {"kind": "fixed", "value": PROMPT},
                     "output_len": {"kind": "fixed", "value": OUTPUT}},
        "token_times": token_times}))
    return [sys.executable, "-m", "microserving", "sim", "--config", str(config), "--out", str(work / f"{name}_out.json")]


def timed(cmd: list[str], env: dict, cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"error: {cmd[2]} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return elapsed


def this_python_with_vidur() -> str | None:
    """This interpreter, if Vidur is installed in it."""
    from importlib.util import find_spec

    return sys.executable if find_spec("vidur") is not None else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vidur-python", help=(
        "a Python with vidur==0.0.26 installed (default: this one, if Vidur is installed here)"))
    parser.add_argument("--vidur-data", type=Path, default=ROOT.parent / "shared" / "data" / "vidur_h100_profiles",
                        help="folder with Vidur's H100 mlp.csv, all_reduce.csv, send_recv.csv")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "vidur_compare", help="work folder")
    parser.add_argument("--vidur-max-tokens", type=int, default=None, metavar="N", help=(
        "Vidur's prediction grid up to N tokens per request (default: Vidur's own, 2M; its start-up "
        "predicts every grid point, so the workload's longest request is Vidur at its fastest)"))
    args = parser.parse_args()
    args.vidur_python = args.vidur_python or this_python_with_vidur()
    if args.vidur_python is None:
        parser.error("Vidur is not installed in this Python: install vidur==0.0.26 into its own environment "
                     "(its dependencies pin other versions than this project's) and pass --vidur-python "
                     "/path/to/that/env/bin/python")
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    used = build_vidur_cache(work, args.vidur_data)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    vidur = vidur_command(args.vidur_python, work, args.requests, args.vidur_max_tokens)
    ours, ours_tokens = our_command(work, args.requests), our_command(work, args.requests, token_times=True)
    print(f"workload: {args.requests} requests, Llama-2-7B on one H100, Poisson {RATE:g} req/s, "
          f"{PROMPT} prompt + {OUTPUT} output tokens")
    print("Vidur's profiles: " + "; ".join(f"{k}: {v}" for k, v in used.items()))
    print(f"Vidur's prediction grid: up to {args.vidur_max_tokens or 'its default of 2M'} tokens per request")
    print("training Vidur's predictors once (cached for the timed runs) ...", flush=True)
    print(f"  {timed(vidur, env, work):.1f} s")
    times: dict[str, list[float]] = {"ours": [], "ours_tokens": [], "vidur": []}
    for i in range(args.repeats):
        times["ours"].append(timed(ours, env, ROOT))
        times["ours_tokens"].append(timed(ours_tokens, env, ROOT))
        times["vidur"].append(timed(vidur, env, work))
        print(f"run {i + 1}: ours {times['ours'][-1]:.2f} s (with every token's time "
              f"{times['ours_tokens'][-1]:.2f} s), Vidur {times['vidur'][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median of {args.repeats}: ours {med['ours']:.2f} s, Vidur {med['vidur']:.2f} s, "
          f"ratio {med['ours'] / med['vidur']:.3f} (goal <= {1 / 15:.3f}); both write per-request records "
          f"and metrics")
    print(f"  ours with every token's time in its records as well: {med['ours_tokens']:.2f} s, "
          f"ratio {med['ours_tokens'] / med['vidur']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A third-party benchmark client, unchanged, against `microserving serve`: GuideLLM.

    PYTHONPATH=. .venv/bin/python benchmarks/third_party_client.py --guidellm /path/to/venv/bin/guidellm
        [--rate 5] [--requests 40] [--prompt-tokens 64] [--output-tokens 16]

GuideLLM pulls large dependencies (transformers, datasets, torch), so it is not part of the install
or of CI: put it in a separate virtual environment (`python -m venv gl && gl/bin/pip install
guidellm torch==2.13.0`, the pin keeping torch the CPU build) and point --guidellm at it. The script
writes the served model's tokenizer as a Hugging Face directory (`serve --export-tokenizer`), starts
a server over 2 tiny-model engines on a free loopback port, runs GuideLLM's constant-rate benchmark
with synthetic prompts (chat completions, streaming, its own tokenizer loaded from that directory),
and prints GuideLLM's figures next to the server's own /metrics counts for the same requests.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def start_tiny_server(tokenizer_dir: Path) -> tuple[subprocess.Popen, str]:
    """The tiny model's tokenizer exported to `tokenizer_dir`, then a server over 2 tiny engines."""
    from benchmarks.serve_load import start_server

    subprocess.run([sys.executable, "-m", "microserving.cli", "serve", "--model", "tiny", "--export-tokenizer",
                    str(tokenizer_dir)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return start_server(["--engines", "2", "--model", "tiny", "--strategy", "least_loaded"])


def server_counts(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total"}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name in wanted:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guidellm", default=shutil.which("guidellm"), help="the guidellm executable")
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=16)
    args = ap.parse_args()
    if not args.guidellm:
        print("error: GuideLLM not found: install it in its own venv and pass --guidellm PATH (see --help)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tok, report = Path(tmp) / "tokenizer", Path(tmp) / "guidellm.json"
        proc, url = start_tiny_server(tok)
        try:
            before = server_counts(url)
            cmd = [args.guidellm, "run", "--backend", f"kind=openai_http,target={url},model=tiny",
                   "--profile", f"kind=constant,rate={args.rate}",
                   "--constraint", f"kind=max_requests,count={args.requests}",
                   "--data", (f"kind=synthetic_text,prompt_tokens={args.prompt_tokens},"
                              f"output_tokens={args.output_tokens}"),
                   "--tokenizer", f"kind=huggingface_auto,model={tok}",
                   "--output", f"kind=json,path={report}", "--disable-progress"]
            t0 = time.perf_counter()
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            if run.returncode != 0:
                print(run.stdout[-3000:], run.stderr[-3000:], sep="\n")
                print(f"error: guidellm exited with {run.returncode}", file=sys.stderr)
                return 1
            after = server_counts(url)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        bench = json.loads(report.read_text())["benchmarks"][0]
    m = bench["metrics"]

    def stat(name: str, key: str = "median") -> float:
        return m[name]["successful"][key]

    done = m["request_totals"]["successful"]
    print(f"GuideLLM {args.requests} requests at {args.rate:g} req/s, {args.prompt_tokens}+{args.output_tokens} "
          f"tokens, against microserving serve (2 tiny engines, least_loaded); {wall:.1f} s wall")
    print(f"  successful {done}, errored {m['request_totals']['errored']}")
    print(f"  TTFT ms median {stat('time_to_first_token_ms'):.1f}, p95 "
          f"{stat('time_to_first_token_ms', 'percentiles')['p95']:.1f}")
    print(f"  ITL ms median {stat('inter_token_latency_ms'):.2f}; request latency s median {stat('request_latency'):.3f}")
    print(f"  output tok/s mean {stat('output_tokens_per_second', 'mean'):.1f}")
    grew = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    print(f"  server /metrics for the same run: {grew['vllm:request_success_total']:.0f} requests, "
          f"{grew['vllm:prompt_tokens_total']:.0f} prompt and {grew['vllm:generation_tokens_total']:.0f} output tokens; "
          f"GuideLLM counted {m['prompt_token_count']['successful']['total_sum']:.0f} and "
          f"{m['output_token_count']['successful']['total_sum']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

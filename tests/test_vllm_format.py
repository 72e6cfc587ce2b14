"""`--out-vllm`: results in the shape `vllm bench serve --save-result` writes (its keys, units and
per-request lists), consistent with our own metrics, for a simulated and a real run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from microserving.cli import main

VLLM_KEYS = {"date", "backend", "model_id", "tokenizer_id", "num_prompts", "request_rate", "burstiness",
             "max_concurrency", "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
             "request_throughput", "request_goodput", "output_throughput", "total_token_throughput", "input_lens",
             "output_lens", "ttfts", "itls", "generated_texts", "errors", "mean_ttft_ms", "median_ttft_ms",
             "std_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_itl_ms", "p99_itl_ms", "mean_e2el_ms",
             "p99_e2el_ms"}


def _check(data: dict, n: int) -> None:
    assert VLLM_KEYS <= set(data), VLLM_KEYS - set(data)
    assert data["num_prompts"] == n and all(len(data[k]) == n for k in ("input_lens", "ttfts", "itls", "errors"))
    ok = [e == "" for e in data["errors"]]
    # vLLM's units: per-request lists in seconds, statistics in ms; they must agree.
    ttfts = [t for t, good in zip(data["ttfts"], ok) if good]
    assert np.mean(ttfts) * 1e3 == pytest.approx(data["mean_ttft_ms"], rel=1e-9)
    gaps = [g for row in data["itls"] for g in row]
    assert np.mean(gaps) * 1e3 == pytest.approx(data["mean_itl_ms"], rel=1e-9)
    assert sum(data["output_lens"]) == data["total_output_tokens"]


def test_a_simulated_run_in_vllms_shape(tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main(["sim", "--num-requests", "30", "--rate", "8", "--out-vllm", str(out)]) == 0
    data = json.loads(out.read_text())
    _check(data, 30)
    assert data["backend"] == "microserving-sim" and data["request_rate"] == 8.0 and data["burstiness"] == 1.0


def test_a_real_run_in_vllms_shape_with_texts(tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main(["run", "--engines", "2", "--strategy", "round_robin", "--num-requests", "6", "--rate", "50",
                 "--out-vllm", str(out)]) == 0
    data = json.loads(out.read_text())
    _check(data, 6)
    assert data["backend"] == "microserving-real" and all(isinstance(t, str) for t in data["generated_texts"])
    assert sum(map(len, data["generated_texts"])) > 0

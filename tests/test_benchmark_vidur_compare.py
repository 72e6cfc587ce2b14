"""benchmarks/vidur_compare.py without Vidur: the synthetic attention table it gives Vidur and the
offline dataset cache it builds (where huggingface_hub's snapshot_download looks), from small
profile files made here; the commands it times."""
from __future__ import annotations

import csv
import io
import json
import lzma
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vidur_compare


def test_the_synthetic_attention_table_grows_with_context_and_batch():
    rows = list(csv.DictReader(io.StringIO(vidur_compare.synthetic_attention_csv())))
    decode = [r for r in rows if r["is_decode"] == "True"]
    prefill = [r for r in rows if r["is_decode"] == "False"]
    assert decode and prefill and all(r["num_tensor_parallel_workers"] == "1" for r in rows)

    def ms(rs, col, **where):
        return [float(r[col]) for r in rs if all(r[k] == v for k, v in where.items())]

    by_kv = ms(decode, "time_stats.attn_decode.median", batch_size="8")
    assert by_kv == sorted(by_kv) and by_kv[0] > 0
    by_chunk = ms(prefill, "time_stats.attn_prefill.median", kv_cache_size="1024")
    assert by_chunk == sorted(by_chunk) and by_chunk[0] > 0


def test_the_offline_cache_holds_each_dataset_where_snapshot_download_looks(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("mlp.csv", "all_reduce.csv", "send_recv.csv"):
        (data / name).write_text(f"{name}\n1\n")
    used = vidur_compare.build_vidur_cache(tmp_path / "work", data)
    assert used["attention.csv"].startswith("synthetic")
    compute = tmp_path / "work/vidur_cache/profiling_data/compute/datasets--local--llama-2-7b-h100"
    snap = compute / "snapshots" / (compute / "refs" / "main").read_text()
    assert json.loads((snap / "config.json").read_text()) == {"model": vidur_compare.MODEL, "device_sku": "h100"}
    assert lzma.decompress((snap / "mlp.csv.xz").read_bytes()) == b"mlp.csv\n1\n"
    with pytest.raises(SystemExit, match="send_recv.csv not found"):
        (data / "send_recv.csv").unlink()
        vidur_compare.build_vidur_cache(tmp_path / "again", data)


def test_both_sides_simulate_the_same_workload(tmp_path):
    vidur = vidur_compare.vidur_command("python", tmp_path, 100, 4096)
    ours = vidur_compare.our_command(tmp_path, 100)
    flags = dict(zip(vidur[3::2], vidur[4::2]))  # after "python -m vidur.main": --flag value pairs
    assert flags["--synthetic_request_generator_config_num_requests"] == "100"
    assert flags["--fixed_request_length_generator_config_prefill_tokens"] == str(vidur_compare.PROMPT)
    assert flags["--replica_config_tensor_parallel_size"] == flags["--replica_config_num_pipeline_stages"] == "1"
    workload = json.loads((tmp_path / "ours.json").read_text())["workload"]
    assert workload["num_requests"] == 100 and workload["prompt_len"]["value"] == vidur_compare.PROMPT
    assert workload["arrival"]["rate"] == float(flags["--poisson_request_interval_generator_config_qps"])
    assert ours[1:4] == ["-m", "microserving", "sim"]
    # Like Vidur's request_metrics.csv, our records hold no token's own time; the other run does.
    assert json.loads((tmp_path / "ours.json").read_text())["token_times"] is False
    vidur_compare.our_command(tmp_path, 100, token_times=True)
    assert json.loads((tmp_path / "ours_token_times.json").read_text())["token_times"] is True


def test_without_vidur_it_says_how_to_point_at_one(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(vidur_compare, "this_python_with_vidur", lambda: None)
    monkeypatch.setattr(sys, "argv", ["vidur_compare.py", "--out", str(tmp_path / "work")])
    with pytest.raises(SystemExit) as stop:
        vidur_compare.main()
    assert stop.value.code == 2
    assert "--vidur-python" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # nothing written before the check


def test_vidur_in_this_python_is_found(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "vidur" else None)
    assert vidur_compare.this_python_with_vidur() == sys.executable

"""Trace loaders on tiny samples written here: parsing, prefixes, options, malformed lines."""
import json
import math

import numpy as np
import pytest

from core_api.trace_io import TraceError, TraceOptions, TraceWarning
from core_api.traces import (
    TraceSpec,
    load_azure,
    load_burstgpt,
    load_mooncake,
    load_sharegpt,
    load_trace,
    parse_timestamp,
    sonnet_like,
    timestamp_parts,
)
from core_api.workload import Workload

AZURE = ("TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
         "2023-11-16 18:15:46.6805900,374,44\r\n"
         "2023-11-16 18:15:50.0000000,396,109\r\n"
         "2023-11-16 18:15:47.1805900,879,20\r\n"
         "2023-11-16 18:16:46.6805901,91,7")  # no newline after the last row, like the source


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


def test_timestamp_keeps_seven_fractional_digits_and_offsets():
    a = parse_timestamp("2023-11-16 18:15:46.6805900")
    assert timestamp_parts("2023-11-16 18:15:46.6805901")[1] - 0.68059 == pytest.approx(1e-7, abs=1e-12)
    assert parse_timestamp("2023-11-16T19:15:46.68059+01:00") == pytest.approx(a)
    assert parse_timestamp("2023-11-16 18:15:46Z") == pytest.approx(a - 0.68059)
    with pytest.raises(ValueError, match="bad timestamp"):
        parse_timestamp("16/11/2023 18:15")


def test_azure_rows_sorted_rebased_and_lengths_kept(tmp_path):
    w = load_azure(write(tmp_path, "a.csv", AZURE))
    assert isinstance(w, Workload) and len(w) == 4
    assert [r.id for r in w] == ["r0", "r1", "r2", "r3"]
    assert [r.prompt_len for r in w] == [374, 879, 396, 91]
    assert [r.sampling.max_tokens for r in w] == [44, 20, 109, 7]
    assert w.arrival_times == pytest.approx([0.0, 0.5, 3.3194100, 60.0000001])


def test_azure_malformed_line_names_file_and_line(tmp_path):
    bad = AZURE.replace("396,109", "396,lots")
    path = write(tmp_path, "bad.csv", bad)
    with pytest.raises(TraceError, match=r"bad\.csv:3: GeneratedTokens is not a number"):
        load_azure(path)
    with pytest.warns(TraceWarning, match=r"skipped 1 malformed line\(s\): line 3"):
        w = load_azure(path, TraceOptions(skip_bad_lines=True))
    assert len(w) == 3 and [s.line for s in w.skipped] == [3]


@pytest.mark.parametrize("row, why", [("2023-11-16 18:15:50.0,396", "expected 3 fields"),
                                      ("yesterday,1,2", "bad timestamp"),
                                      ("2023-11-16 18:15:50.0,-4,2", "ContextTokens must be >= 0"),
                                      ("2023-11-16 18:15:50.0,1000000000000,2", "ContextTokens must be <= 16777216")])
def test_azure_other_malformed_rows(tmp_path, row, why):
    path = write(tmp_path, "x.csv", AZURE.replace("2023-11-16 18:15:50.0000000,396,109", row))
    with pytest.raises(TraceError, match=f"x.csv:3: {why}"):
        load_azure(path)


def test_a_row_the_csv_module_cannot_read_names_its_line(tmp_path):
    path = write(tmp_path, "x.csv", AZURE.replace("2023-11-16 18:15:50.0000000,396,109",
                                                  "2023-11-16 18:15:50.0," + "1" * 200_000 + ",2"))
    with pytest.raises(TraceError, match="x.csv:3: not CSV: field larger than field limit"):
        load_azure(path)


def test_missing_header_column_is_fatal_even_when_skipping(tmp_path):
    path = write(tmp_path, "h.csv", "TIMESTAMP,Context,GeneratedTokens\n2023-11-16 18:15:50,1,2\n")
    with pytest.raises(TraceError, match=r"h\.csv:1: header lacks column\(s\) \['ContextTokens'\]"):
        load_azure(path, TraceOptions(skip_bad_lines=True))


def test_options_window_slice_subsample_cap_and_rate(tmp_path):
    rows = "".join(f"2023-11-16 18:{m:02d}:{s:02d}.0,{10 + i},{1 + i % 5}\n"
                   for i, (m, s) in enumerate((i // 60, i % 60) for i in range(0, 600, 3)))
    path = write(tmp_path, "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows)
    full = load_azure(path)
    assert len(full) == 200 and full.mean_rate == pytest.approx(1 / 3)
    w = load_azure(path, TraceOptions(start_s=30, end_s=300))
    assert len(w) == 90 and w[0].prompt_len == 20 and w.arrival_times[0] == 0.0
    w = load_azure(path, TraceOptions(start=10, stop=60, max_requests=20, rate=4.0))
    assert len(w) == 20 and w[0].prompt_len == 20 and w.mean_rate == pytest.approx(4.0)
    a = load_azure(path, TraceOptions(subsample=50, seed=1))
    b = load_azure(path, TraceOptions(subsample=50, seed=1))
    assert len(a) == 50 and [r.prompt_len for r in a] == [r.prompt_len for r in b]
    assert all(np.array_equal(x.prompt, y.prompt) for x, y in zip(a, b))
    with pytest.raises(TraceError, match="cannot subsample 500 of 200"):
        load_azure(path, TraceOptions(subsample=500))


BURST = ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
         "5,ChatGPT,472,18,490,Conversation log\n"
         "45,ChatGPT,1087,0,1087,Conversation log\n"
         "118,GPT-4,417,276,693,API log\n"
         "120,ChatGPT,35,5,40,API log\n")


def test_burstgpt_drops_failed_requests_and_filters(tmp_path):
    path = write(tmp_path, "b.csv", BURST)
    w = load_burstgpt(path)
    assert [r.prompt_len for r in w] == [472, 417, 35] and w.arrival_times == pytest.approx([0, 113, 115])
    assert w.dropped["zero_length"] == 1
    assert [r.prompt_len for r in load_burstgpt(path, model="ChatGPT")] == [472, 35]
    assert [r.prompt_len for r in load_burstgpt(path, log_type="API log")] == [417, 35]


def test_burstgpt_malformed_line(tmp_path):
    path = write(tmp_path, "b.csv", BURST.replace("118,GPT-4", "soon,GPT-4"))
    with pytest.raises(TraceError, match=r"b\.csv:4: Timestamp is not a number"):
        load_burstgpt(path)
    with pytest.warns(TraceWarning):
        assert len(load_burstgpt(path, TraceOptions(skip_bad_lines=True))) == 2


def mooncake_lines():
    return [{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2, 3]},
            {"timestamp": 250, "input_length": 1200, "output_length": 9, "hash_ids": [1, 2, 4]},
            {"timestamp": 1000, "input_length": 100, "output_length": 3, "hash_ids": [7]}]


def test_mooncake_hash_ids_become_shared_prefixes(tmp_path):
    path = write(tmp_path, "m.jsonl", "\n".join(json.dumps(x) for x in mooncake_lines()) + "\n")
    w = load_mooncake(path)
    a, b, c = w
    assert w.arrival_times == pytest.approx([0.0, 0.25, 1.0])
    assert (a.prompt_len, b.prompt_len, c.prompt_len) == (1100, 1200, 100)
    assert np.array_equal(a.prompt[:1024], b.prompt[:1024])  # blocks 1 and 2 are shared
    assert not np.array_equal(a.prompt[1024:1100], b.prompt[1024:1100])  # block 3 vs 4
    assert a.prefix_group == b.prefix_group == 1 and c.prefix_len == 100
    small = load_mooncake(path, block_size=16)
    assert np.array_equal(small[0].prompt[:32], small[1].prompt[:32])
    assert not np.array_equal(small[0].prompt[32:48], small[1].prompt[32:48])


def test_mooncake_malformed_line(tmp_path):
    lines = [json.dumps(x) for x in mooncake_lines()]
    lines.insert(1, '{"timestamp": 10, "input_length": 5')
    lines.append('{"timestamp": 2000, "output_length": 5}')
    path = write(tmp_path, "m.jsonl", "\n".join(lines))
    with pytest.raises(TraceError, match=r"m\.jsonl:2: not JSON"):
        load_mooncake(path)
    with pytest.warns(TraceWarning, match=r"skipped 2 .*line 2: not JSON.*line 5: missing key\(s\) \['input_length'\]"):
        w = load_mooncake(path, TraceOptions(skip_bad_lines=True))
    assert len(w) == 3 and len(w.skipped) == 2


def sharegpt_entries():
    return [
        {"id": "a", "conversations": [{"from": "human", "value": "x" * 40}, {"from": "gpt", "value": "y" * 81}]},
        {"id": "b", "conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "hi"},
                                      {"from": "gpt", "value": "hello there"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "alone"}]},
    ]


def test_sharegpt_estimates_lengths_or_uses_a_tokenizer(tmp_path):
    path = write(tmp_path, "s.json", json.dumps(sharegpt_entries(), indent=1))
    w = load_sharegpt(path, TraceOptions(rate=2.0, seed=3))
    assert [(r.prompt_len, r.sampling.max_tokens) for r in w] == [(10, 21), (1, 3)]
    assert w.dropped["no_pair"] == 1 and w.arrival_times[0] == 0.0

    def tokenizer(text):
        return [ord(ch) for ch in text]

    w = load_sharegpt(path, TraceOptions(seed=3), tokenizer=tokenizer)
    assert w[1].prompt.tolist() == [ord("h"), ord("i")] and w[1].sampling.max_tokens == 11


def test_sharegpt_malformed_entry_has_its_line(tmp_path):
    entries = sharegpt_entries()
    entries.insert(1, {"id": "broken", "conversations": [{"from": "human"}]})
    text = "[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n"
    path = write(tmp_path, "s.json", text)
    with pytest.raises(TraceError, match=r"s\.json:3: turn 0 has no string 'value'"):
        load_sharegpt(path)
    with pytest.warns(TraceWarning):
        assert len(load_sharegpt(path, TraceOptions(skip_bad_lines=True))) == 2
    broken = write(tmp_path, "t.json", text.replace('"id": "c"', '"id": "c",,'))
    with pytest.raises(TraceError, match=r"t\.json:5: not JSON"):
        load_sharegpt(broken, TraceOptions(skip_bad_lines=True))


def test_sharegpt_jsonl(tmp_path):
    path = write(tmp_path, "s.jsonl", "\n".join(json.dumps(e) for e in sharegpt_entries()) + "\nnope\n")
    with pytest.raises(TraceError, match=r"s\.jsonl:4: not JSON"):
        load_sharegpt(path)


def test_sonnet_like_lengths():
    w = sonnet_like(400, rate=2.0, seed=1)
    plen = np.array([r.prompt_len for r in w])
    olen = np.array([r.sampling.max_tokens for r in w])
    assert abs(plen.mean() - 3000) < 1.5 and 3 < plen.std() < 7 and abs(olen.mean() - 100) < 1.5
    assert w.mean_rate == pytest.approx(2.0, rel=0.15)


def test_trace_spec_and_load_trace(tmp_path):
    path = write(tmp_path, "b.csv", BURST)
    spec = TraceSpec.model_validate({"format": "burstgpt", "path": str(path), "args": {"model": "GPT-4"},
                                     "options": {"seed": 2}})
    w = spec.load()
    assert len(w) == 1 and w.spec == spec
    assert len(load_trace(path, "burstgpt", TraceOptions(max_requests=2))) == 2
    with pytest.raises(TraceError, match="unknown trace format 'csv'"):
        load_trace(path, "csv")
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace(tmp_path / "missing.csv", "azure")
    assert math.isnan(load_azure(write(tmp_path, "one.csv", AZURE.split("\r\n")[0] + "\r\n"
                                       + AZURE.split("\r\n")[1])).mean_rate)


def test_trace_command_line_flags(tmp_path):
    import argparse

    from experiments.trace_args import add_trace_arguments, trace_spec_from_args

    p = argparse.ArgumentParser()
    add_trace_arguments(p)
    path = write(tmp_path, "b.csv", BURST.replace("118,GPT-4", "soon,GPT-4"))
    spec = trace_spec_from_args(p.parse_args(["--trace", str(path), "--trace-format", "burstgpt",
                                              "--skip-bad-lines", "--max-requests", "2"]), rate=1.0)
    assert spec.options.skip_bad_lines and spec.options.max_requests == 2 and spec.options.rate == 1.0
    with pytest.warns(TraceWarning):
        assert len(spec.load()) == 2
    assert trace_spec_from_args(p.parse_args([])) is None
    with pytest.raises(ValueError, match="--trace needs --trace-format"):
        trace_spec_from_args(p.parse_args(["--trace", str(path)]))


def test_every_listed_trace_format_has_a_reader_and_only_those():
    from core_api.trace_formats import TRACE_FORMATS
    from core_api.traces import FORMATS

    assert tuple(FORMATS) == TRACE_FORMATS

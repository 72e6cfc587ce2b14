"""Trace loaders: Azure LLM inference (2023/2024), BurstGPT, Mooncake, ShareGPT, LLMPerf-sonnet-like.

Every loader returns a core_api.workload.Workload (a TraceWorkload that also knows what it
skipped), cut and timed by TraceOptions (see core_api.trace_io). Traces give lengths, not text,
so prompts are seeded random token ids; Mooncake's ``hash_ids`` become shared prompt blocks, so
requests that share ids share prefixes and a prefix cache gets hits exactly where the real
service would. A TraceSpec (format + path + options) is the pydantic form a sweep file uses.

Formats (one request per row/line unless said otherwise):
- azure:    CSV ``TIMESTAMP,ContextTokens,GeneratedTokens``; timestamps like
            ``2023-11-16 18:15:46.6805900`` (any number of fractional digits, optional ``T``,
            optional ``Z``/``+hh:mm`` offset). CRLF or LF.
- burstgpt: CSV ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``;
            Timestamp in seconds. Rows with 0 response tokens are failed requests and dropped
            (as vLLM's benchmark does); ``model=``/``log_type=`` filter rows.
- mooncake: JSONL ``{"timestamp": ms, "input_length", "output_length", "hash_ids": [...]}``;
            each hash id is one ``block_size``-token block (512 in Mooncake's traces).
- sharegpt: JSON list (or JSONL) of ``{"conversations": [{"from", "value"}, ...]}``; see sharegpt.py.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core_api.config_file import parse_json
from core_api.trace_formats import TRACE_FORMATS
from core_api.trace_io import (
    BadLines,
    RowError,
    TraceError,
    TraceOptions,
    TraceWorkload,
    build_workload,
    finite_float,
    positive_int,
    read_text,
)
from core_api.workload import ArrivalSpec, LengthDist, Workload, WorkloadSpec, generate

__all__ = ["FORMATS", "TraceSpec", "load_azure", "load_burstgpt", "load_mooncake", "load_sharegpt",
           "load_trace", "sonnet_like", "sonnet_spec"]

_TS = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def timestamp_parts(text: str) -> tuple[int, float]:
    """(whole seconds since the epoch, fraction) of a timestamp, UTC unless an offset is given.

    Python's own parsers stop at six fractional digits; Azure writes seven, so the fraction is
    read as a decimal here. The two parts stay apart because a float of epoch seconds only
    resolves ~0.2 us: loaders subtract the first whole second before adding fractions.
    """
    m = _TS.match(text.strip())
    if not m:
        raise ValueError(f"bad timestamp {text.strip()!r}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    offset = 0
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        offset = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    try:
        base = _dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=_dt.timezone.utc)
    except ValueError as exc:
        raise ValueError(f"bad timestamp {text.strip()!r}: {exc}") from None
    return int(base.timestamp()) - offset, float("0." + frac) if frac else 0.0


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch as one float (see timestamp_parts for the precision caveat)."""
    whole, frac = timestamp_parts(text)
    return whole + frac


def _csv_rows(path: Path, required: Sequence[str], bad: BadLines):
    """(line number, {column: text}) for each data row; header problems are fatal."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))

    def rows():
        while True:
            try:
                yield next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over the csv module's 128 KiB limit: no row is that long
                raise TraceError(f"{path}:{reader.line_num}: not CSV: {exc}") from None

    lines = rows()
    header = next(lines, None)
    if header is None:
        raise TraceError(f"{path}: empty file, expected a header with {list(required)}")
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise TraceError(f"{path}:1: header lacks column(s) {missing}; has {header}")
    for row in lines:
        if not row or row == [""]:
            continue
        if len(row) != len(header):
            bad(reader.line_num, f"expected {len(header)} fields, got {len(row)}")
            continue
        yield reader.line_num, dict(zip(header, row))


def load_azure(path: str | Path, options: TraceOptions | None = None) -> Workload:
    """Azure LLM inference trace (2023 Splitwise or 2024 DynamoLLM week-long): same columns."""
    path, opts = Path(path), options or TraceOptions()
    bad = BadLines(str(path), opts.skip_bad_lines)
    whole, frac, p, o, dropped = [], [], [], [], {"zero_length": 0}
    for line, row in _csv_rows(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"), bad):
        try:
            ts = timestamp_parts(row["TIMESTAMP"])
            ctx = positive_int(row["ContextTokens"], "ContextTokens")
            gen = positive_int(row["GeneratedTokens"], "GeneratedTokens")
        except ValueError as exc:
            bad(line, str(exc))
            continue
        if ctx == 0 or gen == 0:
            dropped["zero_length"] += 1
            continue
        whole.append(ts[0]), frac.append(ts[1]), p.append(ctx), o.append(gen)
    t = np.asarray(whole, dtype=np.int64) - (min(whole) if whole else 0) + np.asarray(frac, dtype=np.float64)
    return build_workload(f"azure:{path.stem}", t, p, o, opts, bad, dropped=dropped)


def load_burstgpt(path: str | Path, options: TraceOptions | None = None, model: str | None = None,
                  log_type: str | None = None) -> Workload:
    """BurstGPT: keep rows of one `model` ("ChatGPT", "GPT-4") / `log_type` when given."""
    path, opts = Path(path), options or TraceOptions()
    bad = BadLines(str(path), opts.skip_bad_lines)
    cols = ("Timestamp", "Model", "Request tokens", "Response tokens")
    t, p, o, dropped = [], [], [], {"zero_length": 0, "filtered": 0}
    for line, row in _csv_rows(path, cols, bad):
        try:
            ts = finite_float(row["Timestamp"], "Timestamp")
            req = positive_int(row["Request tokens"], "Request tokens")
            resp = positive_int(row["Response tokens"], "Response tokens")
        except ValueError as exc:
            bad(line, str(exc))
            continue
        if (model is not None and row["Model"].strip() != model) or \
                (log_type is not None and row.get("Log Type", "").strip() != log_type):
            dropped["filtered"] += 1
            continue
        if req == 0 or resp == 0:
            dropped["zero_length"] += 1
            continue
        t.append(ts), p.append(req), o.append(resp)
    return build_workload(f"burstgpt:{path.stem}", t, p, o, opts, bad, dropped=dropped)


def load_mooncake(path: str | Path, options: TraceOptions | None = None, block_size: int = 512) -> Workload:
    """Mooncake JSONL; hash ids -> shared `block_size`-token prompt blocks (prefix-cache hits)."""
    path, opts = Path(path), options or TraceOptions()
    bad = BadLines(str(path), opts.skip_bad_lines)
    t, p, o, ids, dropped = [], [], [], [], {"zero_length": 0}
    for line, text in enumerate(read_text(path).split("\n"), 1):
        if not text.strip():
            continue
        try:
            rec = parse_json(text)
            if not isinstance(rec, dict):
                raise RowError(f"expected a JSON object, got {type(rec).__name__}")
            missing = [k for k in ("timestamp", "input_length", "output_length") if k not in rec]
            if missing:
                raise RowError(f"missing key(s) {missing}")
            ts = finite_float(rec["timestamp"], "timestamp")
            n_in = positive_int(rec["input_length"], "input_length")
            n_out = positive_int(rec["output_length"], "output_length")
            hashes = rec.get("hash_ids", [])
            if not isinstance(hashes, list) or any(isinstance(h, bool) or not isinstance(h, int)
                                                   for h in hashes):
                raise RowError("hash_ids must be a list of integers")
        except json.JSONDecodeError as exc:
            bad(line, f"not JSON: {exc.msg} (column {exc.colno})")
            continue
        except ValueError as exc:
            bad(line, str(exc))
            continue
        if n_in == 0 or n_out == 0:
            dropped["zero_length"] += 1
            continue
        t.append(ts / 1000.0), p.append(n_in), o.append(n_out), ids.append(hashes)
    return build_workload(f"mooncake:{path.stem}", t, p, o, opts, bad, prefix_ids=ids,
                          block_size=block_size, dropped=dropped)


def load_sharegpt(path: str | Path, options: TraceOptions | None = None,
                  tokenizer: Callable[[str], Sequence[int]] | None = None,
                  chars_per_token: float = 4.0) -> Workload:
    """ShareGPT conversations; see core_api.sharegpt for how turns become requests."""
    from core_api.sharegpt import load_sharegpt as _load

    return _load(path, options or TraceOptions(), tokenizer, chars_per_token)


def sonnet_spec(num_requests: int, rate: float = 1.0, input_mean: float = 3000, input_std: float = 5,
                output_mean: float = 100, output_std: float = 5, seed: int = 0,
                arrival: Literal["poisson", "gamma"] = "poisson", cv: float = 1.0) -> WorkloadSpec:
    """An LLMPerf-sonnet-like workload: normal input and output lengths (mean +- std tokens).

    LLMPerf builds prompts from lines of Shakespeare's sonnets to a target length drawn from a
    normal distribution; for a simulator only the lengths matter, so this is a WorkloadSpec.
    """
    return WorkloadSpec(
        name=f"sonnet-{input_mean:g}x{output_mean:g}", num_requests=num_requests,
        arrival=ArrivalSpec(process=arrival, rate=rate, cv=cv),
        prompt_len=LengthDist(kind="normal", mean=input_mean, std=input_std),
        output_len=LengthDist(kind="normal", mean=output_mean, std=output_std), seed=seed)


def sonnet_like(num_requests: int, rate: float = 1.0, **kw) -> Workload:
    """The workload `sonnet_spec` describes."""
    return generate(sonnet_spec(num_requests, rate, **kw))


FORMATS = {"azure": load_azure, "burstgpt": load_burstgpt, "mooncake": load_mooncake,
           "sharegpt": load_sharegpt}


class TraceSpec(BaseModel):
    """A trace file as a sweep or config names it: format, path, options, format arguments.

    ``args`` go to the loader: burstgpt ``model``/``log_type``, mooncake ``block_size``,
    sharegpt ``chars_per_token``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[TRACE_FORMATS]
    path: str
    options: TraceOptions = TraceOptions()
    args: dict[str, str | int | float] = Field(default_factory=dict)

    def load(self) -> Workload:
        try:
            w = FORMATS[self.format](self.path, self.options, **self.args)
        except TypeError as exc:
            raise TraceError(f"trace {self.path}: bad args for format {self.format!r}: {exc}") from None
        w.spec = self
        return w


def load_trace(path: str | Path, format: str, options: TraceOptions | None = None, **args) -> Workload:
    """Load any supported format by name (see FORMATS)."""
    if format not in FORMATS:
        raise TraceError(f"unknown trace format {format!r}; known: {', '.join(FORMATS)}")
    return TraceSpec(format=format, path=str(path), options=options or TraceOptions(), args=args).load()


__all__ += ["TraceOptions", "TraceWorkload", "parse_timestamp", "timestamp_parts"]

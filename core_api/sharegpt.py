"""ShareGPT-format conversations as a workload.

Each conversation gives one request: the first user turn (``from`` human/user) is the prompt
and the turn right after it (the model's answer) sets the output length, as vLLM's serving
benchmark does. Conversations without such a pair are dropped by rule (counted as
``no_pair``); an entry that is not a conversation at all (not an object, no ``conversations``
list, a turn without a string ``value``) is a malformed line.

Lengths: with a ``tokenizer`` (text -> token ids) the prompt keeps the real token ids and the
output length is the answer's token count. Without one, both are estimated as
``ceil(characters / chars_per_token)``; 4 characters per token is the usual figure for
English text under GPT/Llama BPE tokenizers (code and other languages differ), and prompts
get seeded random ids. ShareGPT has no timestamps: arrivals come from ``options.arrival``
(Poisson, 1 req/s by default; ``options.rate`` sets the rate).

The file is a JSON list (entries parsed one by one so errors carry the entry's line) or, with
a ``.jsonl`` suffix, one conversation per line. A JSON syntax error inside the list cannot be
skipped (there is no next entry to resync to) and is always an error with its line.
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from core_api.config_file import parse_json
from core_api.trace_io import (
    BadLines,
    RowError,
    TraceError,
    TraceOptions,
    TraceWorkload,
    arrival_rng,
    build_workload,
    read_text,
)

USER_ROLES = ("human", "user")


def _entries(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """(line, parsed entry) from a JSON list or JSONL text; syntax errors raise TraceError."""
    if path.suffix == ".jsonl":
        for line, row in enumerate(text.split("\n"), 1):
            if row.strip():
                try:
                    yield line, parse_json(row)
                except json.JSONDecodeError as exc:
                    yield line, exc
        return
    dec = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise TraceError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected a JSON list of conversations")
    pos = _skip_ws(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        line = text.count("\n", 0, pos) + 1
        try:
            entry, pos = parse_json(text, pos, dec)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}:{exc.lineno}: not JSON: {exc.msg} (column {exc.colno})") from None
        yield line, entry
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos < len(text) and text[pos] != "]":
            raise TraceError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected ',' or ']' between entries")
    if pos >= len(text):
        raise TraceError(f"{path}: the JSON list is not closed")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _pair(entry: object) -> tuple[str, str] | None:
    """(prompt, answer) of the first user turn and its reply; None if there is no such pair."""
    if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
        raise RowError("expected an object with a 'conversations' list")
    turns = entry["conversations"]
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise RowError(f"turn {k} has no string 'value'")
    for a, b in itertools.pairwise(turns):
        if str(a.get("from", "")).lower() in USER_ROLES and str(b.get("from", "")).lower() not in USER_ROLES:
            return a["value"], b["value"]
    return None


def load_sharegpt(path: str | Path, options: TraceOptions,
                  tokenizer: Callable[[str], Sequence[int]] | None = None,
                  chars_per_token: float = 4.0) -> TraceWorkload:
    path = Path(path)
    if not chars_per_token > 0:
        raise ValueError(f"chars_per_token must be > 0, got {chars_per_token}")
    text = read_text(path)
    bad = BadLines(str(path), options.skip_bad_lines)
    prompts: list[np.ndarray] = []
    plen, olen, dropped = [], [], {"no_pair": 0, "empty": 0}
    for line, entry in _entries(path, text):
        try:
            if isinstance(entry, json.JSONDecodeError):
                raise RowError(f"not JSON: {entry.msg} (column {entry.colno})")
            pair = _pair(entry)
        except ValueError as exc:
            bad(line, str(exc))
            continue
        if pair is None:
            dropped["no_pair"] += 1
            continue
        prompt, answer = pair
        if tokenizer is not None:
            ids = np.asarray(tokenizer(prompt), dtype=np.int64)
            p, o = int(ids.size), len(tokenizer(answer))
        else:
            p, o = math.ceil(len(prompt) / chars_per_token), math.ceil(len(answer) / chars_per_token)
        if p == 0 or o == 0:
            dropped["empty"] += 1
            continue
        if tokenizer is not None:
            prompts.append(ids)
        plen.append(p), olen.append(o)
    arrivals = options.arrival.model_copy(update={"rate": options.rate or options.arrival.rate})
    t = arrivals.sample(arrival_rng(options), len(plen)) if plen else np.empty(0)
    return build_workload(f"sharegpt:{path.stem}", t, plen, olen, options, bad, dropped=dropped,
                          prompts=prompts if tokenizer is not None else None)

"""Reading a YAML or JSON file a user names (configs, sweep specs, fault schedules), in one place.

`.json` files are JSON; anything else is YAML (which also reads JSON). Every failure is a
ValueError that names the file and says what is wrong with it (missing, a directory, unreadable,
malformed with the parser's line), so each command prints one line instead of a traceback.

YAML aliases make a few lines stand for billions of values (an alias bomb), which validating the
config would then walk; so a YAML document is refused when, with its aliases expanded, it holds
more than MAX_YAML_VALUES values, or contains itself. The count shares work across an alias's
uses, so it costs time in the file's size, not in the expansion's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_YAML_VALUES = 1_000_000  # values of a YAML document, its aliases expanded
_CYCLE = float("inf")  # the expanded size of a value that contains itself


def parse_json(text: str, pos: int = 0, decoder: json.JSONDecoder | None = None) -> Any:
    """json.loads (or, with `decoder`, its raw_decode from `pos`, returning (value, end)), with
    nesting past Python's recursion limit raised as the JSONDecodeError any malformed input gets
    (json raises RecursionError there, which no reader expects from a bad file)."""
    try:
        return json.loads(text) if decoder is None else decoder.raw_decode(text, pos)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, pos) from None


def read_config_file(path: str | Path, what: str = "config") -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a {what} file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    if path.suffix == ".json":
        try:
            return parse_json(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
    return load_yaml(text, path)


def load_yaml(text: str, path: str | Path) -> Any:
    """A YAML document, refused (ValueError naming `path`) when malformed, nested past Python's
    recursion limit, or, aliases expanded, larger than MAX_YAML_VALUES."""
    import yaml  # here: a JSON config never pays for importing it

    try:
        data = yaml.safe_load(text)
        size = _expanded_size(data, {})
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply") from None
    if size == _CYCLE:
        raise ValueError(f"{path}: a value contains itself (an alias inside its own anchor)")
    if size > MAX_YAML_VALUES:
        raise ValueError(f"{path}: its aliases expand to {size:,} values (at most {MAX_YAML_VALUES:,})")
    return data


def _expanded_size(value: Any, memo: dict[int, float]) -> float:
    """Values in `value` once every alias is expanded; each distinct object is counted once and
    its count reused (an alias is the same object); a cycle counts as infinite."""
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, dict):
        memo[key] = _CYCLE  # reached again while counting it: it contains itself
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in value.items())
    elif isinstance(value, list):
        memo[key] = _CYCLE
        size = 1 + sum(_expanded_size(v, memo) for v in value)
    else:
        return 1
    memo[key] = size
    return size

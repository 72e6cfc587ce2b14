"""Reading a YAML or JSON file a user names (configs, sweep specs, fault schedules), in one place.

`.json` files are JSON; anything else is YAML (which also reads JSON). Every failure is a
ValueError that names the file and says what is wrong with it (missing, a directory, unreadable,
malformed with the parser's line), so each command prints one line instead of a traceback.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
    import yaml  # here: a JSON config never pays for importing it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None

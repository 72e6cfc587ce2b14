"""What the operator sets for `microserving serve`: address, limits, admin token, model name.

A pydantic model like every other config in the project, so flags and the `serve:` section of a
cluster file are validated in one place. A serve file is a cluster file (see real.config) with an
optional `serve:` section next to `engines:` and `strategy:` (or under `cluster:`).
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from real.config import RealClusterConfig, resolve_key_paths

ADMIN_TOKEN_ENV = "MICROSERVING_ADMIN_TOKEN"


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"  # loopback unless the operator names another address
    port: int = Field(8000, ge=0, le=65535)  # 0: pick a free port (printed at start)
    # Admin routes (/admin/*) are off unless a token is set; never echoed in logs or responses.
    admin_token: str | None = Field(None, repr=False, min_length=1)
    max_concurrent: int = Field(256, ge=1)  # requests in flight beyond this get 429
    served_model_name: str | None = None  # default: the engines' model name
    # Chat requests without max_tokens get at most this many (and never more than fits the context).
    default_max_tokens: int = Field(512, ge=1)
    # Bodies above this many bytes get 413 before anything parses them (a chat prompt of the
    # longest context, JSON-escaped, fits in a few MiB).
    max_body_bytes: int = Field(4 * 2**20, ge=1024)
    # Modules whose strategies (`module:Class`) the admin route may switch to, besides the
    # registered ones: naming a module imports it, so only the operator may widen this.
    strategy_modules: list[str] = []
    graceful_shutdown_s: float = Field(5.0, ge=0)  # open streams get this long at shutdown
    log_level: str = "warning"


def load_serve_file(path: str | Path) -> tuple[RealClusterConfig, ServeConfig]:
    """(cluster, serve) from a YAML or JSON file."""
    from core_api.config_file import read_config_file

    data = read_config_file(path, "serve config")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")  # noqa: TRY004 - a bad file, not a bad call
    serve = data.pop("serve", None) or {}
    cluster = data["cluster"] if "cluster" in data and "engines" not in data else data
    resolve_key_paths(cluster, Path(path).resolve().parent)
    return RealClusterConfig.model_validate(cluster), ServeConfig.model_validate(serve)

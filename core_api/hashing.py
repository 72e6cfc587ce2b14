"""Chained page keys of a prompt, for the prefix cache.

Page i's key identifies the whole prefix prompt[:(i+1)*page_size] (so equal keys mean equal
prefixes, not just equal pages): key_i = SHA-256(key_{i-1} || tokens of page i), truncated to 128
bits, as vLLM does. A cryptographic hash because the keys are attacker-facing: any HTTP client
chooses its prompt's tokens, and a key collision would serve one tenant's cached KV to another's
prompt (with a polynomial hash such a collision is a lattice reduction away, see
docs/security.md). 128 bits keep a second preimage out of reach while halving the memory of the
cached keys; SHA-256 is the fastest strong hash here (CPU SHA instructions).

Tokens are hashed as little-endian int64, so the keys are the same on every platform and no id
wraps into another. Keys are cached on the Request per page size: the simulator hashes every
prompt of a 100k-request workload once, and all engines share that one computation.
"""
from __future__ import annotations

import hashlib

import numpy as np

from core_api.types import Request

KEY_BYTES = 16
TOKEN_BYTES = 8


def prefix_keys(tokens: np.ndarray, page_size: int) -> list[bytes]:
    """Keys of every full page of `tokens` (the partial tail page has none)."""
    n_pages = tokens.shape[0] // page_size
    if n_pages == 0:
        return []
    data = np.ascontiguousarray(tokens[: n_pages * page_size], dtype="<i8").tobytes()
    step = page_size * TOKEN_BYTES
    sha256 = hashlib.sha256
    keys: list[bytes] = []
    parent = b""
    for off in range(0, len(data), step):
        parent = sha256(parent + data[off : off + step]).digest()[:KEY_BYTES]
        keys.append(parent)
    return keys


def forget_page_keys(req: Request) -> None:
    """Drop the request's cached keys once it is served: engines keep the keys of the pages they
    cache, and a request that comes back gets the same keys computed again. (A 100k-request
    simulation otherwise holds every prompt's keys to the end.)"""
    req._page_hashes.clear()


def request_page_keys(req: Request, page_size: int) -> list[bytes]:
    """prefix_keys of the request's prompt, computed once per page size."""
    keys = req._page_hashes.get(page_size)
    if keys is None:
        keys = prefix_keys(req.prompt, page_size)
        req._page_hashes[page_size] = keys
    return keys

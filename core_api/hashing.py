"""Chained page keys of a prompt, for the prefix cache.

Page i's key identifies the whole prefix prompt[:(i+1)*page_size] (so equal keys mean equal
prefixes, not just equal pages): key_i = SHA-256(key_{i-1} || tokens of page i), truncated to 128
bits, as vLLM does. A cryptographic hash because the keys are attacker-facing: any HTTP client
chooses its prompt's tokens, and a key collision would serve one tenant's cached KV to another's
prompt (with a polynomial hash such a collision is a lattice reduction away, see
docs/security.md). 128 bits keep a second preimage out of reach while halving the memory of the
cached keys; SHA-256 is the fastest strong hash here (CPU SHA instructions).

Tokens are hashed as little-endian int64, so the keys are the same on every platform and no id
wraps into another. Keys are cached on the Request per page size (`PageKeys`, computed when
first needed: most lookups need only the first key, and the block manager registers a prompt's
pages under its first key alone until a second prompt shares it), so all engines share one
computation.
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


class PageKeys:
    """The chained keys of a prompt's full pages, computed as far as they are asked for: the first
    key alone (one hash), or all of them."""

    __slots__ = ("_all", "_first", "_page_size", "_tokens", "num_pages")

    def __init__(self, tokens: np.ndarray, page_size: int) -> None:
        self._tokens, self._page_size = tokens, page_size
        self._first = self._all = None
        self.num_pages = tokens.shape[0] // page_size

    @classmethod
    def precomputed(cls, keys: list) -> PageKeys:
        """Keys known already (tests, and callers with keys of their own)."""
        out = cls(np.empty(0, np.int64), 1)
        out._all, out.num_pages = list(keys), len(keys)
        return out

    def __len__(self) -> int:
        return self.num_pages

    @property
    def first(self) -> bytes:
        if self._first is None:
            self._first = self._all[0] if self._all is not None else prefix_keys(
                self._tokens[: self._page_size], self._page_size)[0]
        return self._first

    def all(self) -> list[bytes]:
        if self._all is None:
            self._all = prefix_keys(self._tokens, self._page_size)
        return self._all

    def detach(self) -> None:
        """Keep a copy of the full pages' tokens instead of the prompt, which may be a view of a
        whole chunk of lazily built prompts: the keys may still be asked for after the request
        is gone (its pages cached), and the chunk must go with the request."""
        if self._all is None:
            self._tokens = np.array(self._tokens[: self.num_pages * self._page_size])


def forget_page_keys(req: Request) -> None:
    """Drop the request's cached keys once it is served: engines keep the keys of the pages they
    cache, and a request that comes back gets the same keys computed again. (A 100k-request
    simulation otherwise holds every prompt's keys to the end.)"""
    for keys in req._page_hashes.values():
        keys.detach()
    req._page_hashes.clear()


def request_page_keys(req: Request, page_size: int) -> PageKeys:
    """The keys of the request's prompt, one PageKeys per page size."""
    keys = req._page_hashes.get(page_size)
    if keys is None:
        keys = PageKeys(req.prompt, page_size)
        req._page_hashes[page_size] = keys
    return keys

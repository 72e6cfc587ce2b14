"""Chained page hashes of a prompt, for the prefix cache.

Page i's key identifies the whole prefix prompt[:(i+1)*page_size] (so equal keys mean equal
prefixes, not just equal pages). Keys are polynomial hashes modulo two 31-bit primes, computed
with numpy in a handful of vector ops: the simulator hashes every prompt of a 100k-request
workload, so a per-page Python loop would dominate its run time. Prime moduli (not 2**64) keep
the hash free of the Thue-Morse collisions that break polynomial hashing modulo powers of two.
Keys are cached on the Request per page size, so all engines share one computation.
"""
from __future__ import annotations

import numpy as np

from core_api.types import Request

_P1, _B1 = 2_147_483_647, 1_000_003
_P2, _B2 = 2_147_483_629, 911_382_323
_powers: list[np.ndarray] = [np.ones(1, np.int64), np.ones(1, np.int64)]


def _power_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    """B**k mod P for k < n, grown geometrically and kept for the process."""
    if _powers[0].shape[0] < n:
        size = max(n, 2 * _powers[0].shape[0], 4096)
        for i, (p, b) in enumerate(((_P1, _B1), (_P2, _B2))):
            table = np.empty(size, np.int64)
            table[0] = 1
            # Blocked doubling keeps this vectorised: table[k:2k] = table[:k] * B**k.
            k = 1
            while k < size:
                step = min(k, size - k)
                bk = pow(b, k, p)
                table[k : k + step] = table[:step] * bk % p
                k += step
            _powers[i] = table
    return _powers[0][:n], _powers[1][:n]


def prefix_keys(tokens: np.ndarray, page_size: int) -> list[int]:
    """Keys of every full page of `tokens` (the partial tail page has none)."""
    n_pages = tokens.shape[0] // page_size
    if n_pages == 0:
        return []
    n = n_pages * page_size
    pw1, pw2 = _power_table(n)
    t = tokens[:n].astype(np.int64) + 1  # +1: token 0 must still move the hash
    ends = np.arange(page_size - 1, n, page_size)
    h1 = np.cumsum(t * pw1 % _P1)[ends] % _P1
    h2 = np.cumsum(t * pw2 % _P2)[ends] % _P2
    return (h1 << 31 | h2).tolist()


def request_page_keys(req: Request, page_size: int) -> list[int]:
    """prefix_keys of the request's prompt, computed once per page size."""
    keys = req._page_hashes.get(page_size)
    if keys is None:
        keys = prefix_keys(req.prompt, page_size)
        req._page_hashes[page_size] = keys
    return keys

"""Cross-tenant prefix-cache poisoning: an attacker builds a page whose key equals a victim's.

Against the old keys (a polynomial hash modulo two public 31-bit primes) a lattice reduction finds
such a page in well under a second: the difference d of the two pages must satisfy two linear
congruences, and LLL finds a short solution, so the attacker's page differs from the victim's by
small amounts in most positions and stays inside the vocabulary. Registered by the victim's
request, the victim's KV would then serve the attacker's prompt (and the reverse: the attacker's
garbage would serve the victim). The same method against the SHA-256 chained keys finds nothing:
they have no linear structure to reduce.
"""
from __future__ import annotations

import numpy as np
import pytest
from sympy.polys.domains import ZZ
from sympy.polys.matrices import DomainMatrix

from core_api import hashing
from core_api.scheduler import Scheduler, SchedulerConfig
from core_api.types import Request, SamplingParams

PAGE = 16
VOCAB = 32_000
# The old scheme, as it was: h = sum (t_i + 1) * B**i mod P, for two (P, B), packed in 62 bits.
OLD = ((2_147_483_647, 1_000_003), (2_147_483_629, 911_382_323))


def old_prefix_keys(tokens: np.ndarray, page_size: int) -> list[int]:
    keys, acc = [], [0, 0]
    for i, tok in enumerate(tokens[: len(tokens) // page_size * page_size].tolist()):
        for j, (p, b) in enumerate(OLD):
            acc[j] = (acc[j] + (tok + 1) * pow(b, i, p)) % p
        if (i + 1) % page_size == 0:
            keys.append(acc[0] << 31 | acc[1])
    return keys


def lattice_collision(victim: np.ndarray) -> np.ndarray:
    """A page != victim with the same old key: short d with sum d_i B_j**i = 0 mod P_j (j = 1, 2)."""
    n, weight = len(victim), 2**40  # the weight forces the congruence columns to zero
    rows = []
    for i in range(n):
        rows.append([int(i == k) for k in range(n)] + [weight * pow(b, i, p) for p, b in OLD])
    for j, (p, _) in enumerate(OLD):
        rows.append([0] * n + [weight * p if k == j else 0 for k in range(2)])
    reduced = DomainMatrix([[ZZ(x) for x in r] for r in rows], (len(rows), n + 2), ZZ).lll().to_Matrix().tolist()
    for row in reduced:
        d = np.array([int(x) for x in row[:n]])
        if row[n] == row[n + 1] == 0 and d.any():
            forged = victim + d
            if forged.min() >= 0 and forged.max() < VOCAB:
                return forged.astype(np.int32)
    raise AssertionError("the lattice gave no usable short vector")


@pytest.fixture
def victim() -> np.ndarray:
    return np.random.default_rng(3).integers(1000, VOCAB - 1000, PAGE, dtype=np.int32)


def _cache_hit_for(attacker: np.ndarray, victim: np.ndarray) -> int:
    """Prompt tokens of `attacker` an engine would serve from the cache the victim filled."""
    sched = Scheduler(SchedulerConfig(num_pages=16, page_size=PAGE))
    sched.add_generate(Request("victim", np.concatenate([victim, [5]]).astype(np.int32), SamplingParams(max_tokens=1)))
    out = sched.schedule(0.0)
    sched.update(out.batch, [0], 0.0)
    assert sched.cached_prefix_len(Request("again", victim.copy(), SamplingParams())) == PAGE  # the cache works
    return sched.cached_prefix_len(Request("attacker", attacker, SamplingParams()))


def test_the_lattice_attack_collides_the_old_keys(victim, monkeypatch):
    forged = lattice_collision(victim)
    assert (forged != victim).sum() >= 10, "a real forgery, not a near copy"
    assert old_prefix_keys(forged, PAGE) == old_prefix_keys(victim, PAGE)
    monkeypatch.setattr(hashing, "prefix_keys", old_prefix_keys)
    assert _cache_hit_for(forged, victim) == PAGE, "with the old keys the victim's KV serves the forgery"


def test_the_same_attack_finds_nothing_against_the_new_keys(victim):
    forged = lattice_collision(victim)
    assert hashing.prefix_keys(forged, PAGE) != hashing.prefix_keys(victim, PAGE)
    assert _cache_hit_for(forged, victim) == 0


def test_new_keys_chain_the_whole_prefix_and_are_fixed_width():
    rng = np.random.default_rng(0)
    a = rng.integers(0, VOCAB, 4 * PAGE, dtype=np.int32)
    b = a.copy()
    b[0] += 1  # same later pages, different first page
    ka, kb = hashing.prefix_keys(a, PAGE), hashing.prefix_keys(b, PAGE)
    assert len(ka) == 4 and all(len(k) == hashing.KEY_BYTES for k in ka)
    assert not set(ka) & set(kb), "a key names the whole prefix, not only its page"
    assert hashing.prefix_keys(a.astype(np.int64), PAGE) == ka, "the same tokens give the same keys in any dtype"
    wrapped = a.astype(np.int64)
    wrapped[0] += 2**32
    assert hashing.prefix_keys(wrapped, PAGE)[0] != ka[0], "ids never wrap into other ids"

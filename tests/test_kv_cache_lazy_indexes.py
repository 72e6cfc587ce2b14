"""The block manager keeps its LRU order and prefix index lazily (stale entries skipped and
rebuilt when they pile up; a prompt's pages registered under its first key alone until another
prompt shares it); this holds it to an eager, obviously correct model of the same semantics over
random sequences of what a scheduler does (admissions with prefix hits, chunked registration,
releases, evictions under pressure): the same pages allocated, evicted and matched, the same counts."""
from __future__ import annotations

import random

import numpy as np
import pytest

from core_api.hashing import PageKeys, prefix_keys
from core_api.kv_cache import BlockManager


class EagerBlockManager:
    """Free list, a plain LRU list of cached pages, every key indexed at once; slow and plain."""

    def __init__(self, num_pages: int) -> None:
        self.free = list(range(num_pages - 1, -1, -1))
        self.ref = [0] * num_pages
        self.key_of: list[bytes | None] = [None] * num_pages
        self.page_of: dict[bytes, int] = {}
        self.lru: list[int] = []  # cached pages, least recently released first

    def allocate(self, n: int) -> list[int] | None:
        if n > len(self.free) + len(self.lru):
            return None
        pages = [self.free.pop() for _ in range(min(n, len(self.free)))]
        while len(pages) < n:
            page = self.lru.pop(0)
            del self.page_of[self.key_of[page]]
            self.key_of[page] = None
            pages.append(page)
        for page in pages:
            self.ref[page] = 1
        return pages

    def acquire(self, pages: list[int]) -> None:
        for page in pages:
            if self.ref[page] == 0:
                self.lru.remove(page)
            self.ref[page] += 1

    def release(self, pages: list[int]) -> None:
        for page in reversed(pages):
            self.ref[page] -= 1
            if self.ref[page] == 0:
                (self.free if self.key_of[page] is None else self.lru).append(page)

    def match(self, keys: list[bytes], limit: int) -> list[int]:
        pages = []
        for key in keys[:limit]:
            if key not in self.page_of:
                break
            pages.append(self.page_of[key])
        return pages

    def register(self, pages: list[int], keys: list[bytes], first: int) -> None:
        for page, key in zip(pages, keys[first:]):
            if key not in self.page_of and self.key_of[page] is None:
                self.page_of[key] = page
                self.key_of[page] = key


NUM_PAGES = 8  # small, so that evictions, re-registrations and the rebuilds of the indexes are frequent
PROMPTS = [np.array(p) for p in ([0, 1, 2, 0, 1], [0, 1, 2, 2], [0, 1], [1, 2, 0, 1, 2, 0], [2, 2, 2], [0, 2, 1, 1])]


@pytest.mark.parametrize("stale_limit", [NUM_PAGES + 2, 10_000])  # rebuilt often, or never (default: 2x pages)
def test_lazy_indexes_answer_as_eager_ones(stale_limit):
    rng = random.Random(0)
    for _ in range(300):
        lazy, eager = BlockManager(NUM_PAGES, 1), EagerBlockManager(NUM_PAGES)
        lazy._stale_limit = lazy._index._stale_limit = stale_limit
        seqs: list[dict] = []  # pages held, keys (both kinds), pages registered so far
        for _ in range(120):
            op = rng.choice(("admit", "admit", "register", "register", "finish", "pressure"))
            if op == "admit":  # a new request: prefix hit, then pages for (part of) the rest
                tokens = PROMPTS[rng.randrange(len(PROMPTS))]
                keys, chain = PageKeys(tokens, 1), prefix_keys(tokens, 1)  # a request of its own
                limit = rng.randrange(len(tokens) + 1)
                hit = lazy.match(keys, limit)
                assert hit == eager.match(chain, limit)
                need = rng.randrange(len(tokens) - len(hit) + 1)
                new = lazy.allocate(need)
                assert new == eager.allocate(need)
                if new is None:
                    continue
                lazy.acquire(hit)
                eager.acquire(hit)
                seqs.append({"pages": hit + new, "keys": keys, "chain": chain, "done": len(hit)})
            elif op == "register" and seqs:  # a step computed some of its pages
                seq = seqs[rng.randrange(len(seqs))]
                upto = rng.randint(seq["done"], len(seq["pages"]))
                lazy.register(seq["pages"][seq["done"]:upto], seq["keys"], seq["done"])
                eager.register(seq["pages"][seq["done"]:upto], seq["chain"], seq["done"])
                seq["done"] = upto
            elif op == "finish" and seqs:
                seq = seqs.pop(rng.randrange(len(seqs)))
                lazy.release(seq["pages"])
                eager.release(seq["pages"])
            elif op == "pressure":  # someone else's pages, taken and given back: evicts cached ones
                n = rng.randint(1, NUM_PAGES)
                got = lazy.allocate(n)
                assert got == eager.allocate(n)
                if got is not None:
                    lazy.release(got)
                    eager.release(got)
            assert (lazy.num_free, lazy.num_cached) == (len(eager.free), len(eager.lru))
            assert lazy._live_lru() == eager.lru
            lazy.check_consistent()
        for seq in seqs:
            lazy.release(seq["pages"])
        lazy.check_no_leaks()
        unread = len(lazy._lru) - lazy._lru_head  # entries not yet passed by evictions
        assert unread <= stale_limit + NUM_PAGES and len(lazy._index._page_of) <= stale_limit + NUM_PAGES
        assert lazy._lru_head <= max(NUM_PAGES, unread)  # the part read is cut off as it grows


def test_a_prompt_nobody_shares_is_hashed_one_page_deep():
    kv = BlockManager(64, 4)
    tokens = np.arange(40)
    keys = PageKeys(tokens, 4)
    assert kv.match(keys) == []
    pages = kv.allocate(10)
    kv.register(pages[:6], keys, 0)
    kv.register(pages[6:], keys, 6)
    kv.release(pages)
    assert keys._all is None, "one hash: the first page's"
    again = PageKeys(tokens.copy(), 4)  # the same prompt from another request: now every key
    assert kv.match(again) == pages and again.all() == prefix_keys(tokens, 4)

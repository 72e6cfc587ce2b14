"""The block manager keeps its LRU order and prefix index lazily (stale entries skipped, rebuilt
when they pile up); this holds it to an eager, obviously correct model of the same semantics over
random operation sequences: the same pages allocated, evicted and matched, the same counts."""
from __future__ import annotations

import random

import pytest

from core_api.kv_cache import BlockManager


class EagerBlockManager:
    """Free list, a plain LRU list of cached pages, a key index updated at once; slow and plain."""

    def __init__(self, num_pages: int) -> None:
        self.free = list(range(num_pages - 1, -1, -1))
        self.ref = [0] * num_pages
        self.key_of: list[int | None] = [None] * num_pages
        self.page_of: dict[int, int] = {}
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

    def match(self, keys: list[int]) -> list[int]:
        pages = []
        for key in keys:
            if key not in self.page_of:
                break
            pages.append(self.page_of[key])
        return pages

    def register_all(self, pages: list[int], keys: list[int]) -> None:
        for page, key in zip(pages, keys):
            if key not in self.page_of and self.key_of[page] is None:
                self.page_of[key] = page
                self.key_of[page] = key


NUM_PAGES = 6  # small, so that evictions, re-registrations and the rebuilds of both indexes are frequent


@pytest.mark.parametrize("stale_limit", [NUM_PAGES + 2, 10_000])  # rebuilt often, or never (default: 2x pages)
def test_lazy_indexes_answer_as_eager_ones(stale_limit):
    rng = random.Random(0)
    for _ in range(300):
        lazy, eager = BlockManager(NUM_PAGES, 1), EagerBlockManager(NUM_PAGES)
        lazy._stale_limit = stale_limit
        held: list[list[int]] = []
        for _ in range(150):
            op, a, b = rng.choice(("alloc", "free", "hit", "register")), rng.randrange(8), rng.randrange(8)
            if op == "alloc":
                got = lazy.allocate(a % 4 + 1)
                assert got == eager.allocate(a % 4 + 1)
                if got is not None:
                    held.append(got)
            elif op == "free" and held:
                pages = held.pop(b % len(held))
                lazy.release(pages)
                eager.release(pages)
            elif op == "register" and held:
                pages = held[b % len(held)]
                keys = [(a + i) % 9 for i in range(len(pages))]  # few keys: the same key comes back often
                lazy.register_all(pages, keys)
                eager.register_all(pages, keys)
            elif op == "hit":  # a prefix-cache hit: the cached pages are taken again, then released later
                keys = [(a + i) % 9 for i in range(b % 3 + 1)]
                pages = lazy.match(keys)
                assert pages == eager.match(keys)
                if pages:
                    lazy.acquire(pages)
                    eager.acquire(pages)
                    held.append(pages)
            assert (lazy.num_free, lazy.num_cached) == (len(eager.free), len(eager.lru))
            assert lazy._live_lru() == eager.lru
            lazy.check_consistent()
        assert len(lazy._lru) <= stale_limit + 4 and len(lazy._page_of) <= stale_limit + 4

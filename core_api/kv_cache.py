"""Paged KV block manager: one pool of pages serves compute, transfer and prefix reuse.

Every page is in exactly one state:
- free: on the free list, no key;
- used: ref count > 0 (held by running sequences or by a reservation for incoming KV);
- cached: ref count 0 but holding a full prompt page whose key is in the prefix cache;
  evictable, least recently used first.
Pages are handed out from the free list first and then by evicting cached pages, so a prefix
lives as long as nothing needs its room. Reservations are counted apart from used pages so that
`stats()` shows how much memory waits for transfers.

Every page operation is on the simulator's hot path (a 10k-request run makes millions), so the
LRU order is kept lazily, with the answers an eager one would give: a list of pages appended as
they become cached, read from a head index; a page acquired and released again is appended again,
and only its newest entry counts (`_entries` counts each page's entries; eviction skips the older
ones and pages in use). No per-page unlinking, and pages cached together are evicted in the order
they were released; the list is rebuilt when stale entries outnumber live ones. With no stale
entry at all (entries = cached pages: the usual case without prefix hits), an eviction takes the
next pages as one slice. The prefix index
(core_api.prefix_index) is lazy in the same spirit.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from core_api.hashing import PageKeys
from core_api.prefix_index import PrefixIndex


class KVLeakError(AssertionError):
    """Pages are still held (or the bookkeeping disagrees) when none should be."""


@dataclass(slots=True, frozen=True)
class KVStats:
    total: int
    free: int
    used: int
    cached: int
    reserved: int


class BlockManager:
    def __init__(self, num_pages: int, page_size: int) -> None:
        if num_pages < 1:
            raise ValueError(f"num_pages must be >= 1, got {num_pages}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        self._free = list(range(num_pages - 1, -1, -1))  # pop() hands out page 0 first
        self._ref = [0] * num_pages
        self._index = PrefixIndex(num_pages)
        self._key_of = self._index.key_of  # None: the page is not registered (it frees, not caches)
        self._lru: list[int] = []  # cached pages from _lru_head on, least recently released first (stale entries too)
        self._lru_head = 0
        self._entries = [0] * num_pages  # each page's entries in _lru; only the newest is live
        self._num_cached = 0
        self._stale_limit = 2 * num_pages + 64  # LRU entries past which it is rebuilt
        self.num_reserved = 0
        self.hits = 0  # prefix-cache tokens served, for stats
        self.evictions = 0

    # -- capacity -------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return self._num_cached

    @property
    def num_available(self) -> int:
        """Pages allocate() could hand out right now."""
        return len(self._free) + self._num_cached

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def scatter_free(self, seed: int) -> None:
        """Hand free pages out in a seeded random order from now on: the order a long-running
        engine's free list has (pages come back as requests happen to end), which a profiler
        gives its fresh engine so that it times the scattered KV reads engines really do."""
        random.Random(seed).shuffle(self._free)

    # -- allocation -----------------------------------------------------------------------
    def allocate(self, n: int) -> list[int] | None:
        """n pages with ref count 1, or None (and nothing taken) if they do not fit.

        Free pages go first (taken in bulk), then the least recently used cached pages."""
        free = self._free
        if n == 1:  # most calls: a decoding sequence crossing a page boundary
            if free:
                pages = [free.pop()]
            elif self._num_cached:
                pages = []
                self._evict(1, pages)
            else:
                return None
            self._ref[pages[0]] = 1
            return pages
        if n > len(free) + self._num_cached:
            return None
        k = min(n, len(free))
        pages = free[len(free) - k :][::-1]  # the order pop() would give
        del free[len(free) - k :]
        if k < n:
            self._evict(n - k, pages)
        ref = self._ref
        for page in pages:
            ref[page] = 1
        return pages

    def acquire(self, pages: list[int]) -> None:
        """Take one more reference on pages (e.g. a prefix-cache hit)."""
        ref = self._ref
        for page in pages:
            if ref[page] == 0:  # cached: its LRU entry goes stale
                self._num_cached -= 1
            ref[page] += 1

    def release(self, pages: list[int]) -> None:
        """Drop one reference each; pages reaching zero become cached (keyed) or free.

        Released back to front, so a sequence's tail is evicted before its head, which other
        requests are more likely to share.
        """
        ref, key_of, entries, lru = self._ref, self._key_of, self._entries, self._lru
        cached = 0
        try:
            for page in reversed(pages):
                r = ref[page] - 1
                if r < 0:
                    raise KVLeakError(f"page {page} released more often than acquired")
                ref[page] = r
                if r == 0:
                    if key_of[page] is None:
                        self._free.append(page)
                    else:
                        lru.append(page)
                        entries[page] += 1
                        cached += 1
        finally:  # the pages before a bad one were released: the count follows them
            self._num_cached += cached
        if len(lru) - self._lru_head > self._stale_limit:
            self._rebuild_lru()

    def _evict(self, n: int, into: list[int]) -> None:
        """Append the n least recently released cached pages to `into`, their keys dropped."""
        lru, entries, ref = self._lru, self._entries, self._ref
        head, start = self._lru_head, len(into)
        if len(lru) - head == self._num_cached:  # no stale entry: the next n are live, each its page's only one
            pages = lru[head : head + n]
            head += n
            for page in pages:
                entries[page] = 0
            into += pages
        else:
            taken = 0
            while taken < n:
                page = lru[head]
                head += 1
                left = entries[page] - 1
                entries[page] = left
                if left or ref[page]:
                    continue  # a newer entry of the page is further back, or it is in use again
                into.append(page)
                taken += 1
        self._consumed(head)
        self._index.drop(into[start:])
        self._num_cached -= n
        self.evictions += n

    def _consumed(self, head: int) -> None:
        """The LRU list is read up to `head`; the read part is cut off once it is over a pool's worth
        and most of the list (so it never holds more than max(num_pages, unread entries))."""
        if head > self.num_pages and 2 * head > len(self._lru):
            del self._lru[:head]
            head = 0
        self._lru_head = head

    def _live_lru(self) -> list[int]:
        """The cached pages in LRU order: each page's newest entry, if the page is still cached."""
        ref, key_of = self._ref, self._key_of
        live, seen = [], set()
        for page in reversed(self._lru[self._lru_head :]):
            if page not in seen:
                seen.add(page)
                if ref[page] == 0 and key_of[page] is not None:
                    live.append(page)
        live.reverse()
        return live

    def _rebuild_lru(self) -> None:
        live = self._live_lru()
        self._lru, self._lru_head = live, 0
        self._entries = [0] * self.num_pages
        for page in live:
            self._entries[page] = 1

    # -- prefix cache ---------------------------------------------------------------------
    def match(self, keys: PageKeys, limit: int | None = None) -> list[int]:
        """Pages holding the longest cached prefix with these chained page keys, at most `limit`
        (no ref taken)."""
        return self._index.match(keys, len(keys) if limit is None else limit)

    def register(self, pages: list[int], keys: PageKeys, first: int = 0) -> None:
        """Publish full, computed pages holding keys[first:first + len(pages)]; a key already
        cached (or a page already keyed) is left as it is. One call per sequence step on the hot path."""
        self._index.register(pages, keys, first)

    def reserve(self, n: int) -> None:
        """Count n held pages as reserved (a reservation's, awaiting KV from a peer)."""
        self.num_reserved += n

    def unreserve(self, n: int) -> None:
        """n reserved pages are filled or given back; they stay held by their sequence."""
        if n > self.num_reserved:
            raise KVLeakError(f"unreserving {n} pages, only {self.num_reserved} are reserved")
        self.num_reserved -= n

    def count_hit(self, tokens: int) -> None:
        """Prompt tokens the prefix cache served (for stats)."""
        self.hits += tokens

    def count_unreferenced(self, pages: list[int]) -> int:
        """How many of these pages are cached but unreferenced (acquiring them uses up room)."""
        ref = self._ref
        return sum(1 for page in pages if ref[page] == 0)

    # -- accounting -----------------------------------------------------------------------
    def stats(self) -> KVStats:
        used = self.num_pages - len(self._free) - self._num_cached
        return KVStats(self.num_pages, len(self._free), used - self.num_reserved, self._num_cached, self.num_reserved)

    def check_no_leaks(self) -> None:
        """Raise KVLeakError unless every page is free or cached and the indexes agree."""
        held = [p for p, r in enumerate(self._ref) if r]
        if held or self.num_reserved:
            raise KVLeakError(f"{len(held)} pages still referenced {held[:8]}, {self.num_reserved} reserved")
        self.check_consistent()

    def check_consistent(self) -> None:
        live = self._live_lru()
        free, evictable = set(self._free), set(live)
        if len(free) != len(self._free):
            raise KVLeakError("a page is on the free list twice")
        if len(evictable) != self._num_cached:
            raise KVLeakError(f"{self._num_cached} pages counted cached, {len(evictable)} in the LRU order")
        if sum(self._entries) != len(self._lru) - self._lru_head or any(self._entries[p] < 1 for p in evictable):
            raise KVLeakError("the LRU entry counts disagree with the LRU order")
        if free & evictable:
            raise KVLeakError("a page is both free and cached")
        for page, ref in enumerate(self._ref):
            in_lists = (page in free) + (page in evictable)
            if (ref == 0) != (in_lists == 1) or ref < 0:
                raise KVLeakError(f"page {page}: ref {ref} but free={page in free} cached={page in evictable}")
            key = self._key_of[page]
            if page in free and key is not None:
                raise KVLeakError(f"free page {page} still has a prefix key")
            if page in evictable and key is None:
                raise KVLeakError(f"cached page {page} has no key")
        try:
            self._index.check_consistent()
        except AssertionError as exc:
            raise KVLeakError(f"prefix index: {exc}") from exc

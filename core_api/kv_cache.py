"""Paged KV block manager: one pool of pages serves compute, transfer and prefix reuse.

Every page is in exactly one state:
- free: on the free list, no key;
- used: ref count > 0 (held by running sequences or by a reservation for incoming KV);
- cached: ref count 0 but holding a full prompt page whose key is in the prefix cache;
  evictable, least recently used first.
Pages are handed out from the free list first and then by evicting cached pages, so a prefix
lives as long as nothing needs its room. Reservations are counted apart from used pages so that
`stats()` shows how much memory waits for transfers.
"""
from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass


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
        self._key_of: list[bytes | None] = [None] * num_pages
        self._page_of: dict[bytes, int] = {}
        # Insertion order = LRU order. OrderedDict pops its oldest in O(1); a plain dict's
        # next(iter()) degrades to O(deleted entries) once many were removed from its front.
        self._evictable: OrderedDict[int, bytes] = OrderedDict()  # page -> its key
        self.num_reserved = 0
        self.hits = 0  # prefix-cache tokens served, for stats
        self.evictions = 0

    # -- capacity -------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._evictable)

    @property
    def num_available(self) -> int:
        """Pages allocate() could hand out right now."""
        return len(self._free) + len(self._evictable)

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
        if n > len(free) + len(self._evictable):
            return None
        k = min(n, len(free))
        pages = free[len(free) - k :][::-1]  # the order pop() would give
        del free[len(free) - k :]
        if k < n:
            pop, page_of, key_of = self._evictable.popitem, self._page_of, self._key_of
            for _ in range(n - k):
                page, key = pop(False)
                del page_of[key]
                key_of[page] = None
                pages.append(page)
            self.evictions += n - k
        ref = self._ref
        for page in pages:
            ref[page] = 1
        return pages

    def acquire(self, pages: list[int]) -> None:
        """Take one more reference on pages (e.g. a prefix-cache hit)."""
        ref = self._ref
        for page in pages:
            if ref[page] == 0:
                del self._evictable[page]
            ref[page] += 1

    def release(self, pages: list[int]) -> None:
        """Drop one reference each; pages reaching zero become cached (keyed) or free.

        Released back to front, so a sequence's tail is evicted before its head, which other
        requests are more likely to share.
        """
        ref, key_of = self._ref, self._key_of
        for page in reversed(pages):
            r = ref[page] - 1
            if r < 0:
                raise KVLeakError(f"page {page} released more often than acquired")
            ref[page] = r
            if r == 0:
                key = key_of[page]
                if key is None:
                    self._free.append(page)
                else:
                    self._evictable[page] = key

    # -- prefix cache ---------------------------------------------------------------------
    def match(self, keys: list[bytes]) -> list[int]:
        """Pages holding the longest cached prefix with these chained page keys (no ref taken)."""
        pages = []
        page_of = self._page_of
        for key in keys:
            page = page_of.get(key)
            if page is None:
                break
            pages.append(page)
        return pages

    def register_all(self, pages: list[int], keys: list[bytes]) -> None:
        """Publish full, computed pages under their prefix keys; a key already cached (or a page
        already keyed) is left as it is. One call per sequence step on the hot path."""
        page_of, key_of = self._page_of, self._key_of
        for page, key in zip(pages, keys):
            if key not in page_of and key_of[page] is None:
                page_of[key] = page
                key_of[page] = key

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
        used = self.num_pages - len(self._free) - len(self._evictable)
        return KVStats(self.num_pages, len(self._free), used - self.num_reserved, len(self._evictable), self.num_reserved)

    def check_no_leaks(self) -> None:
        """Raise KVLeakError unless every page is free or cached and the indexes agree."""
        held = [p for p, r in enumerate(self._ref) if r]
        if held or self.num_reserved:
            raise KVLeakError(f"{len(held)} pages still referenced {held[:8]}, {self.num_reserved} reserved")
        self.check_consistent()

    def check_consistent(self) -> None:
        free, evictable = set(self._free), set(self._evictable)
        if len(free) != len(self._free):
            raise KVLeakError("a page is on the free list twice")
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
            if key is not None and self._page_of.get(key) != page:
                raise KVLeakError(f"page {page}'s key maps elsewhere")
        if len(self._page_of) != sum(k is not None for k in self._key_of):
            raise KVLeakError("prefix index and page keys disagree")

"""The prefix cache's index: which page holds the KV of which chained page key (core_api.hashing).

It is kept lazily, with the answers an eager index (every registered page under its key at once)
would give, because every page of every prompt passes through it:

- A prompt's pages are registered under its first key alone, as a group, until another prompt
  with the same first page looks it up or registers under it: only then are the group's keys
  computed and indexed page by page. Chained keys make this exact: two prompts share a key only if
  they share their first page, so a group alone under its first key holds no key any other prompt
  can ask for, and a lookup whose first key has no group finds nothing. A workload without shared
  prefixes hashes one page per prompt instead of every page.
- An evicted page's entry is left behind and read as absent (the page's own key, `key_of`, no
  longer matches); the index is rebuilt from the pages when stale entries outnumber live ones.
"""
from __future__ import annotations

from core_api.hashing import PageKeys


class _Group:
    """The pages registered under one first key: `keys` and index-aligned `pages` while lazy
    (None where a page was already keyed), both dropped once its keys are indexed."""

    __slots__ = ("first", "keys", "live", "pages")

    def __init__(self, first, keys: PageKeys | None, pages: list | None) -> None:
        self.first, self.keys, self.pages, self.live = first, keys, pages, 0


class PrefixIndex:
    def __init__(self, num_pages: int) -> None:
        self.key_of: list = [None] * num_pages  # a page's key, its lazy group, or None: not registered
        self._group_of: list[_Group | None] = [None] * num_pages
        self._page_of: dict = {}  # key -> page; stale where key_of[page] differs
        self._groups: dict = {}  # first key -> the group of the registered pages with live keys
        self._stale_limit = 2 * num_pages + 64

    def match(self, keys: PageKeys, limit: int) -> list[int]:
        """Pages holding the longest registered prefix of `keys`, at most `limit` of them."""
        n = min(limit, len(keys))
        if n <= 0:
            return []
        group = self._groups.get(keys.first)
        if group is None:
            return []
        if group.pages is not None:
            self._index(group)
        pages = []
        page_of, key_of = self._page_of, self.key_of
        for key in keys.all()[:n]:
            page = page_of.get(key)
            if page is None or key_of[page] != key:
                break
            pages.append(page)
        return pages

    def register(self, pages: list[int], keys: PageKeys, first: int) -> None:
        """Publish full, computed pages holding keys[first:first + len(pages)]; a key already
        registered (or a page already keyed) is left as it is."""
        if not pages:
            return
        key_of, group_of = self.key_of, self._group_of
        group = self._groups.get(keys.first)
        if group is None and first == 0:  # nothing else holds this prefix: register lazily
            group = self._groups[keys.first] = _Group(keys.first, keys, [])
        if group is not None and group.keys is keys and first == len(group.pages):  # still lazy, one prompt's
            added = 0
            for page in pages:
                if key_of[page] is None:
                    key_of[page] = group
                    group_of[page] = group
                    added += 1
                    group.pages.append(page)
                else:
                    group.pages.append(None)
            group.live += added
            if not group.live:  # every page was keyed already: nothing registered under it
                del self._groups[group.first]
            return
        if group is None:  # its first pages are someone else's (a hit), their keys gone meanwhile
            group = self._groups[keys.first] = _Group(keys.first, None, None)
        elif group.pages is not None:
            self._index(group)
        page_of = self._page_of
        for page, key in zip(pages, keys.all()[first:]):
            if key_of[page] is None:
                holder = page_of.get(key)
                if holder is None or key_of[holder] != key:
                    page_of[key] = page
                    key_of[page] = key
                    group_of[page] = group
                    group.live += 1
        if not group.live:
            del self._groups[group.first]
        if len(page_of) > self._stale_limit:
            self._page_of = {key: page for page, key in enumerate(key_of) if key is not None and type(key) is not _Group}

    def _index(self, group: _Group) -> None:
        """Compute a lazy group's keys and index its pages under them."""
        page_of, key_of = self._page_of, self.key_of
        for page, key in zip(group.pages, group.keys.all()):
            if page is not None and key_of[page] is group:
                page_of[key] = page
                key_of[page] = key
        group.keys = group.pages = None

    def drop(self, pages: list[int]) -> None:
        """These pages were evicted: their keys go (and a group whose last key went, with them)."""
        key_of, group_of, groups = self.key_of, self._group_of, self._groups
        for page in pages:
            group = group_of[page]
            key_of[page] = group_of[page] = None
            group.live -= 1
            if not group.live:
                del groups[group.first]

    def check_consistent(self) -> None:
        """Raise AssertionError unless every registered page's key, group and index entry agree."""
        live: dict[int, int] = {}
        for page, key in enumerate(self.key_of):
            group = self._group_of[page]
            assert (key is None) == (group is None), f"page {page}: key {key!r} but group {group!r}"
            if key is None:
                continue
            assert self._groups.get(group.first) is group, f"page {page}'s group is not indexed"
            live[id(group)] = live.get(id(group), 0) + 1
            if type(key) is _Group:
                assert key is group and group.pages is not None and page in group.pages, f"lazy page {page}"
            else:
                assert self._page_of.get(key) == page, f"page {page}'s key maps elsewhere"
        for group in self._groups.values():
            assert group.live == live.get(id(group), 0) > 0, f"group {group.first!r} counts {group.live} live pages"

"""BlockManager: unit cases and hypothesis-driven invariants."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_api.hashing import PageKeys
from core_api.kv_cache import BlockManager, KVLeakError

K = PageKeys.precomputed


def test_allocate_release_and_prefix_reuse():
    kv = BlockManager(num_pages=4, page_size=2)
    pages = kv.allocate(3)
    assert pages == [0, 1, 2] and kv.stats().used == 3
    kv.register(pages[:2], K([111, 222]))
    kv.register(pages[2:], K([111]))  # a key already cached is not registered twice
    kv.release(pages)
    assert kv.stats().cached == 2 and kv.stats().free == 2
    assert kv.match(K([111, 222, 333])) == [0, 1]
    kv.check_no_leaks()


def test_eviction_is_lru_and_frees_keys():
    kv = BlockManager(num_pages=2, page_size=1)
    a, b = kv.allocate(1), kv.allocate(1)
    kv.register([a[0], b[0]], K([1, 2]))
    kv.release(b)
    kv.release(a)  # a is now the most recently used: b goes first
    [page] = kv.allocate(1)
    assert page == b[0] and kv.match(K([1, 2])) == [a[0]] and kv.match(K([1])) == [a[0]]
    assert kv.allocate(2) is None, "nothing is taken when the request cannot be met"
    kv.release([page])
    kv.check_no_leaks()


def test_leak_detection():
    kv = BlockManager(num_pages=3, page_size=4)
    kv.allocate(1)
    with pytest.raises(KVLeakError):
        kv.check_no_leaks()
    with pytest.raises(KVLeakError):
        kv.release([2])  # a free page cannot be released


def test_a_release_that_fails_part_way_leaves_the_counts_true():
    kv = BlockManager(num_pages=4, page_size=1)
    pages = kv.allocate(2)
    kv.register(pages, K([1, 2]))
    with pytest.raises(KVLeakError, match="page 3 released more often"):
        kv.release([3, *pages])  # released back to front: both pages go before page 3 fails
    assert kv.stats().cached == 2
    kv.check_no_leaks()


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError):
        BlockManager(num_pages=0, page_size=16)
    with pytest.raises(ValueError):
        BlockManager(num_pages=4, page_size=0)


ops = st.lists(
    st.tuples(st.sampled_from(["alloc", "free", "match", "reserve", "unreserve", "register"]),
              st.integers(0, 7), st.integers(0, 5)),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_invariants_hold_over_random_operation_sequences(sequence):
    """Every page is free, used or cached; counts add up; a match only returns cached keys."""
    kv = BlockManager(num_pages=8, page_size=4)
    held: list[list[int]] = []  # each entry: pages one owner holds
    reservations: list[list[int]] = []
    next_key = iter(range(10_000))
    registered: list[int] = []
    for op, a, b in sequence:
        if op == "alloc":
            got = kv.allocate(a)
            if got is None:
                assert a > kv.num_available
            else:
                assert len(got) == a and len(set(got)) == a
                held.append(got)
        elif op == "reserve":
            got = kv.allocate(a)
            if got is not None:
                kv.reserve(len(got))
                reservations.append(got)
        elif op == "unreserve" and reservations:
            pages = reservations.pop(b % len(reservations))
            kv.unreserve(len(pages))
            kv.release(pages)
        elif op == "free" and held:
            kv.release(held.pop(b % len(held)))
        elif op == "register" and held:
            owner = held[b % len(held)]
            if owner:
                registered.append(next(next_key))
                kv.register([owner[a % len(owner)]], K([registered[-1]]))
        elif op == "match" and registered:
            pages = kv.match(K([registered[b % len(registered)]]))
            if pages:
                kv.acquire(pages)
                held.append(pages)
        s = kv.stats()
        assert s.free + s.used + s.cached + s.reserved == s.total
        assert s.reserved == sum(len(r) for r in reservations)
        kv.check_consistent()
    for pages in held:
        kv.release(pages)
    for pages in reservations:
        kv.unreserve(len(pages))
        kv.release(pages)
    kv.check_no_leaks()


def test_scattered_free_pages_are_the_same_pages_in_a_seeded_order():
    a, b, c = BlockManager(64, 16), BlockManager(64, 16), BlockManager(64, 16)
    a.scatter_free(3)
    b.scatter_free(3)
    c.scatter_free(4)
    first = a.allocate(64)
    assert first == b.allocate(64) and first != c.allocate(64)
    assert sorted(first) == list(range(64)) and first != list(range(64))
    a.release(first)
    a.check_no_leaks()
